"""Tune and score the `auto` strategy's rule from stored benchmark rows, without running a model.

    .venv/bin/python benchmarks/auto_tune.py [--hotpotqa DIR] [--seed 0]

For each set, the examples with stored rows of all of vanilla, rag and coa are split in half by a
seeded shuffle. The rule's thresholds (coa.strategies.auto: MAX_MARGIN, NEEDS_CLAUSE) are tuned on
the tune halves pooled, over the observed feature values, for the best mean score, ties to fewer
prompt tokens. On the held-out halves auto scores what the strategy it picks scored there (and
costs its prompt tokens). The features are computed as auto computes them, with the reader's
tokenizer (vocabulary only: no model runs).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np

from coa.config import Config
from coa.eval.datasets import load
from coa.eval.stats import bootstrap_interval
from coa.eval.store import Store
from coa.models.reader import reader_model_path
from coa.session import Session, ignore
from coa.strategies import auto

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from replay import Replay  # noqa: E402
from results import RUNS, WINDOW  # noqa: E402

SETS = ("multihop", "niah", "hotpotqa")
STRATEGIES = ("vanilla", "rag", "coa")
Row = dict[str, Any]  # one example: its set, features and each strategy's stored score and prompt tokens


def stored(directory: Path, dataset: str) -> dict[str, dict[str, tuple[float, int]]]:
    """{example: {strategy: (score, prompt tokens)}} of the examples with a good row of every strategy."""
    by: dict[str, dict[str, tuple[float, int]]] = {}
    for r in Store(directory, read_only=True).rows(dataset):
        if r["strategy"] in STRATEGIES and r["error"] is None and r["score"] is not None:
            by.setdefault(r["example"], {})[r["strategy"]] = (float(r["score"]), int(r["prompt_tokens"]))
    return {e: v for e, v in by.items() if len(v) == len(STRATEGIES)}


def examples(directories: dict[str, Path], model: Replay, data: Path) -> list[Row]:
    session = Session(model, Config(window=WINDOW, seed=0), ignore)
    rows = []
    for name in SETS:
        dataset, options, limit, _ = RUNS[name]
        scores = stored(directories[name], dataset)
        for example in load(dataset, data_dir=data, options=dict(o.split("=", 1) for o in options), seed=0,
                            count_tokens=model.count_tokens, limit=limit):
            if example.id in scores:
                rows.append({"set": name, "id": example.id, "features": auto.features(session, example.task),
                             **scores[example.id]})
    return rows


def halves(rows: list[Row], seed: int) -> tuple[list[Row], list[Row]]:
    """Each set's examples shuffled with `seed` and cut in half: (tune, held out), pooled over the sets."""
    tune, held = [], []
    for name in SETS:
        mine = sorted((r for r in rows if r["set"] == name), key=lambda r: r["id"])
        random.Random(seed).shuffle(mine)
        tune += mine[: len(mine) // 2]
        held += mine[len(mine) // 2 :]
    return tune, held


def picks(rows: list[Row], max_margin: float, needs_clause: bool) -> list[str]:
    return [auto.decide(r["features"], max_margin, needs_clause)[0] for r in rows]


def outcome(rows: list[Row], chosen: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(scores, prompt tokens) of each row under the strategy chosen for it."""
    return (np.array([r[s][0] for r, s in zip(rows, chosen, strict=True)]),
            np.array([r[s][1] for r, s in zip(rows, chosen, strict=True)], dtype=float))


def tune(rows: list[Row]) -> tuple[float, bool]:
    """The thresholds with the best mean score on `rows`, ties to fewer mean prompt tokens."""
    margins = sorted({r["features"]["bm25_margin"] for r in rows if "bm25_margin" in r["features"]})
    grid = [(m, c) for c in (True, False) for m in [-1.0, *margins]]  # -1: rule 2 never picks coa

    def key(point: tuple[float, bool]) -> tuple[float, float]:
        scores, tokens = outcome(rows, picks(rows, *point))
        return (-float(scores.mean()), float(tokens.mean()))

    return min(grid, key=key)


def report(name: str, rows: list[Row], chosen: list[str]) -> bool:
    """Auto against each single strategy on `rows`; whether it meets the bar against the best."""
    scores, tokens = outcome(rows, chosen)
    single = {s: outcome(rows, [s] * len(rows)) for s in STRATEGIES}
    best = max(STRATEGIES, key=lambda s: (single[s][0].mean(), -single[s][1].mean()))
    counts = ", ".join(f"{s} {chosen.count(s)}" for s in STRATEGIES if chosen.count(s))
    print(f"\n{name} (held out, {len(rows)} examples; auto picked {counts})")
    print(f"  auto     score {scores.mean():.3f}  prompt tokens {tokens.mean():8.1f}")
    for s in STRATEGIES:
        print(f"  {s:<8} score {single[s][0].mean():.3f}  prompt tokens {single[s][1].mean():8.1f}")
    lo, hi = bootstrap_interval(scores - single[best][0])
    ratio = tokens.mean() / single[best][1].mean()
    met = hi >= 0 and ratio <= 0.7
    print(f"  best single: {best}; auto - {best}: {scores.mean() - single[best][0].mean():+.3f} "
          f"(paired bootstrap 95% CI {lo:+.3f} to {hi:+.3f}); auto's prompt tokens {ratio:.2f}x {best}'s")
    print(f"  bar (auto not below {best}'s 95% interval, at most 0.7x its prompt tokens): {'met' if met else 'NOT met'}")
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=HERE / "results", help="the stores of multihop and niah")
    parser.add_argument("--hotpotqa", type=Path, default=HERE.parents[1] / "bench" / "benchmarks" / "results" / "hotpotqa",
                        help="the hotpotqa store")
    parser.add_argument("--seed", type=int, default=0, help="the shuffle that splits each set in half")
    args = parser.parse_args()
    directories = {"multihop": args.runs / "multihop", "niah": args.runs / "niah", "hotpotqa": args.hotpotqa}
    data = Path(os.environ.get("COA_DATA_DIR") or HERE.parents[1] / "shared" / "data")
    rows = examples(directories, Replay(reader_model_path()), data)
    tune_rows, held = halves(rows, args.seed)
    max_margin, needs_clause = tune(tune_rows)
    scores, tokens = outcome(tune_rows, picks(tune_rows, max_margin, needs_clause))
    print(f"examples with vanilla, rag and coa rows: {len(rows)} ({len(tune_rows)} tune, {len(held)} held out)")
    print(f"tuned: MAX_MARGIN = {max_margin}, NEEDS_CLAUSE = {needs_clause} "
          f"(tune halves: score {scores.mean():.3f}, prompt tokens {tokens.mean():.1f})")
    if (max_margin, needs_clause) != (auto.MAX_MARGIN, auto.NEEDS_CLAUSE):
        print(f"note: coa.strategies.auto has MAX_MARGIN = {auto.MAX_MARGIN}, NEEDS_CLAUSE = {auto.NEEDS_CLAUSE}")
    chosen = picks(held, max_margin, needs_clause)
    for name in SETS:
        mine = [i for i, r in enumerate(held) if r["set"] == name]
        report(name, [held[i] for i in mine], [chosen[i] for i in mine])
    met = report("pooled", held, chosen)
    print(f"\nthe bar on the pooled held-out halves is {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
