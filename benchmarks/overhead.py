"""Framework overhead of a Chain-of-Agents run with the embedded model.

Runs CoA on a ~7,000-token document (Act I of Macbeth, bundled) at window 2048 and
prints the work done and overhead = (wall seconds - model seconds) / model seconds,
where model seconds are the time spent inside the model's calls. Target: <= 2%.

    .venv/bin/python benchmarks/overhead.py [--repeat N]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter
from pathlib import Path

from coa import ChainOfAgents, Config, Task, load_model

DOCUMENT = Path(__file__).resolve().parents[1] / "examples" / "macbeth-act1.txt"
QUESTION = "What new title does King Duncan give to Macbeth?"
WINDOW = 2048


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()

    started = time.perf_counter()
    model = load_model("embedded", window=WINDOW)
    model.count_tokens("warm up")  # loads the model; loading is not part of a run
    load_seconds = time.perf_counter() - started
    text = DOCUMENT.read_text()
    print(f"document: {DOCUMENT.name}, {model.count_tokens(text):,} tokens; window {WINDOW}; model load {load_seconds:.2f}s")

    for run in range(args.repeat):
        started = time.perf_counter()
        result = ChainOfAgents(model, Config(window=WINDOW)).run(Task(text, QUESTION))
        wall = time.perf_counter() - started
        usage = result.usage
        workers = result.workers
        finishes = Counter(c.finish_reason for c in result.calls)
        print(
            f"run {run + 1}: workers {len(workers)}, prompt tokens {usage.prompt_tokens:,}, "
            f"completion tokens {usage.completion_tokens:,} "
            f"(per worker: mean {sum(c.completion_tokens for c in workers) / len(workers):.0f}, max {max(c.completion_tokens for c in workers)}; "
            f"finish {dict(finishes)}), model {usage.seconds:.2f}s, wall {wall:.2f}s, "
            f"overhead {(wall - usage.seconds) / usage.seconds:.2%}"
        )
    print(f"answer: {result.answer}")


if __name__ == "__main__":
    main()
