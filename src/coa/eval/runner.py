"""`coa eval` and `coa batch`: every (example, strategy) pair once, results streamed into the run's store.

Which pairs are pending (resume, retry, rerun) is decided here; where they run is an
executor's business (coa.eval.executors: this process, or a Ray cluster).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from coa.config import Config
from coa.errors import ConfigError, InputError
from coa.eval.datasets import Example, Source, jsonl, load
from coa.eval.executors import Executor, LocalExecutor
from coa.eval.executors import run_pair as run_pair  # where it lived before the executors
from coa.eval.store import Store
from coa.models.base import Model
from coa.strategies import get_strategy
from coa.strategies.base import parse_options, parse_pairs
from coa.task import Kind

# Settings that must match for a resumed run to extend the same experiment.
FIXED = ("model", "window", "max_cu_tokens", "temperature", "seed", "options")


@dataclass(frozen=True)
class StrategySpec:
    """A strategy with options, written "coa" or "coa:order=rtl:manager=false"."""

    label: str
    name: str
    options: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> StrategySpec:
        name, *pairs = text.strip().split(":")
        options = parse_pairs(pairs)
        parse_options(get_strategy(name), options)  # checked now, not after hours of running
        return cls(text.strip(), name, options)


@dataclass
class Evaluation:
    dataset: str
    strategies: list[str]
    model: str = "embedded"
    window: int = 8192
    max_cu_tokens: int | None = None
    temperature: float = 0.0
    seed: int = 0
    limit: int | None = None
    concurrency: int = 1  # pairs in flight at once
    out: Path = Path("runs/latest")
    resume: bool = False
    retry_errors: bool = False
    rerun: list[str] = field(default_factory=list)  # strategies whose stored pairs are dropped first (implies resume)
    data_dir: Path | None = None
    options: dict[str, str] = field(default_factory=dict)  # the dataset's options
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    embed_api_key: str | None = field(default=None, repr=False)  # never recorded (see run_config)


def run_config(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "dataset": evaluation.dataset,
        "model": evaluation.model,
        "window": evaluation.window,
        "max_cu_tokens": evaluation.max_cu_tokens,
        "temperature": evaluation.temperature,
        "seed": evaluation.seed,
        "options": evaluation.options,
        "limit": evaluation.limit,
        "strategies": evaluation.strategies,
        "version": metadata.version("chainofagents"),
        "git": git_hash(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Outcome:
    """What one `evaluate` call did: the store with every result of the run, and the pairs it ran."""

    store: Store
    ran: int = 0
    errors: list[str] = field(default_factory=list)  # of the pairs it ran, in the dataset's order
    skipped: int = 0  # pairs finished by an earlier run of the same store

    @property
    def all_failed(self) -> bool:
        return self.ran > 0 and len(self.errors) == self.ran


def evaluate(evaluation: Evaluation, model: Model, *, executor: Executor | None = None,
             console: Console | None = None) -> Outcome:
    """Run every pending pair of the dataset, on `executor` (default: this process, on `model`);
    `model` also measures lengths for the datasets that are built to a size."""

    def examples() -> list[Example]:
        return load(evaluation.dataset, data_dir=evaluation.data_dir, options=evaluation.options,
                    seed=evaluation.seed, count_tokens=model.count_tokens, limit=evaluation.limit)

    return execute(evaluation, examples, executor or LocalExecutor(model, evaluation.concurrency), console=console)


def execute(evaluation: Evaluation, examples: Callable[[], list[Example]], executor: Executor, *,
            console: Console | None = None) -> Outcome:
    """Run the pending pairs of `examples()`. Settings are stored once the examples have loaded, so a
    command that fails before then leaves nothing that the corrected command would trip over."""
    specs = [StrategySpec.parse(s) for s in evaluation.strategies]
    if not specs:
        raise ConfigError("give at least one strategy")
    rerun = {s.strip() for s in evaluation.rerun}
    if unknown := rerun - {s.label for s in specs}:
        raise ConfigError(f"--rerun names {', '.join(sorted(unknown))}, which --strategies does not")
    resuming = evaluation.resume or bool(rerun)
    flag = "--resume" if evaluation.resume else "--rerun"
    if resuming and not (evaluation.out / Store.FILE).is_file():
        raise ConfigError(f"{flag}: {evaluation.out} holds no run to resume (leave out {flag} to start one)")
    store = Store(evaluation.out)
    config = run_config(evaluation)
    previous = store.config(evaluation.dataset)
    if previous is not None and not resuming and store.finished(evaluation.dataset):
        raise ConfigError(f"{evaluation.out} already holds results for {evaluation.dataset}; use --resume or another --out")
    if previous is None and resuming:
        raise ConfigError(f"{flag}: {evaluation.out} holds no run of {evaluation.dataset} to resume "
                          f"(leave out {flag} to start one)")
    if previous is not None and resuming:
        changed = [k for k in FIXED if previous.get(k) != config[k]]
        if changed:
            raise ConfigError(f"cannot resume {evaluation.out}: {', '.join(changed)} differ from the stored run")
        config["strategies"] = list(dict.fromkeys(previous["strategies"] + config["strategies"]))
        config["started"] = previous["started"]
        config["git"] = ", ".join(dict.fromkeys(h for h in [*(previous.get("git") or "").split(", "), config["git"]] if h))
    loaded = examples()
    store.set_config(evaluation.dataset, config)  # only once the data loaded
    store.forget(evaluation.dataset, rerun)  # likewise: a bad --data-dir drops nothing
    done = store.finished(evaluation.dataset, errors=not evaluation.retry_errors)
    pending = [(i, e, s) for i, e in enumerate(loaded) for s in specs if (e.id, s.label) not in done]
    run_settings = Config(window=evaluation.window, max_cu_tokens=evaluation.max_cu_tokens,
                          temperature=evaluation.temperature, seed=evaluation.seed,
                          embed_api_key=evaluation.embed_api_key)
    rows = _run(pending, evaluation.dataset, run_settings, executor, store, console or Console(stderr=True))
    return Outcome(store, len(rows), [r["error"] for r in rows if r["error"] is not None],
                   skipped=len(loaded) * len(specs) - len(pending))


def _run(pending, dataset: str, config: Config, executor: Executor, store: Store, console: Console) -> list[dict]:
    """The rows of the pending pairs, each saved the moment it comes back; in the pairs' order."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    rows: dict[tuple[str, str], dict] = {}
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(dataset, total=len(pending))

        def on_row(row: dict) -> None:
            store.save(row)
            rows[row["example"], row["strategy"]] = row
            progress.advance(bar)

        executor.run(dataset, config, pending, on_row)
    return [rows[e.id, s.label] for _, e, s in pending if (e.id, s.label) in rows]


