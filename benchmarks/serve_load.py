"""Load on `coa serve`: many chat completions and job runs in flight at once.

Starts the real server (uvicorn, in a thread, on a free port of 127.0.0.1) with the scripted
model, whose every call sleeps --delay seconds and returns a short text, so the server's own
work shows: HTTP, the run's thread and event loop, events, streaming, the store. The document
is the first --words words of the bundled Act I of Macbeth, several windows of 512 tokens, so
each run (strategy coa) makes several calls.

First one chat completion alone, then --requests chat completions at once (half streamed
with `stream_options.include_usage`, half not), then one job run alone, then --requests job
runs at once (POST /v1/runs, then its /events stream to `done`). For each batch it prints
the requests, errors (a status other than 200/202, an error in a stream or a run that did
not succeed), latency p50/p95/max, wall time (and the CPU time of the process, server and
client together: near the wall time, the batch was bound by one core, the GIL), calls per run,
and p95 / the single request's latency: the figure to compare between machines, which
differ in absolute times. With
--requests above --concurrency-limit (the server's --max-concurrent) the extra requests get
429 and count as errors. Exits 1 if any request failed.

    .venv/bin/python benchmarks/serve_load.py [--requests 50] [--delay 0.05] [--concurrency-limit 64]
        [--words 2500] [--window 512]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from coa import Config
from coa.models.scripted import ScriptedModel
from coa.serve.app import create_app

DOCUMENT = Path(__file__).resolve().parents[1] / "examples" / "macbeth-act1.txt"
QUESTION = "What new title does King Duncan give to Macbeth?"
REPLY = "Duncan makes Macbeth Thane of Cawdor after the battle."


@dataclass
class Outcome:
    """One request: how long it took, and what came back."""

    kind: str  # chat, stream or job
    seconds: float
    status: int
    calls: int = 0
    error: str | None = None
    done: bool = False  # a stream ended in `data: [DONE]`, a job's events in `done`
    usage: bool = False  # a stream had its usage chunk
    events: list[str] = field(default_factory=list)


@contextmanager
def running_server(delay: float, window: int, limit: int) -> Iterator[str]:
    """`coa serve` with a scripted model that sleeps `delay` s a call, on a free port; yields its URL."""
    def reply(messages: Any) -> str:
        time.sleep(delay)
        return REPLY

    model = ScriptedModel(reply=reply, context_window=window)
    with tempfile.TemporaryDirectory(prefix="coa-serve-load-") as tmp:
        app = create_app(model, Config(window=window), Path(tmp) / "serve.sqlite", max_concurrent=limit)
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                               timeout_keep_alive=60))
        thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                sys.exit("the server did not start")
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.should_exit = True
            thread.join(timeout=30)


def sse(lines: list[str]) -> list[dict[str, str]]:
    """Server-sent events from the lines of a stream: {field: value} each, comments left out."""
    events, current = [], {}
    for line in [*lines, ""]:
        if not line:
            if current:
                events.append(current)
            current = {}
        elif not line.startswith(":") and ": " in line:
            key, value = line.split(": ", 1)
            current[key] = value
    return events


async def read_lines(response: httpx.Response) -> list[str]:
    """The stream's lines, split at LF as SSE does (httpx's aiter_lines also splits at U+2028 and the like)."""
    return "".join([text async for text in response.aiter_text()]).split("\n")


async def chat(client: httpx.AsyncClient, document: str, stream: bool) -> Outcome:
    body: dict[str, Any] = {"model": "coa/coa", "messages": [{"role": "user", "content": document},
                                                            {"role": "user", "content": QUESTION}]}
    started = time.perf_counter()
    if not stream:
        response = await client.post("/v1/chat/completions", json=body)
        seconds = time.perf_counter() - started
        if response.status_code != 200:
            return Outcome("chat", seconds, response.status_code, error=response.text[:300])
        reply = response.json()
        return Outcome("chat", seconds, 200, calls=reply["coa"]["calls"], done=True,
                       usage=reply["usage"]["total_tokens"] > 0)
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = await read_lines(response)
    seconds = time.perf_counter() - started
    outcome = Outcome("stream", seconds, response.status_code, events=lines)
    if response.status_code != 200:
        outcome.error = "\n".join(lines)[:300]
        return outcome
    data = [event["data"] for event in sse(lines) if "data" in event]
    outcome.done = bool(data) and data[-1] == "[DONE]"
    for item in data[:-1] if outcome.done else data:
        chunk = json.loads(item)
        if "error" in chunk:
            outcome.error = item[:300]
        elif chunk["choices"] and "reasoning_content" in chunk["choices"][0]["delta"]:
            outcome.calls += 1  # one reasoning line per finished call
        elif not chunk["choices"] and (chunk.get("usage") or {}).get("total_tokens"):
            outcome.usage = True
    if not outcome.done and outcome.error is None:
        outcome.error = "the stream did not end in data: [DONE]"
    return outcome


async def job(client: httpx.AsyncClient, document: str) -> Outcome:
    started = time.perf_counter()
    response = await client.post("/v1/runs", json={"document": document, "question": QUESTION, "strategy": "coa"})
    if response.status_code != 202:
        return Outcome("job", time.perf_counter() - started, response.status_code, error=response.text[:300])
    async with client.stream("GET", f"/v1/runs/{response.json()['id']}/events") as events:
        lines = await read_lines(events)
    outcome = Outcome("job", time.perf_counter() - started, events.status_code, events=lines)
    done = [event for event in sse(lines) if event.get("event") == "done"]
    if events.status_code != 200 or not done:
        outcome.error = f"{events.status_code}: no done event in {len(lines)} lines"
        return outcome
    run = json.loads(done[-1]["data"])
    outcome.done, outcome.calls = True, (run.get("usage") or {}).get("calls", 0)
    if run["status"] != "succeeded":
        outcome.error = f"run {run['status']}: {run.get('error')}"
    return outcome


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered) + 0.5) - 1))]


def summary(name: str, single: Outcome, outcomes: list[Outcome], wall: float, cpu: float) -> dict[str, Any]:
    """The batch's figures, printed in one line; latencies and calls are those of the requests that succeeded."""
    succeeded = [o for o in outcomes if o.error is None] or [Outcome("none", float("nan"), 0)]
    latencies = [o.seconds for o in succeeded]
    p95 = percentile(latencies, 0.95)
    figures = {"requests": len(outcomes), "errors": sum(o.error is not None for o in outcomes),
               "single_s": single.seconds, "single_calls": single.calls, "p50_s": percentile(latencies, 0.5),
               "p95_s": p95, "max_s": max(latencies), "wall_s": wall, "cpu_s": cpu,
               "calls_per_run": statistics.mean(o.calls for o in succeeded), "p95_over_single": p95 / single.seconds}
    print(f"{name}: {figures['requests']} requests, {figures['errors']} errors; latency p50 {figures['p50_s']:.2f} s, "
          f"p95 {p95:.2f} s, max {figures['max_s']:.2f} s; wall {wall:.2f} s (CPU {cpu:.2f} s); calls per run "
          f"{figures['calls_per_run']:.1f}; p95 / single {figures['p95_over_single']:.2f} "
          f"(single: {single.seconds:.2f} s, {single.calls} calls)")
    for outcome in [o for o in outcomes if o.error][:3]:
        print(f"  error ({outcome.kind}, {outcome.status}): {outcome.error}")
    return figures


