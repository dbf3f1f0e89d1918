"""What the portable llama.cpp build costs: prompt and generation speed of builds with other flags.

Each profile's wheel comes from the same cache `make` uses (built first if absent: several
minutes each), is unpacked into a directory of its own, and measured in a child process
on the embedded SmolLM2 model: prefill of a prompt cut from the bundled play, then
greedy generation one token at a time. Rounds alternate between the builds, so a
change in the machine's load falls on all of them alike; the figures are medians.
A build that dies on this CPU is reported with its signal.

    python benchmarks/portability.py --profiles portable,avx512,native --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
from pathlib import Path

from coa.models import llamabuild
from coa.models.llamacpp import embedded_model_path

PLAY = Path(__file__).resolve().parents[1] / "examples" / "macbeth-act1.txt"

MEASURE = """
import json, os, sys, time
import llama_cpp
from llama_cpp import Llama
path, text, n_prompt, n_gen = sys.argv[1], open(sys.argv[2]).read(), int(sys.argv[3]), int(sys.argv[4])
threads = os.cpu_count()
llm = Llama(path, n_ctx=n_prompt + n_gen + 16, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
tokens = llm.tokenize(text.encode())[:n_prompt]
started = time.perf_counter()
llm.eval(tokens)
prefill = time.perf_counter() - started
started = time.perf_counter()
for _ in range(n_gen):
    llm.eval([llm.sample(temp=0.0)])
generate = time.perf_counter() - started
print(json.dumps({"library": llama_cpp.__file__, "prompt": len(tokens) / prefill, "generated": n_gen / generate}))
"""


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def unpacked(profile: str) -> Path:
    """The profile's wheel, unpacked into a directory of its own (built first if needed)."""
    wheel = llamabuild.built_wheel(llamabuild.PROFILES[profile])
    target = llamabuild.cache_root() / "bench" / wheel.parent.name
    if not (target / "llama_cpp").is_dir():
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        str(wheel)], check=True)
    return target


def measure(site: Path, n_prompt: int, n_gen: int) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path[1:]])}
    child = subprocess.run([sys.executable, "-c", MEASURE, str(embedded_model_path()), str(PLAY), str(n_prompt),
                            str(n_gen)], capture_output=True, text=True, env=env, timeout=600)
    if child.returncode < 0:
        return {"crashed": signal.Signals(-child.returncode).name}
    if child.returncode:
        raise RuntimeError(child.stderr.strip().splitlines()[-1])
    result = json.loads(child.stdout)
    if not result["library"].startswith(str(site)):  # the build under test, not the venv's own
        raise RuntimeError(f"measured {result['library']}, not the build in {site}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profiles", default="portable,avx512,native")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--prompt-tokens", type=int, default=1024)
    parser.add_argument("--generated-tokens", type=int, default=128)
    args = parser.parse_args()
    profiles = args.profiles.split(",")
    sites = {p: unpacked(p) for p in profiles}
    print(f"CPU: {cpu_name()}, {os.cpu_count()} threads; llama-cpp-python {llamabuild.VERSION}; "
          f"SmolLM2-135M Q4_1, {args.prompt_tokens}-token prompt, {args.generated_tokens} generated tokens, "
          f"median of {args.rounds} rounds")
    runs: dict[str, list[dict]] = {p: [] for p in profiles}
    for _ in range(args.rounds):
        for p in profiles:
            runs[p].append(measure(sites[p], args.prompt_tokens, args.generated_tokens))
    base = None
    print(f"{'build':<10} {'AMX/AVX-512 in libggml-cpu':<28} {'prompt tok/s':>13} {'generated tok/s':>16} {'vs portable':>12}")
    for p in profiles:
        isa = ", ".join(sorted(llamabuild.instruction_sets(llamabuild.cpu_library(sites[p])))) or "neither"
        crashed = [r["crashed"] for r in runs[p] if "crashed" in r]
        if crashed:
            print(f"{p:<10} {isa:<28} crashed ({crashed[0]})")
            continue
        prompt = statistics.median(r["prompt"] for r in runs[p])
        generated = statistics.median(r["generated"] for r in runs[p])
        if p == "portable":
            base = (prompt, generated)
        ratio = f"{prompt / base[0]:.2f}x / {generated / base[1]:.2f}x" if base else ""
        print(f"{p:<10} {isa:<28} {prompt:>13.0f} {generated:>16.1f} {ratio:>12}")


if __name__ == "__main__":
    main()
