"""The paper's parallel read: CoA's latency on llama-server with and without `prefetch`.

With `--opt prefetch=true`, while worker i runs on one slot, a free slot evaluates worker
i+1's prompt up to its CU (system text, chunk, question), so that worker i+1 only evaluates
its CU and writes. One document at a time (latency, not throughput) on a server with
--np slots of --window tokens each; each mode gets a freshly started server so that no
cached prompt carries over. Printed: seconds per document for each mode, the ratio, prompt
tokens the workers found cached, and whether the answers are the same.

On a CPU server the prefill and the worker share the same cores, so little can be gained
there; the gain is for GPU servers, where one request leaves the device mostly idle.

    .venv/bin/python benchmarks/prefetch.py [--docs 4] [--np 2] [--window 1024] [--doc-tokens 3000]
        [--server PATH] [--model GGUF] [--gpu-layers N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

from coa import ChainOfAgents, Config, Result
from coa.models.llamabuild import find_server
from coa.models.llamacpp import embedded_model_path
from coa.models.openai import OpenAIModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import Server, documents  # noqa: E402  (the benchmark next door starts the server)


def run(server: Server, window: int, tasks, prefetch: bool) -> list[tuple[Result, float]]:
    model = OpenAIModel("x", base_url=f"{server.root}/v1", window=window, timeout=3600)
    model.count_tokens("warm up")  # discovery and the server's first, slow request are not part of the timing
    _ = model.context_window
    model.complete([{"role": "user", "content": "Say hello."}], max_tokens=4)
    done = []
    for task in tasks:
        started = time.perf_counter()
        result = asyncio.run(ChainOfAgents(model, Config(window=window), options={"prefetch": prefetch}).arun(task))
        done.append((result, time.perf_counter() - started))
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--np", type=int, default=2, help="server slots (at least 2 for a free one)")
    parser.add_argument("--window", type=int, default=1024, help="tokens per slot")
    parser.add_argument("--doc-tokens", type=int, default=3000)
    parser.add_argument("--server", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--gpu-layers", type=int, default=None)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the server's CPU threads")
    args = parser.parse_args()
    binary = args.server or find_server()
    if binary is None:
        sys.exit("no llama-server: run `make llama-server`, or pass --server PATH")
    gguf = args.model or embedded_model_path()
    tasks = [task for task, _ in documents(args.docs, args.doc_tokens)]
    modes = {}
    for prefetch in (False, True):
        with Server(binary, gguf, args.np, args.window, args.threads, args.gpu_layers) as server:
            modes[prefetch] = run(server, args.window, tasks, prefetch)
    (off, on) = modes[False], modes[True]
    seconds = {k: statistics.mean(s for _, s in v) for k, v in modes.items()}
    cached = {k: sum(c.cached_tokens for r, _ in v for c in r.workers) for k, v in modes.items()}
    prompt = {k: sum(c.prompt_tokens for r, _ in v for c in r.workers) for k, v in modes.items()}
    same = sum(a.answer == b.answer for (a, _), (b, _) in zip(off, on, strict=True))
    print(f"{args.docs} documents of ~{args.doc_tokens} tokens, one at a time, llama-server -np {args.np} "
          f"x {args.window} tokens, {len(off[0][0].workers)} workers on the first; gpu layers {args.gpu_layers}")
    for key, name in ((False, "plain   "), (True, "prefetch")):
        print(f"{name}: {seconds[key]:.2f} s per document; workers found {cached[key]:,} of {prompt[key]:,} prompt "
              f"tokens cached")
    print(f"prefetch / plain latency: {seconds[True] / seconds[False]:.2f} x; same answers {same}/{args.docs}")


if __name__ == "__main__":
    main()
