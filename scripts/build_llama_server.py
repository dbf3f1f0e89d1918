"""Build llama.cpp's llama-server from the llama-cpp-python sdist coa pins, cached by its flags.

The server is built from the same llama.cpp as the embedded wheel, with the same portable
CPU flags (no native tuning, no AVX-512 or AMX), static so the binary needs no shared
llama or ggml library beside it. Only the llama-server target is compiled. The result
lands in <cache>/llama-server/<version>-<hash of flags>/llama-server and its path is
printed; a second run with the same flags finds it and does nothing.

Standard library only, like src/coa/models/llamabuild.py whose flags and cache it shares.
A machine without network builds from a carried copy: --source PATH (.tar.gz or folder).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import NoReturn

_HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("llamabuild", _HERE.parent / "src" / "coa" / "models" / "llamabuild.py")
assert _spec and _spec.loader
llamabuild = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(llamabuild)


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def download(into: Path, version: str) -> Path:
    """The sdist from the package index, as pip is configured to reach it."""
    print(f"downloading {llamabuild.PACKAGE} {version} sdist", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                    "--dest", str(into), f"{llamabuild.PACKAGE}=={version}"], check=True)
    found = sorted(into.glob("*.tar.gz"))
    if not found:
        fail(f"pip download left no sdist in {into}")
    return found[0]


def unpack(archive: Path, into: Path) -> Path:
    with tarfile.open(archive) as tar:
        if sys.version_info >= (3, 12):
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)  # noqa: S202 - the sdist pip fetched, or one the user named
    roots = [path for path in into.iterdir() if path.is_dir()]
    if len(roots) != 1:
        fail(f"{archive} does not unpack to one folder")
    return roots[0]


def llama_tree(root: Path, version: str) -> Path:
    """The llama.cpp source in an sdist folder (or root itself if it is a llama.cpp tree)."""
    info = root / "PKG-INFO"
    if info.is_file():
        found = next((line.split(":", 1)[1].strip() for line in info.read_text().splitlines()
                      if line.startswith("Version:")), None)
        if found != version:
            fail(f"{root} is {llamabuild.PACKAGE} {found}, not {version}")
    for tree in (root / "vendor" / "llama.cpp", root):
        if (tree / "CMakeLists.txt").is_file() and (tree / "tools" / "server").is_dir():
            return tree
    fail(f"{root} holds no llama.cpp source (expected vendor/llama.cpp or tools/server)")


def tool(name: str) -> str | None:
    """A build tool on PATH, else the one pip installed beside this Python (the `dev` extra's cmake)."""
    return shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))


def build(dest: Path, cmake_args: list[str], source: Path | None, jobs: int, version: str) -> None:
    # The scratch folder sits beside the destination and is removed after a success, so a
    # killed build leaves no half binary and the next run starts clean.
    dest.parent.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=dest.parent.parent))
    try:
        if source is None:
            source = download(scratch / "sdist", version)
        if source.is_file():
            source = unpack(source, scratch / "src")
        tree = llama_tree(source, version)
        cmake, ninja = tool("cmake"), tool("ninja")
        assert cmake is not None  # checked by main
        generator = ["-G", "Ninja", f"-DCMAKE_MAKE_PROGRAM={ninja}"] if ninja else []
        print(f"configuring {tree} with {' '.join(cmake_args)}", flush=True)
        subprocess.run([cmake, "-S", str(tree), "-B", str(scratch / "build"), *generator, *cmake_args], check=True)
        subprocess.run([cmake, "--build", str(scratch / "build"), "--target", llamabuild.SERVER_TARGET,
                        "-j", str(jobs)], check=True)
        built = scratch / "build" / "bin" / llamabuild.SERVER_TARGET
        if not built.is_file():
            fail(f"the build left no {built}")
        ready = scratch / "ready"
        ready.mkdir()
        shutil.copy2(built, ready / llamabuild.SERVER_TARGET)
        (ready / "CMAKE_ARGS").write_text(" ".join(cmake_args) + "\n")
        shutil.rmtree(dest.parent, ignore_errors=True)
        os.replace(ready, dest.parent)  # whole or not at all
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path,
                        help=f"{llamabuild.PACKAGE} {llamabuild.VERSION} sdist (.tar.gz or unpacked folder) "
                             "instead of downloading it")
    parser.add_argument("--cuda", action="store_true", help="build the CUDA backend too")
    parser.add_argument("--cuda-arch", default="90",
                        help="CMAKE_CUDA_ARCHITECTURES for --cuda (default: 90, Hopper)")
    parser.add_argument("--no-flash-attn", dest="flash_attn", action="store_false",
                        help="with --cuda: leave out the FlashAttention kernels (a shorter build, slower long prompts)")
    parser.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1, help="parallel compile jobs")
    parser.add_argument("--rebuild", action="store_true", help="compile again even if the binary is there")
    parser.add_argument("--print-path", action="store_true",
                        help="print where the binary for these flags is (or would be) and exit")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        fail("--jobs must be at least 1")
    cuda_arch = args.cuda_arch if args.cuda else None
    dest = llamabuild.server_path(cuda_arch, args.flash_attn)
    if args.print_path:
        print(dest)
        return 0 if dest.is_file() else 1
    if dest.is_file() and not args.rebuild:
        print(dest)
        return 0
    if args.source is not None and not args.source.exists():
        fail(f"--source {args.source} does not exist")
    if args.source is not None and args.source.is_dir():
        llama_tree(args.source, llamabuild.VERSION)  # a wrong folder is one line now, not after minutes
    if not tool("cmake"):
        fail("cmake is needed to build llama-server and is not on PATH (pip install cmake)")
    started = time.monotonic()
    build(dest, llamabuild.server_cmake_args(cuda_arch, args.flash_attn), args.source, args.jobs, llamabuild.VERSION)
    print(f"built {llamabuild.SERVER_TARGET} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(dest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
