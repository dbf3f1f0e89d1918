"""Run model-written Python in a separate, isolated subprocess (for rlm's optional code tool).

What it isolates (Linux only, through util-linux's `unshare` and resource limits):
- A fresh interpreter (`python -I -S -B`: no site, no user paths, no PYTHON* variables, an empty
  environment), never `exec` in this process. The document goes in on stdin and is bound to a
  `str` variable `document`; each run is a new process, so nothing a run does to it reaches a later run.
- No network: new user, network, mount, pid, ipc and uts namespaces; the network namespace has
  only a loopback that is down, so no host address (127.0.0.1 included) can be reached, and
  abstract Unix sockets are per namespace.
- No file writes: every mount reachable by a path is remounted read-only (checked with statvfs
  before the code runs; the run refuses to start otherwise); /tmp (the code's empty working
  directory), /dev, /dev/shm, /proc, /sys and /run are covered by empty read-only tmpfs mounts (no
  device nodes at all); RLIMIT_FSIZE is 0 (no bytes into any regular file, tmpfs and memfd
  included); the capabilities the namespace gave are dropped (bounding set, capset, no_new_privs)
  before the code runs, so it cannot remount anything writable.
- Limits: a wall-clock limit (the whole process group, and with it the pid namespace, is killed
  with SIGKILL), RLIMIT_CPU, RLIMIT_AS (memory), RLIMIT_NOFILE, RLIMIT_NPROC, RLIMIT_CORE 0; the
  output (stdout and stderr together) is read up to a cap and the rest dropped.

What it does not do (this is not a VM, nor a seccomp jail):
- The code runs on the host's kernel with every system call open to it: a kernel bug is an escape.
- It reads whatever the host user may read under / (read-only): do not run it where secrets lie in
  readable files. Path-named Unix sockets outside the covered directories remain connectable where
  file permissions allow (a socket is not a regular file, so a read-only mount does not stop it).
- When the host user is root, the kernel does not enforce RLIMIT_NPROC (root's processes are
  exempt): a fork bomb is bounded only by the wall-clock limit. There is no cgroup: RLIMIT_AS is
  per process.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import cache

SETUP_FAILED = 97  # the bootstrap's exit code where the sandbox could not be set up

# Runs inside the namespaces as their root, before any model-written code: sets the sandbox up,
# drops its privileges, then runs the code with `document` bound. Argument: the limits as JSON.
BOOTSTRAP = r'''
import ctypes, json, os, platform, resource, sys, traceback
def fail(why):
    sys.stderr.write("sandbox: " + why + "\n"); sys.stderr.flush(); os._exit(97)
limits = json.loads(sys.argv[1])
data = json.loads(sys.stdin.buffer.read().decode("utf-8"))
libc = ctypes.CDLL(None, use_errno=True)
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 2, 4, 8, 32, 4096, 16384, 1 << 18
KEEP = ((os.ST_NOSUID, MS_NOSUID), (os.ST_NODEV, MS_NODEV), (os.ST_NOEXEC, MS_NOEXEC), (1024, 1024), (2048, 2048),
        (4096, 1 << 21))
def mount(src, target, fstype, flags, options=None):
    if libc.mount(src, target.encode(), fstype, flags, options) != 0:
        fail(f"mount {target}: {os.strerror(ctypes.get_errno())}")
def unescape(path):
    return path.encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")
points = [unescape(line.split()[4]) for line in open("/proc/self/mountinfo")]
last_cap = int(open("/proc/sys/kernel/cap_last_cap").read())
mount(None, "/", None, MS_REC | MS_PRIVATE)
for point in dict.fromkeys(points):
    try:
        flags = os.statvfs(point).f_flag
    except OSError:
        continue
    if not flags & os.ST_RDONLY:
        keep = sum(ms for st, ms in KEEP if flags & st)
        mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | keep)
covered = [p for p in ("/tmp", "/dev", "/proc", "/sys", "/run", "/var/tmp") if os.path.isdir(p)]
for point in covered:
    mount(b"none", point, b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, b"size=4k,mode=555")
for point in [*points, *covered, "/", "/tmp"]:
    try:
        flags = os.statvfs(point).f_flag
    except OSError:
        continue
    if not flags & os.ST_RDONLY:
        fail(f"{point} is still writable")
os.chdir("/tmp")
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    fail("no_new_privs: " + os.strerror(ctypes.get_errno()))
for cap in range(last_cap + 1):
    libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP
capset = {"x86_64": 126, "aarch64": 91}.get(platform.machine())
if capset is None:
    fail("unknown machine " + platform.machine())
header = (ctypes.c_uint32 * 2)(0x20080522, 0)
if libc.syscall(capset, header, (ctypes.c_uint32 * 6)()) != 0:
    fail("capset: " + os.strerror(ctypes.get_errno()))
seconds = limits["cpu"]
for what, value in ((resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, limits["nproc"]),
                    (resource.RLIMIT_NOFILE, limits["nofile"]), (resource.RLIMIT_AS, limits["memory"])):
    resource.setrlimit(what, (value, value))
resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
os.closerange(3, 1 << 16)
code, scope = data["code"], {"__name__": "__main__", "document": data["document"]}
del data
try:
    exec(compile(code, "<code>", "exec"), scope)
except SystemExit:
    raise
except BaseException as e:
    traceback.print_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None, limit=-5)
    sys.stdout.flush(); sys.exit(1)
'''


class SandboxError(Exception):
    """The sandbox could not be set up; the message says why."""


@dataclass(frozen=True)
class CodeResult:
    """What one run gave: its output (cut to the cap), exit status, and whether it was stopped."""

    output: str
    exit_code: int | None  # None where it was killed at its time limit; a negative number: a signal
    timed_out: bool
    cut: bool  # the output was longer than the cap
    seconds: float

    @property
    def outcome(self) -> str:
        if self.timed_out:
            return "timeout"
        if self.exit_code == 0:
            return "ok"
        if self.exit_code == -signal.SIGXCPU:
            return "cpu limit"
        return f"error (exit {self.exit_code})"


def run_code(code: str, document: str, *, seconds: float = 5.0, memory_mb: int = 256, output_chars: int = 4000,
             check: bool = True) -> CodeResult:
    """Run `code` in the sandbox with `document` bound to a str; SandboxError where it cannot be had
    (`check`: ask `unavailable()` first)."""
    if check and (why := unavailable()):
        raise SandboxError(why)
    unshare = shutil.which("unshare") or "unshare"
    limits = {"cpu": max(1, int(seconds + 0.999)), "memory": memory_mb << 20, "nofile": 32, "nproc": 32}
    command = [unshare, "--user", "--map-root-user", "--net", "--mount", "--pid", "--ipc", "--uts", "--fork",
               "--kill-child", sys.executable, "-I", "-S", "-B", "-X", "utf8", "-c", BOOTSTRAP, json.dumps(limits)]
    payload = json.dumps({"code": code, "document": document}).encode()
    started = time.monotonic()
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, cwd="/", start_new_session=True)
    assert process.stdin is not None and process.stdout is not None

    def feed() -> None:
        try:
            process.stdin.write(payload)  # type: ignore[union-attr]
            process.stdin.close()  # type: ignore[union-attr]
        except OSError:  # it exited (or was killed) before reading it all
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    cap, kept, total, timed_out = output_chars * 4 + 4, bytearray(), 0, False
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while True:
            left = started + seconds - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            if not selector.select(left):
                continue
            chunk = os.read(process.stdout.fileno(), 65536)
            if not chunk:
                break
            total += len(chunk)
            kept += chunk[: max(0, cap - len(kept))]
    if timed_out:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    code_ = process.wait()
    process.stdout.close()
    writer.join(1)
    text = kept.decode("utf-8", "replace")
    cut = total > cap or len(text) > output_chars
    if code_ == SETUP_FAILED and text.startswith("sandbox: "):
        raise SandboxError(text.strip().splitlines()[-1])
    return CodeResult(text[:output_chars], None if timed_out else code_, timed_out, cut,
                      round(time.monotonic() - started, 3))


@cache
def unavailable() -> str:
    """Why the sandbox cannot be had here ("" where it can): probed once, with a real run."""
    if not sys.platform.startswith("linux"):
        return f"the code sandbox needs Linux namespaces, and this is {sys.platform}"
    if shutil.which("unshare") is None:
        return "the code sandbox needs util-linux's unshare command, which is not installed"
    try:
        result = run_code("print(len(document))", "abc", seconds=20, check=False)
    except (SandboxError, OSError) as e:
        return f"the code sandbox cannot be set up here ({e})"
    if result.exit_code != 0 or result.output.strip() != "3":
        last = (result.output.strip().splitlines() or ["no output"])[-1]
        return f"the code sandbox cannot be set up here (user namespaces refused? {last})"
    return ""
