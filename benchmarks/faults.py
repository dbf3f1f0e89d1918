"""Chain-of-Agents runs against a server whose replies are faulty at a seeded rate.

Runs CoA once against a fault-free server on 127.0.0.1, then `--runs` times with `--rate` of
the chat replies faulty (429, 500, 503, reset, cut-off body, truncated JSON, not JSON, empty
choices, no message, null content, content of the wrong type, usage as strings, a numeric
finish reason; tests/faultserver.py), and prints how many runs gave the fault-free answer
(target: all) and the faults met, each of which cost one retry. Target: every run the same.

    .venv/bin/python benchmarks/faults.py [--runs 20] [--rate 0.2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from coa import Config, Kind, Task, get_strategy  # noqa: E402
from coa.errors import CoaError  # noqa: E402
from coa.models.openai import OpenAIModel  # noqa: E402
from faultserver import FaultServer  # noqa: E402

WINDOW = 700
DOCUMENT = " ".join(f"Entry {i} records that the tide at harbour {i % 7} rose {i * 3} centimetres." for i in range(60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rate", type=float, default=0.2)
    args = parser.parse_args()

    # A summary: each CU is the worker's output as written, so a faulty reply taken for an
    # answer would change every later prompt and the final answer.
    task = Task(DOCUMENT, "What happened at the harbours?", Kind.SUMMARIZE)
    config = Config(window=WINDOW, max_cu_tokens=40)
    with FaultServer() as server:
        model = OpenAIModel("m", base_url=server.base_url, window=WINDOW)
        clean = get_strategy("coa")(model, config).run(task)
        clean_requests = len(server.received())
        print(f"fault-free run: {len(clean.calls)} calls, answer {clean.answer!r}")
        same, failed, started = 0, 0, time.perf_counter()
        for seed in range(args.runs):
            server.seed(seed, rate=args.rate)
            try:
                same += get_strategy("coa")(model, config).run(task).answer == clean.answer
            except CoaError as e:
                failed += 1
                print(f"run {seed} failed: {e}")
        seconds = time.perf_counter() - started
        requests = len(server.received()) - clean_requests
    faults = sum(server.faults.values())
    print(f"{args.runs} runs at {args.rate:.0%} faults: {same}/{args.runs} gave the fault-free answer, {failed} failed")
    print(f"chat requests {requests}, faults met {faults} (each one retry), {seconds:.1f}s in all")
    print("faults by kind: " + ", ".join(f"{kind} {n}" for kind, n in sorted(server.faults.items())))


if __name__ == "__main__":
    main()