# -- coa batch: a corpus of documents and questions, references optional ---------------------
def read_corpus(path: Path, limit: int | None = None) -> list[Example]:
    """The tasks of a JSONL corpus, from its first `limit` rows. Rows are those of `jsonl:`
    datasets, with `answers` optional (unscored without); a row may give `questions`, a list:
    one task per question over the same document, ids ID#0, ID#1, ... (and `answers`, if
    given, then holds one entry per question)."""
    from coa.eval.metrics import METRICS

    # The fields are read by the jsonl: dataset's own readers, so that a row means the same to both.
    source = Source(Path(), {}, 0, len, str(path))  # only the path matters to jsonl.rows
    examples: list[Example] = []
    ids: set[str] = set()
    for count, (n, row) in enumerate(jsonl.rows(source), 1):
        where = f"{path}:{n}"
        document = jsonl.text_field(row, where, "context", "document", required=True)
        row_id = str(row.get("_id", row.get("id", n)))
        questions = row.get("questions")
        if questions is None:
            query = jsonl.text_field(row, where, "input", "question", "query")
            queries = [(row_id, query, _references(row.get("answers", row.get("answer")), where))]
        else:
            if not (isinstance(questions, list) and questions and all(isinstance(q, str) and q.strip() for q in questions)):
                raise InputError(f"{where}: 'questions' must be a non-empty list of texts")
            answers = row.get("answers")
            if answers is not None and not (isinstance(answers, list) and len(answers) == len(questions)):
                raise InputError(f"{where}: with 'questions', 'answers' must be a list of one entry per question "
                                 f"({len(questions)})")
            queries = [(f"{row_id}#{k}", q, _references(answers[k] if answers else None, where))
                       for k, q in enumerate(questions)]
        choices = row.get("choices") or []
        if not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
            raise InputError(f"{where}: 'choices' must be a list of texts")
        kind = row.get("kind") or (Kind.MCQ if choices else Kind.QA if queries[0][1] else Kind.SUMMARIZE)
        if kind not in [k.value for k in Kind]:
            raise InputError(f"{where}: unknown kind {kind!r}; use one of: {', '.join(k.value for k in Kind)}")
        metric = row.get("metric") or jsonl.DEFAULT_METRIC[Kind(kind)]
        if metric not in METRICS:
            raise InputError(f"{where}: unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
        for task_id, query, references in queries:
            if task_id in ids:  # results are stored by id: a second task would overwrite the first
                raise InputError(f"{where}: id {task_id!r} is used twice")
            ids.add(task_id)
            task = jsonl.make_task(where, document, query, kind, tuple(choices))
            examples.append(Example(id=task_id, task=task, references=references, metric=metric))
        if count == limit:  # before the next line is read: a broken row past the limit does not matter
            break
    if not examples:
        raise InputError(f"{path}: no rows")
    return examples


def _references(value: object, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, dict):
        raise InputError(f"{where}: 'answers' must be a text or a list of texts, not {jsonl.json_type(value)}")
    return [str(a) for a in value] if isinstance(value, list) else [str(value)]


def write_answers(store: Store, dataset: str, path: Path) -> None:
    """Every stored row of `dataset` as JSONL (id, strategy, answer, error), in the corpus's order;
    written beside and renamed into place, so the file is whole at any moment."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with temporary.open("w", encoding="utf-8") as out:
        for row in store.rows(dataset):
            out.write(json.dumps({"id": row["example"], "strategy": row["strategy"], "answer": row["prediction"],
                                  "error": row["error"]}, ensure_ascii=False) + "\n")
    os.replace(temporary, path)
