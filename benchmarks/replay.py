"""Which stored CoA rows would change under the code as it stands, without running a model.

    .venv/bin/python benchmarks/replay.py [--runs benchmarks/results] [--only SET,...] [--strategy coa] [--verbose]

A stored row's fingerprint covers its inputs and prompts, not coa's code. This replays each stored
row of `--strategy` through the current code: the chain runs again with the reader's tokenizer, and
each call is answered with the output the model gave in the stored trace. Where every call's prompt
inputs come out the same (the chunk each worker read, the CU it was shown, the evidence the
manager read), the model, at temperature 0, would have written the same outputs, so the stored row
stands; a row where one differs must be rerun (`results.py ... --rerun`, or delete it and resume).
For a changed row it prints the first call that differs and, from the replayed outputs (which a
rerun would change after that call), the evidence the manager would read.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import deque
from functools import cached_property
from pathlib import Path

from coa import run
from coa.eval.datasets import load
from coa.eval.store import Store
from coa.models.base import Completion, Messages, count_prompt
from coa.models.llamacpp import LlamaCppModel, _load
from coa.models.reader import reader_model_path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from results import RUNS, WINDOW  # noqa: E402


class Replay(LlamaCppModel):
    """The reader's tokenizer and chat template; each call answered with the next stored output."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, window=WINDOW, name="reader")
        self.outputs: deque[str] = deque()

    @cached_property
    def _llm(self):
        return _load(self.path, vocab_only=True)

    @property
    def context_window(self) -> int:
        return 32768  # the reader's trained window: a strategy's own window (full context) is kept as stored

    def complete(self, messages: Messages, *, max_tokens: int, temperature: float = 0.0,
                 seed: int | None = None) -> Completion:
        text = self.outputs.popleft() if self.outputs else ""
        return Completion(text=text, prompt_tokens=count_prompt(self, messages),
                          completion_tokens=self.count_tokens(text), seconds=0.0, finish_reason="stop")


def compare(stored: list[dict], replayed: list[dict]) -> str | None:
    """Where the replayed calls first differ from the stored ones in what the model was shown."""
    for a, b in zip(stored, replayed, strict=False):
        if (a["role"], a["index"], a.get("span")) != (b["role"], b["index"], b.get("span")):
            return f"{a['role']} {a['index']}: read {b.get('span')} instead of {a.get('span')}"
        if (a.get("cu") or "") != (b.get("cu") or ""):
            return f"{a['role']} {a['index']}: CU {b.get('cu')!r:.300} instead of {a.get('cu')!r:.300}"
    if len(stored) != len(replayed):
        return f"{len(replayed)} calls instead of {len(stored)}"
    return None


def first_change(row: dict, result) -> str | None:
    calls = [{"role": c.role, "index": c.index, "span": list(c.span) if c.span else None, "cu": c.cu} for c in result.calls]
    where = compare(row["trace"]["calls"], calls)
    if where is None and result.answer != row["prediction"]:
        where = f"the answer {result.answer!r:.100} instead of {row['prediction']!r:.100}"
    return where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, default=HERE / "results")
    parser.add_argument("--only", default="", help="sets, comma-separated (default: every stored set)")
    parser.add_argument("--strategies", default="coa", help="stored strategies, comma-separated (default: coa)")
    parser.add_argument("--drop", action="store_true", help="delete the rows that would change, for a resume to rerun")
    parser.add_argument("--verbose", action="store_true", help="print the evidence of every changed row")
    args = parser.parse_args()
    model = Replay(reader_model_path())
    data = Path(os.environ.get("COA_DATA_DIR") or HERE.parents[1] / "shared" / "data")
    for set_name, (dataset, dataset_options, limit, _) in RUNS.items():
        path = args.runs / set_name
        if (args.only and set_name not in args.only.split(",")) or not (path / Store.FILE).exists():
            continue
        store = Store(path, read_only=not args.drop)
        stored = store.rows(dataset, traces=True)
        examples = load(dataset, data_dir=data, options=dict(o.split("=", 1) for o in dataset_options), seed=0,
                        count_tokens=model.count_tokens, limit=limit)
        for strategy in args.strategies.split(","):
            name, _, spec = strategy.partition(":")
            options = dict(kv.split("=", 1) for kv in spec.split(",") if kv)
            rows = {r["example"]: r for r in stored if r["strategy"] == strategy and r["trace"]}
            changed = []
            for example in examples:
                if (row := rows.get(example.id)) is None:
                    continue
                model.outputs = deque(c["output"] for c in row["trace"]["calls"])
                result = run(example.task, model, strategy=name, options=options, window=WINDOW, seed=0)
                if (where := first_change(row, result)) is not None:
                    changed.append(example.id)
                    print(f"{set_name} {strategy} {example.id}: changed at {where}")
                    if args.verbose:
                        print("   evidence now:", " | ".join(c.line[:120] for c in result.citations))
            if args.drop and changed:
                store.db.executemany("DELETE FROM results WHERE dataset = ? AND strategy = ? AND example = ?",
                                     [(dataset, strategy, e) for e in changed])
            print(f"{set_name} {strategy}: {len(rows) - len(changed)} of {len(rows)} stored rows stand; "
                  f"{len(changed)} would change{' (deleted)' if args.drop and changed else ''}", flush=True)
        store.close()


if __name__ == "__main__":
    main()
