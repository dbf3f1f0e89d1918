"""Build and install llama-cpp-python portably, with the built wheel cached by its flags.

llama-cpp-python compiles ggml with `-march=native` by default. On a VM whose CPU
advertises AMX without letting the guest use its tile registers, such a build dies
with SIGSEGV at the first matrix product. The portable build turns native tuning and
AMX off and AVX2/FMA/F16C on, so it runs on any x86-64 CPU of the last decade.

pip's own wheel cache would reuse a wheel built natively earlier whatever CMAKE_ARGS
says, so the wheel is built with that cache off and kept in a directory named by the
version, the Python tag and the flags: a second install on the same machine reuses
it, and other flags get a wheel of their own.

The same flags and cache serve scripts/build_llama_server.py, which builds llama.cpp's
llama-server from the same release (`make llama-server`); `find_server` finds it.

This file uses the standard library only: it runs before the package's dependencies
are installed (`python src/coa/models/llamabuild.py`, as `make` does).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

VERSION = "0.3.36"  # the llama-cpp-python release the cached wheels are built from
PACKAGE = "llama-cpp-python"

# Native tuning off; AVX2 and friends on (every x86-64 CPU since 2013-2015); AVX-512 and
# AMX off; the multimodal library, which coa does not use, not built.
PORTABLE = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
    "-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF"
)
# Opt-in for CPUs with AVX-512 (AMX still off), and llama-cpp-python's own default.
PROFILES = {
    "portable": PORTABLE,
    "avx512": PORTABLE.replace("-DGGML_AVX512=OFF", "-DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON"),
    "native": "-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF",
}
REBUILD_HINT = f'CMAKE_ARGS="{PORTABLE}" pip install --force-reinstall --no-cache-dir --no-deps {PACKAGE}=={VERSION}'


def cache_root() -> Path:
    """Where coa keeps what it builds or learns about this machine (COA_CACHE_DIR overrides)."""
    if root := os.environ.get("COA_CACHE_DIR"):
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chainofagents"


def wheel_dir(cmake_args: str, version: str = VERSION) -> Path:
    tag = f"{sys.implementation.cache_tag}-{sysconfig.get_platform()}"
    key = hashlib.sha256(f"{version}\n{tag}\n{' '.join(cmake_args.split())}".encode()).hexdigest()[:12]
    return cache_root() / "wheels" / f"{PACKAGE}-{version}-{key}"


def built_wheel(cmake_args: str, version: str = VERSION, rebuild: bool = False) -> Path:
    """The cached wheel for these flags, compiled first if there is none (several minutes)."""
    folder = wheel_dir(cmake_args, version)
    wheels = sorted(folder.glob("*.whl"))
    if wheels and not rebuild:
        return wheels[0]
    print(f"building {PACKAGE} {version} with CMAKE_ARGS={cmake_args!r} (several minutes)", flush=True)
    env = {**os.environ, "CMAKE_ARGS": cmake_args, "FORCE_CMAKE": "1",
           "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    folder.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=folder.parent))
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--no-binary", PACKAGE,
             "--wheel-dir", str(scratch), f"{PACKAGE}=={version}"],
            env=env, check=True,
        )
        (built,) = scratch.glob("*.whl")
        (scratch / "CMAKE_ARGS").write_text(cmake_args + "\n")
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(scratch, folder)  # whole or not at all: a killed build leaves no half wheel
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return folder / built.name


# llama.cpp's own options for a lone llama-server (scripts/build_llama_server.py). Static
# llama and ggml libraries make the binary self-contained (a CUDA build still loads the
# CUDA runtime and cuBLAS); no web UI (it would be fetched from a host at build time), no
# OpenSSL (coa speaks plain HTTP to it), no tests or examples. This llama.cpp has dropped
# LLAMA_CURL (deprecated and ignored), so it is not passed.
SERVER_TARGET = "llama-server"
SERVER_OPTIONS = (
    "-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
    "-DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF "
    "-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF"
)
# Kernels for one GPU generation only, and FlashAttention kernels for the f16, q4_0 and
# q8_0 caches only (not every pair of cache types), keep the CUDA build to minutes; NCCL
# serves multi-GPU setups only. FlashAttention stays on by default: it is the fast
# attention path for batched prefill of long prompts, which is what coa sends. Without its
# kernels (flash_attn=False) the build is several minutes shorter and attention falls back
# to plain matrix products, slower on long prompts.
CUDA_OPTIONS = "-DGGML_CUDA=ON -DGGML_CUDA_FA_ALL_QUANTS=OFF -DGGML_CUDA_NCCL=OFF"


def server_cmake_args(cuda_arch: str | None = None, flash_attn: bool = True) -> list[str]:
    """CMake options for llama-server: the portable CPU flags, plus CUDA for one arch if given."""
    cpu = PORTABLE.replace("-DLLAVA_BUILD=OFF", "")  # a llama-cpp-python option, unknown to llama.cpp
    args = [*SERVER_OPTIONS.split(), *cpu.split()]
    if cuda_arch:
        args += [*CUDA_OPTIONS.split(), f"-DGGML_CUDA_FA={'ON' if flash_attn else 'OFF'}",
                 f"-DCMAKE_CUDA_ARCHITECTURES={cuda_arch}"]
    return args


def server_path(cuda_arch: str | None = None, flash_attn: bool = True, version: str = VERSION) -> Path:
    """Where the llama-server built with these flags lives (whether or not it is built yet)."""
    key = f"{version}\n{sysconfig.get_platform()}\n{' '.join(server_cmake_args(cuda_arch, flash_attn))}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_root() / "llama-server" / f"{version}-{digest}" / SERVER_TARGET


def find_server() -> Path | None:
    """A llama-server to run: COA_LLAMA_SERVER if set, else a built one (CPU first)."""
    if own := os.environ.get("COA_LLAMA_SERVER"):
        return Path(own) if Path(own).is_file() else None
    built = [server_path()] + sorted(cache_root().glob(f"llama-server/{VERSION}-*/{SERVER_TARGET}"))
    return next((path for path in built if path.is_file()), None)


def cpu_library(site: Path | None = None) -> Path | None:
    """The installed ggml CPU backend (libggml-cpu.so), where the matrix kernels live."""
    roots = [site] if site else [Path(p) for p in sys.path if p]
    for root in roots:
        for name in ("libggml-cpu.so", "libggml-cpu.dylib", "ggml-cpu.dll"):
            candidate = root / "llama_cpp" / "lib" / name
            if candidate.is_file():
                return candidate
    return None


def instruction_sets(library: Path) -> set[str]:
    """Which of AMX and AVX-512 the library's machine code uses (objdump -d)."""
    if not shutil.which("objdump"):
        raise RuntimeError("objdump (binutils) is needed to check the build")
    code = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(library)],
                          capture_output=True, text=True, check=True).stdout
    found = set()
    if "ldtilecfg" in code:
        found.add("AMX")
    if "%zmm" in code:
        found.add("AVX-512")
    return found


