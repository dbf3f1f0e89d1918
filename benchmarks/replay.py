"""Which stored CoA rows would change under the code as it stands, without running a model.

    .venv/bin/python benchmarks/replay.py [--runs benchmarks/results] [--only SET,...] [--strategies coa] [--verbose]
                                          [--drop | --rerun]

A stored row's fingerprint covers its inputs and prompts, not coa's code. This replays each stored
row of `--strategy` through the current code: the chain runs again with the reader's tokenizer, and
each call is answered with the output the model gave in the stored trace. Where every call's prompt
inputs come out the same (the chunk each worker read, the CU it was shown, the evidence the
manager read), the model, at temperature 0, would have written the same outputs, so the stored row
stands; a row where one differs must be rerun (`results.py ... --rerun`, or delete it and resume).
For a changed row it prints the first call that differs and, from the replayed outputs (which a
rerun would change after that call), the evidence the manager would read.

`--rerun` runs the changed rows again on the reader through `coa eval`'s own harness and store. A
call whose messages are exactly those of a call in the row's stored trace is answered with that
call's stored output, token counts and seconds (the model at temperature 0 gives the same output to
the same prompt, and the seconds are those it took then), marked `from_cache`; every other call goes
to the model. A change to the manager's evidence then costs one manager call per row, not a reread
of the document, and the cost columns stay those of a whole run.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import deque
from functools import cached_property
from pathlib import Path

from coa import run
from coa.cli.evaluate import largest_window
from coa.config import Config
from coa.eval.datasets import load
from coa.eval.runner import Evaluation, evaluate
from coa.eval.store import Store
from coa.models.base import Completion, Messages, Model, count_prompt
from coa.models.cache import CachedModel
from coa.models.llamacpp import LlamaCppModel, _load
from coa.models.reader import reader_model_path
from coa.models.registry import load_model

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


class Stored(CachedModel):
    """`inner`, with a call whose messages are those of a stored call answered as that call was."""

    def __init__(self, inner: Model, rows: list[dict]) -> None:
        self.inner, self.name, self.scope, self.backend = inner, inner.name, "", ""
        self.calls = {key(c["messages"]): c for r in rows for c in r["trace"]["calls"] if c.get("finish_reason") != "prefill"}
        self.replayed = 0

    def scoped(self, scope: str) -> Stored:
        return self

    def complete(self, messages: Messages, *, max_tokens: int, temperature: float = 0.0,
                 seed: int | None = None) -> Completion:
        call = self.calls.get(key(messages))
        # One cut at another length limit would have ended elsewhere.
        if call is None or temperature > 0 or (call["finish_reason"] == "length" and call["completion_tokens"] != max_tokens):
            return self.inner.complete(messages, max_tokens=max_tokens, temperature=temperature, seed=seed)
        self.replayed += 1
        return Completion(text=call["output"], prompt_tokens=call["prompt_tokens"], completion_tokens=call["completion_tokens"],
                          seconds=call["seconds"], finish_reason=call["finish_reason"], cached_tokens=call.get("cached_tokens") or 0,
                          prefill_seconds=call.get("prefill_seconds"), from_cache=True)


def key(messages: Messages) -> str:
    return repr([(m["role"], m["content"]) for m in messages])


def rerun(path: Path, dataset: str, strategy: str, rows: list[dict], data: Path) -> None:
    """The deleted rows of `strategy` run again, as `coa eval --resume` would, on the reader loaded as
    the stored run loaded it, with the calls of `rows` that come out the same answered from their traces."""
    store = Store(path, read_only=True)
    stored = store.config(dataset) or {}
    store.close()
    config = Config(window=stored["window"], max_cu_tokens=stored["max_cu_tokens"], temperature=stored["temperature"],
                    seed=stored["seed"], max_calls=stored["max_calls"], max_total_tokens=stored["max_total_tokens"],
                    max_seconds=stored["max_seconds"])
    evaluation = Evaluation(dataset=dataset, strategies=[strategy], model=stored["model"], config=config,
                            limit=stored["limit"], out=path, resume=True, data_dir=data, options=stored["options"])
    model = Stored(load_model(stored["model"], window=largest_window(stored["window"], stored["strategies"])), rows)
    outcome = evaluate(evaluation, model)
    print(f"{path.name} {strategy}: {outcome.summary()}; {model.replayed} calls answered from the stored traces", flush=True)
    model.inner.close()


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
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--drop", action="store_true", help="delete the rows that would change, for a resume to rerun")
    group.add_argument("--rerun", action="store_true", help="delete the rows that would change and run them again")
    parser.add_argument("--verbose", action="store_true", help="print the evidence of every changed row")
    args = parser.parse_args()
    model = Replay(reader_model_path())
    data = Path(os.environ.get("COA_DATA_DIR") or HERE.parents[1] / "shared" / "data")
    for set_name, (dataset, dataset_options, limit, _) in RUNS.items():
        path = args.runs / set_name
        if (args.only and set_name not in args.only.split(",")) or not (path / Store.FILE).exists():
            continue
        store = Store(path, read_only=not (args.drop or args.rerun))
        stored = store.rows(dataset, traces=True)
        examples = load(dataset, data_dir=data, options=dict(o.split("=", 1) for o in dataset_options), seed=0,
                        count_tokens=model.count_tokens, limit=limit)
        reruns: list[tuple[str, list[dict]]] = []
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
            if (args.drop or args.rerun) and changed:
                store.db.executemany("DELETE FROM results WHERE dataset = ? AND strategy = ? AND example = ?",
                                     [(dataset, strategy, e) for e in changed])
                reruns.append((strategy, [rows[e] for e in changed]))
            print(f"{set_name} {strategy}: {len(rows) - len(changed)} of {len(rows)} stored rows stand; "
                  f"{len(changed)} would change{' (deleted)' if (args.drop or args.rerun) and changed else ''}", flush=True)
        store.close()
        for strategy, changed_rows in reruns if args.rerun else ():
            rerun(path, dataset, strategy, changed_rows, data)


if __name__ == "__main__":
    main()
