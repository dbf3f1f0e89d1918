"""Chain-of-Agents runs against a server whose replies are faulty at a seeded rate.

Runs CoA once against a fault-free server on 127.0.0.1, then `--runs` times with `--rate` of
the chat replies faulty (429, 500, 503, reset, cut-off body, truncated JSON, not JSON, empty
choices, no message, null content, content of the wrong type, usage as strings, a numeric
finish reason, and a context overflow; tests/faultserver.py), and prints how many runs gave the
fault-free answer. Each retried fault costs one retry and changes nothing. A context overflow
is not retried: the chain re-splits its chunks, or shrinks the manager's CU, and the prompts
after it change; for a run that met one, the fault-free answer is that of a run on a server
with no other faults that refuses the same prompts as too long. Target: every run.

    .venv/bin/python benchmarks/faults.py [--runs 20] [--rate 0.2] [--api-key KEY]

--api-key sends a key, which error messages must never show; a one-character key ("x") checks
that scrubbing it leaves the server's words, an overflow's included, readable.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from coa import Config, Kind, Task, get_strategy  # noqa: E402
from coa.errors import CoaError  # noqa: E402
from coa.models.openai import OpenAIModel  # noqa: E402
from faultserver import OVERFLOW, FaultServer  # noqa: E402

WINDOW = 700
DOCUMENT = " ".join(f"Entry {i} records that the tide at harbour {i % 7} rose {i * 3} centimetres." for i in range(60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rate", type=float, default=0.2)
    parser.add_argument("--api-key", help="the API key to send (default: none)")
    args = parser.parse_args()

    # A summary without a query: each CU is the worker's output as written, so a faulty reply taken
    # for an answer would change every later prompt and the final answer.
    task = Task(DOCUMENT, None, Kind.SUMMARIZE)
    config = Config(window=WINDOW, max_cu_tokens=40)
    with FaultServer() as server:
        model = OpenAIModel("m", base_url=server.base_url, window=WINDOW, api_key=args.api_key)

        def run() -> str:
            return get_strategy("coa")(model, config).run(task).answer

        clean = run()
        print(f"fault-free run: {len(server.received())} calls, answer {clean!r}")
        same, overflowed, failed, started = 0, 0, 0, time.perf_counter()
        faults, requests = Counter(), 0  # in the faulty runs, not in the fault-free ones they are checked against
        for seed in range(args.runs):
            server.seed(seed, rate=args.rate)
            start = len(server.received())
            try:
                answer = run()
            except CoaError as e:
                answer = None
                failed += 1
                print(f"run {seed} failed: {e}")
            met = server.received()[start:]
            faults.update(r.fault for r in met if r.fault)
            requests += len(met)
            if answer is None:
                continue
            if any(r.fault == OVERFLOW for r in met):
                overflowed += 1
                server.seed(0, rate=0)
                server.replay(met)
                expected = run()
                if server.pending:
                    print(f"run {seed}: the fault-free run did not send every prompt refused as too long")
            else:
                expected = clean
            same += answer == expected
            if answer != expected:
                print(f"run {seed} answered {answer!r}, not {expected!r}")
        seconds = time.perf_counter() - started
    key = "no key" if args.api_key is None else f"a {len(args.api_key)}-character key"
    print(f"{args.runs} runs at {args.rate:.0%} faults, {key}: {same}/{args.runs} gave the fault-free answer "
          f"({overflowed} met a context overflow), {failed} failed")
    print(f"chat requests {requests}, faults met {faults.total()}, {seconds:.1f}s in all (the fault-free runs included)")
    print("faults by kind: " + ", ".join(f"{kind} {n}" for kind, n in sorted(faults.items())))


if __name__ == "__main__":
    main()