def install(wheel: Path) -> None:
    pip = [sys.executable, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--force-reinstall", "--no-deps", str(wheel)], check=True)
    subprocess.run([*pip, str(wheel)], check=True)  # its own dependencies, from the index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="portable",
                        help="flag set when CMAKE_ARGS is not set (default: portable)")
    parser.add_argument("--rebuild", action="store_true", help="compile again even if a wheel is cached")
    parser.add_argument("--wheel-only", action="store_true", help="build or find the wheel, print its path")
    args = parser.parse_args(argv)
    own = os.environ.get("CMAKE_ARGS", "").strip()
    cmake_args = own or PROFILES[args.profile]
    wheel = built_wheel(cmake_args, rebuild=args.rebuild)
    if args.wheel_only:
        print(wheel)
        return 0
    install(wheel)
    library = cpu_library(Path(sysconfig.get_paths()["platlib"]))
    if library is None:
        print(f"warning: installed {PACKAGE} has no libggml-cpu to check", file=sys.stderr)
        return 0
    used = instruction_sets(library)
    allowed = {"AVX-512"} if args.profile == "avx512" else set()
    if own or args.profile == "native" or used <= allowed:
        print(f"installed {wheel.name} from {wheel.parent} ({', '.join(sorted(used)) or 'no AMX or AVX-512'} in {library.name})")
        return 0
    print(f"error: {library} uses {', '.join(sorted(used - allowed))} although it was built with {cmake_args!r}",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