async def load(url: str, document: str, requests: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        single_chat = await chat(client, document, stream=False)
        started, cpu = time.perf_counter(), time.process_time()
        chats = await asyncio.gather(*(chat(client, document, stream=i % 2 == 0) for i in range(requests)))
        chat_wall, chat_cpu = time.perf_counter() - started, time.process_time() - cpu
        single_job = await job(client, document)
        started, cpu = time.perf_counter(), time.process_time()
        jobs = await asyncio.gather(*(job(client, document) for _ in range(requests)))
        job_wall, job_cpu = time.perf_counter() - started, time.process_time() - cpu
    results = {"chat": summary("chat completions", single_chat, chats, chat_wall, chat_cpu),
               "jobs": summary("job runs", single_job, jobs, job_wall, job_cpu),
               "outcomes": [single_chat, *chats, single_job, *jobs]}
    results["errors"] = sum(o.error is not None for o in results["outcomes"])
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50, help="requests at once, of each kind (default 50)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds each model call sleeps (default 0.05)")
    parser.add_argument("--concurrency-limit", type=int, default=64, help="the server's --max-concurrent (default 64)")
    parser.add_argument("--words", type=int, default=2500, help="words of the document (default 2500)")
    parser.add_argument("--window", type=int, default=512, help="the server's --window (default 512)")
    args = parser.parse_args(argv)

    document = " ".join(DOCUMENT.read_text(encoding="utf-8").split()[: args.words])
    print(f"coa serve: scripted model sleeping {args.delay} s a call, window {args.window}, --max-concurrent "
          f"{args.concurrency_limit}; document {len(document.split()):,} words "
          f"({ScriptedModel().count_tokens(document):,} tokens); strategy coa")
    with running_server(args.delay, args.window, args.concurrency_limit) as url:
        results = asyncio.run(load(url, document, args.requests))
    print(f"failed requests: {results['errors']}")
    return results


if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)
