"""Several questions over one document: one chunk-major read against separate runs.

A needle-style document (niah multikey: --keys needles in --length tokens of essays) is asked
one question per needle, first in separate CoA runs, then all together (`run_many`, the
questions' workers chunk-major). On the embedded model llama.cpp keeps the prompt prefix it
last evaluated, so together each chunk should be evaluated about once. Printed: prompt tokens
evaluated and prefill seconds (llama.cpp's own timing) of each way, the ratio of the joint
run's prefill to one question's, the target (1 + 0.25 x (Q - 1)), and whether the answers match.

    python benchmarks/reuse.py [--length 7000] [--keys 4] [--window 2048] [--seed 0]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from pathlib import Path

from coa import ChainOfAgents, Config
from coa.eval.datasets import load
from coa.models.registry import load_model
from coa.task import Result, Task

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("COA_DATA_DIR", HERE.parents[1] / "shared" / "data"))
NEEDLE = re.compile(r"One of the special magic numbers for (\S+) is: (\d+)\.")


def prefill(results: list[Result]) -> tuple[int, float]:
    """(prompt tokens evaluated, seconds evaluating prompts) over the results' calls."""
    calls = [c for r in results for c in r.calls]
    return sum(c.prompt_tokens - c.cached_tokens for c in calls), sum(c.prefill_seconds or 0.0 for c in calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=7000, help="document tokens")
    parser.add_argument("--keys", type=int, default=4, help="needles, one question each")
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = load_model("embedded", window=args.window)
    example = next(iter(load("niah", data_dir=DATA, seed=args.seed, count_tokens=model.count_tokens, options={
        "variant": "multikey", "keys": str(args.keys), "lengths": str(args.length), "depths": "0.5"})))
    document = example.task.document
    needles = NEEDLE.findall(document)
    tasks = [Task(document, f"What is the special magic number for {key} mentioned in the provided text?") for key, _ in needles]
    config = Config(window=args.window, seed=args.seed)
    strategy = ChainOfAgents(model, config)

    started = time.perf_counter()
    alone = [strategy.run(task) for task in tasks]
    alone_seconds = time.perf_counter() - started
    started = time.perf_counter()
    together = strategy.run_many(tasks)
    together_seconds = time.perf_counter() - started

    (alone_tokens, alone_prefill), (together_tokens, together_prefill) = prefill(alone), prefill(together)
    one = statistics.mean(prefill([r])[1] for r in alone)
    q = len(tasks)
    same = [a.answer == t.answer for a, t in zip(alone, together, strict=True)]
    print(f"document: {model.count_tokens(document):,} tokens, {q} questions, window {args.window}, "
          f"{len(together[0].workers)} chunks of <= {together[0].settings['chunk_tokens']} tokens "
          f"(separate runs: {sorted({r.settings['chunk_tokens'] for r in alone})})")
    print(f"separate runs: {alone_tokens:,} prompt tokens evaluated, prefill {alone_prefill:.1f} s, wall {alone_seconds:.1f} s")
    print(f"one read:      {together_tokens:,} prompt tokens evaluated, prefill {together_prefill:.1f} s, wall {together_seconds:.1f} s "
          f"({sum(c.cached_tokens for r in together for c in r.calls):,} prompt tokens reused from the cache)")
    print(f"one read's prefill / one question's ({one:.1f} s): {together_prefill / one:.2f} x "
          f"(target <= {1 + 0.25 * (q - 1):.2f} x; separate runs: {alone_prefill / one:.2f} x)")
    print(f"answers equal to the separate runs: {sum(same)}/{q}; right: separate "
          f"{sum(v in a.answer for (_, v), a in zip(needles, alone, strict=True))}/{q}, "
          f"one read {sum(v in t.answer for (_, v), t in zip(needles, together, strict=True))}/{q}")


if __name__ == "__main__":
    main()
