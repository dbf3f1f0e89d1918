"""Throughput of Chain of Agents on llama.cpp's llama-server, against the server's own peak.

For each slot count N (-np N, --ctx-size N x window, so each slot holds one window), the
script starts llama-server, runs CoA on every document with C documents in flight at once
(asyncio, each document one `ChainOfAgents(...).arun(task)`), and prints documents per
minute and prompt + generated tokens per second. Then it restarts the server and replays
the calls of that run (those of a quarter of the documents, by default) as plain chat
requests, N at a time from one queue, each with the same messages and exactly as many
generated tokens (`ignore_eos`): the server's peak for requests of that shape. The ratio
of the two says how much of the server coa keeps busy. Target: >= 0.8.

Documents are needle-in-a-haystack texts (RULER's form) cut from the essays in the shared
data (COA_DATA_DIR/haystack, else ../shared/data), or from the bundled play where those are
absent; by default each is two windows long, three chunks once the prompt is taken out.
The defaults (16 documents, windows of 1024, CUs of 64 tokens) run in about ten minutes on
two idle CPU cores with the embedded SmolLM2.

    .venv/bin/python benchmarks/throughput.py [--np 1,2,4] [--concurrency 1,2,4] [--docs 16]
        [--window 1024] [--doc-tokens 2048] [--cu-tokens 64] [--peak-docs 4] [--threads N]
        [--server PATH] [--model GGUF] [--gpu-layers N] [--json OUT]

By default C = N (as many documents in flight as slots); --concurrency runs every pair.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from coa import ChainOfAgents, Config, Result, Task
from coa.models.llamabuild import find_server
from coa.models.llamacpp import embedded_model_path
from coa.models.openai import OpenAIModel

REPO = Path(__file__).resolve().parents[1]
NEEDLE = "The special magic number for {key} is {value}."
QUESTION = "What is the special magic number for {key}?"
KEYS = [f"{a}-{b}" for a in ("amber", "brave", "calm", "dusty") for b in ("anchor", "falcon", "lantern", "river", "meadow")]


def haystack() -> str:
    data = Path(os.environ.get("COA_DATA_DIR", REPO.parent / "shared" / "data"))
    essays = data / "haystack" / "paul_graham_essays.txt"
    return (essays if essays.is_file() else REPO / "examples" / "macbeth-act1.txt").read_text(encoding="utf-8")


def documents(count: int, tokens: int, seed: int = 0) -> list[tuple[Task, str]]:
    """`count` (task, expected answer) pairs: about `tokens` tokens of text, a needle at a spread of depths."""
    text, rng = haystack(), random.Random(seed)
    chars = tokens * 4  # about 4 characters a token in English prose
    made = []
    for i in range(count):
        start = rng.randrange(max(1, len(text) - chars))
        start = text.find(" ", start) + 1
        hay = (text[start:] + " " + text)[:chars]
        key, value = KEYS[i % len(KEYS)], str(rng.randrange(1_000_000, 10_000_000))
        depth = i / max(1, count - 1)
        stops = [m.end() for m in re.finditer(r"[.!?]\s", hay)] or [len(hay)]
        at = min(stops, key=lambda s: abs(s - depth * len(hay)))
        made.append((Task(hay[:at] + NEEDLE.format(key=key, value=value) + " " + hay[at:], QUESTION.format(key=key)), value))
    return made


class Server:
    """llama-server on 127.0.0.1 with `slots` slots of `window` tokens each."""

    running: set[Server] = set()

    def __init__(self, binary: Path, gguf: Path, slots: int, window: int, threads: int, gpu_layers: int | None) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = tempfile.NamedTemporaryFile("w+", prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
        command = [str(binary), "--model", str(gguf), "--host", "127.0.0.1", "--port", str(self.port),
                   "--parallel", str(slots), "--ctx-size", str(slots * window),
                   "--threads", str(threads)]
        if gpu_layers is not None:
            command += ["--n-gpu-layers", str(gpu_layers)]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.root = f"http://127.0.0.1:{self.port}"
        Server.running.add(self)

    def __enter__(self) -> Server:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{self.root}/health").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                self.log.seek(0)
                sys.exit(f"llama-server did not start ({self.log.name}): {self.log.read()[-1500:]}")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        Server.running.discard(self)
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:  # it finishes the request in hand first
            self.process.kill()
            self.process.wait()
        os.unlink(self.log.name)


def stop(*_) -> None:
    """On SIGTERM: the servers first (requests in flight then fail at once), then unwind."""
    for server in list(Server.running):
        server.process.kill()  # SIGTERM would let it finish the request in hand
    sys.exit(143)


async def run_coa(root: str, config: Config, tasks: list[Task], concurrency: int) -> tuple[list[Result], float]:
    model = OpenAIModel("x", base_url=f"{root}/v1", window=config.window, timeout=3600)
    model.count_tokens("warm up")  # discovery (props, tokenizer) is not part of the run
    _ = model.context_window
    gate = asyncio.Semaphore(concurrency)

    async def one(task: Task) -> Result:
        async with gate:
            return await ChainOfAgents(model, config).arun(task)

    started = time.perf_counter()
    results = await asyncio.gather(*(one(task) for task in tasks))
    return results, time.perf_counter() - started


def replay(root: str, results: list[Result], slots: int) -> tuple[int, float]:
    """Every call of `results` again as a plain chat request, `slots` at a time: (tokens, seconds)."""
    calls = [r.calls for r in results]
    queue = [c[i] for i in range(max(map(len, calls))) for c in calls if i < len(c)]  # documents interleaved
    lock, done = threading.Lock(), [0]

    def worker() -> None:
        with httpx.Client(timeout=None) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    call = queue.pop(0)
                body = {"messages": call.messages, "max_tokens": call.completion_tokens, "ignore_eos": True,
                        "temperature": 0, "cache_prompt": True}
                usage = client.post(f"{root}/v1/chat/completions", json=body).raise_for_status().json()["usage"]
                with lock:
                    done[0] += usage["prompt_tokens"] + usage["completion_tokens"]

    threads = [threading.Thread(target=worker) for _ in range(slots)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0], time.perf_counter() - started


def numbers(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", type=Path, help="llama-server binary (default: the one `make llama-server` built)")
    parser.add_argument("--model", type=Path, help="GGUF file (default: the embedded SmolLM2)")
    parser.add_argument("--window", type=int, default=1024, help="tokens per slot, and coa's window (default 1024)")
    parser.add_argument("--doc-tokens", type=int, help="tokens per document (default: 3 windows)")
    parser.add_argument("--docs", type=int, default=16, help="documents (default 16)")
    parser.add_argument("--np", type=numbers, default=[1, 2, 4], help="slot counts, comma-separated (default 1,2,4)")
    parser.add_argument("--concurrency", type=numbers, help="documents in flight, comma-separated (default: = np)")
    parser.add_argument("--peak-docs", type=int, help="documents whose calls the peak replays (default: a quarter)")
    parser.add_argument("--cu-tokens", type=int, default=64, help="coa's --max-cu-tokens (default 64)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama-server's CPU threads")
    parser.add_argument("--gpu-layers", type=int, help="layers on the GPU (-ngl), for a CUDA build")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, stop)
    binary = args.server or find_server()
    if binary is None or not binary.is_file():
        sys.exit("no llama-server: run `make llama-server`, or pass --server PATH")
    gguf = args.model or embedded_model_path()
    doc_tokens = args.doc_tokens or 2 * args.window
    docs = documents(args.docs, doc_tokens)
    config = Config(window=args.window, max_cu_tokens=args.cu_tokens)
    tasks = [task for task, _ in docs]
    print(f"{binary}\nmodel {gguf.name}; {len(docs)} documents of ~{doc_tokens} tokens; window {args.window} per slot, "
          f"CU {args.cu_tokens} tokens; {args.threads} server threads; gpu layers {args.gpu_layers or 0}", flush=True)
    rows = []
    for slots in args.np:
        for concurrency in args.concurrency or [slots]:
            with Server(binary, gguf, slots, args.window, args.threads, args.gpu_layers) as server:
                results, seconds = asyncio.run(run_coa(server.root, config, tasks, concurrency))
            usage = [r.usage for r in results]
            tokens = sum(u.prompt_tokens + u.completion_tokens for u in usage)
            with Server(binary, gguf, slots, args.window, args.threads, args.gpu_layers) as server:  # cold, like coa's
                peak_tokens, peak_seconds = replay(server.root, results[: args.peak_docs or max(1, len(results) // 4)], slots)
            row = {
                "np": slots, "concurrency": concurrency, "documents": len(results), "seconds": round(seconds, 2),
                "docs_per_minute": round(60 * len(results) / seconds, 2), "calls": sum(u.calls for u in usage),
                "prompt_tokens": sum(u.prompt_tokens for u in usage),
                "cached_tokens": sum(u.cached_tokens for u in usage),
                "completion_tokens": sum(u.completion_tokens for u in usage),
                "tokens_per_second": round(tokens / seconds, 1),
                "peak_tokens_per_second": round(peak_tokens / peak_seconds, 1),
                "ratio": round((tokens / seconds) / (peak_tokens / peak_seconds), 3),
                "found": sum(value in r.answer for r, (_, value) in zip(results, docs, strict=True)),
            }
            rows.append(row)
            print(f"-np {slots} concurrency {concurrency}: {row['docs_per_minute']:.2f} docs/min, "
                  f"{row['tokens_per_second']:.0f} tokens/s ({row['prompt_tokens']:,} prompt, of them "
                  f"{row['cached_tokens']:,} cached, + {row['completion_tokens']:,} generated in {row['calls']} calls, "
                  f"{seconds:.1f} s); server peak {row['peak_tokens_per_second']:.0f} tokens/s; "
                  f"ratio {row['ratio']:.2f}; needle found in {row['found']}/{len(results)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"server": str(binary), "model": gguf.name, "window": args.window,
                                         "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
