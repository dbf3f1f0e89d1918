"""Check, in a child process, that the installed llama.cpp build runs a model on this CPU.

A llama.cpp build can compile and import fine and still die by a signal at its first
matrix product (a native build on a VM that advertises AMX but traps its use). Dying
inside the user's process would take the run with it, with no word of why; dying in a
child costs nothing, and the parent can say what happened and how to rebuild.

The verdict is kept per machine, library build and model file: after the first time
the check is a few file reads. Only a success is kept on disk, so a crash is checked
again after a rebuild (which changes the library files anyway) or a passing glitch.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import platform
import signal
import subprocess
import sys
from functools import cache
from pathlib import Path

from coa.errors import ConfigError, ModelError
from coa.extras import missing
from coa.models.llamabuild import REBUILD_HINT, cache_root

TIMEOUT = 300  # seconds for the child to load the model and write a couple of tokens

# The child: load the model with a small context and write two tokens, greedily.
CHILD = """
import sys
from llama_cpp import Llama
llm = Llama(sys.argv[1], n_ctx=256, n_threads=1, verbose=False)
llm.create_completion("The capital of France is", max_tokens=2, temperature=0)
"""


def _cpu() -> str:
    """The CPU's name and feature flags (what a build's instruction choice depends on)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    first = text.split("\n\n", 1)[0]
    keep = ("vendor_id", "model name", "flags", "Features", "CPU implementer", "CPU part")
    return "\n".join(line for line in first.splitlines() if line.split(":", 1)[0].strip() in keep)


def _library_files() -> list[Path]:
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise missing("running a GGUF model in-process", "embedded")
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return sorted(lib.glob("*")) if lib.is_dir() else []


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}"


def verdict_path(model_path: Path) -> Path:
    """Where a success is recorded for this machine, Python, library build and model file."""
    libraries = _library_files()  # first: without llama-cpp-python, the line that says how to get it
    parts = [_cpu(), sys.executable, importlib.metadata.version("llama-cpp-python")]
    parts += [_stamp(p) for p in [*libraries, Path(model_path)]]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return cache_root() / "probe" / f"{key}.json"


def check_runs(model_path: Path) -> None:
    """Return if a tiny completion with this model runs here; else raise one clear error."""
    failure = verdict(model_path)
    if failure is not None:
        raise type(failure)(str(failure))


@cache  # once per process and model: a crash is reported again without another child
def verdict(model_path: Path) -> ConfigError | ModelError | None:
    """None if the model runs here (remembered on disk), else the error that says why not."""
    passed = verdict_path(model_path)
    if passed.is_file():
        return None
    try:
        child = subprocess.run([sys.executable, "-c", CHILD, str(model_path)],
                               capture_output=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return ModelError(f"a test completion with {Path(model_path).name} did not finish in {TIMEOUT} s")
    if child.returncode < 0:
        try:
            name = signal.Signals(-child.returncode).name
        except ValueError:
            name = f"signal {-child.returncode}"
        return ConfigError(
            f"the llama.cpp build crashed on this CPU ({name} in a test completion, {platform.machine()}); "
            f"rebuild it portably: {REBUILD_HINT}"
        )
    if child.returncode == 0:
        passed.parent.mkdir(parents=True, exist_ok=True)
        passed.write_text(json.dumps({"model": str(model_path), "cpu": _cpu().splitlines()[:2]}))
    # Any other failure (an unreadable file, say) is the model loader's to report, in the parent.
    return None
