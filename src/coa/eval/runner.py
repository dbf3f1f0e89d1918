"""`coa eval` and `coa batch`: every (example, strategy) pair once, results streamed into the run's store.

Which pairs are pending (resume, retry, rerun) is decided here; where they run is an
executor's business (coa.eval.executors: this process, or a Ray cluster).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from coa.config import Config
from coa.errors import CoaError, ConfigError, InputError
from coa.eval.datasets import Example, Source, jsonl, load
from coa.eval.executors import Executor, LocalExecutor, Pair
from coa.eval.store import Store
from coa.identity import pair_fingerprint, run_settings
from coa.models.base import Model
from coa.strategies import get_strategy
from coa.strategies.options import parse_options, parse_pairs
from coa.task import Kind

# Settings that must match for a resumed run to extend the same experiment.
FIXED = ("model", "window", "max_cu_tokens", "temperature", "seed", "options", "max_calls", "max_total_tokens",
         "max_seconds", "max_answer_tokens", "prompts_dir")


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
    config: Config = field(default_factory=Config)  # every pair's run settings (window, sampling, limits, prompts)
    requirement: str | None = None  # replaces each task's answer requirement
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
    # coa batch: the corpus file. Its --out then holds that one corpus: another is refused, unless
    # `replace`, which drops every batch run stored there and starts over.
    corpus: Path | None = None
    replace: bool = False

    def __post_init__(self) -> None:
        if self.retry_errors and not (self.resume or self.rerun):
            raise ConfigError("--retry-errors goes with --resume: it runs the failed pairs of a stored run again")
        if self.replace and (self.resume or self.rerun):
            raise ConfigError("--replace drops the stored results and starts over; it does not go with --resume")



def run_config(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "dataset": evaluation.dataset,
        **({"corpus": str(evaluation.corpus.resolve())} if evaluation.corpus else {}),
        "model": evaluation.model,
        "window": evaluation.config.window,
        "max_cu_tokens": evaluation.config.max_cu_tokens,
        "temperature": evaluation.config.temperature,
        "seed": evaluation.config.seed,
        "options": evaluation.options,
        "max_calls": evaluation.config.max_calls,
        "max_total_tokens": evaluation.config.max_total_tokens,
        "max_seconds": evaluation.config.max_seconds,
        "max_answer_tokens": evaluation.config.max_answer_tokens,
        "prompts_dir": str(evaluation.config.prompts_dir.resolve()) if evaluation.config.prompts_dir else None,
        "requirement": evaluation.requirement,
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
class Plan:
    """What a run is to do, decided (and its settings stored) before any pair runs."""

    evaluation: Evaluation
    store: Store
    pending: list[Pair]
    # (example, strategy) -> fingerprint of every pair of the input under each of the run's strategies
    # (those stored before too), in the order their answers are written.
    expected: dict[tuple[str, str], str]
    total: int  # pairs of the input under this command's strategies
    changed: int  # of the pending pairs, those stored before from other inputs or settings


@dataclass
class Outcome:
    """What one `evaluate` call did: the store with every result of the run, and the pairs it ran."""

    store: Store
    ran: int = 0
    errors: list[str] = field(default_factory=list)  # of the pairs it ran, in the dataset's order
    skipped: int = 0  # pairs finished by an earlier run of the same store, from the same inputs
    changed: int = 0  # pairs it ran again because what they were stored from has changed since

    @property
    def all_failed(self) -> bool:
        return self.ran > 0 and len(self.errors) == self.ran

    def summary(self) -> str:
        """The run in a line, e.g. `done 3, failed 0, skipped 2, rerun 1 changed`: done and failed count
        every pair it ran, the changed ones among them."""
        failed = len(self.errors)
        changed = f", rerun {self.changed} changed" if self.changed else ""
        return f"done {self.ran - failed}, failed {failed}, skipped {self.skipped}{changed}"


def evaluate(evaluation: Evaluation, model: Model, *, executor: Executor | None = None,
             console: Console | None = None) -> Outcome:
    """Run every pending pair of the dataset, on `executor` (default: this process, on `model`);
    `model` also measures lengths for the datasets that are built to a size."""

    def examples() -> list[Example]:
        return load(evaluation.dataset, data_dir=evaluation.data_dir, options=evaluation.options,
                    seed=evaluation.config.seed or 0, count_tokens=model.count_tokens, limit=evaluation.limit)

    return execute(evaluation, examples, executor or LocalExecutor(model, evaluation.concurrency), console=console)


def execute(evaluation: Evaluation, examples: Callable[[], list[Example]], executor: Executor, *,
            console: Console | None = None) -> Outcome:
    """Run the pending pairs of `examples()`."""
    return run(plan(evaluation, examples), executor, console=console)


def plan(evaluation: Evaluation, examples: Callable[[], list[Example]]) -> Plan:
    """Check the command against what its --out holds, load the examples, and decide which pairs run:
    those not stored, those stored from other inputs (their fingerprint differs: see coa.identity),
    and with retry_errors the failed ones. Settings are stored, and rows dropped, only once the
    examples have loaded, so a command that fails before then leaves nothing that the corrected
    command would trip over."""
    specs = [StrategySpec.parse(s) for s in evaluation.strategies]
    if not specs:
        raise ConfigError("give at least one strategy")
    rerun = {s.strip() for s in evaluation.rerun}
    if unknown := rerun - {s.label for s in specs}:
        raise ConfigError(f"--rerun names {', '.join(sorted(unknown))}, which --strategies does not")
    resuming = evaluation.resume or bool(rerun)
    flag = "--resume" if evaluation.resume else "--rerun"
    out, dataset = evaluation.out, evaluation.dataset
    if resuming and not (out / Store.FILE).is_file():
        raise ConfigError(f"{flag}: {out} holds no run to resume (leave out {flag} to start one)")
    store = Store(out)
    config = run_config(evaluation)
    others = _other_corpora(store, evaluation)
    if others and not evaluation.replace:
        where = others[0][1] or others[0][0]
        raise ConfigError(f"{out} holds the results of another corpus, {where}; give --replace to drop them "
                          "and start over, or use another --out")
    previous = None if evaluation.replace else store.config(dataset)
    if previous is not None and not resuming and store.finished(dataset):
        instead = "--resume to go on, --replace to start over" if evaluation.corpus else "--resume"
        raise ConfigError(f"{out} already holds results for {dataset}; use {instead} or another --out")
    if previous is None and resuming:
        raise ConfigError(f"{flag}: {out} holds no run of {dataset} to resume (leave out {flag} to start one)")
    if previous is not None and resuming:
        differ = [k for k in FIXED if previous.get(k) != config[k]]
        if differ:
            raise ConfigError(f"cannot resume {out}: {', '.join(differ)} differ from the stored run")
        config["strategies"] = list(dict.fromkeys(previous["strategies"] + config["strategies"]))
        config["started"] = previous["started"]
        config["git"] = ", ".join(dict.fromkeys(h for h in [*(previous.get("git") or "").split(", "), config["git"]] if h))
    settings = run_settings(evaluation.model, evaluation.config)  # reads the prompt files: before any change
    loaded = examples()
    if evaluation.requirement is not None:  # in each task, so that the pairs' fingerprints hold it
        loaded = [replace(e, task=replace(e.task, requirement=evaluation.requirement)) for e in loaded]
    if evaluation.replace:
        for name in dict.fromkeys([*(d for d, _ in others), dataset]):
            store.drop(name)
    store.set_config(dataset, config)  # only once the data loaded
    store.forget(dataset, rerun)  # likewise: a bad --data-dir drops nothing
    stored = store.fingerprints(dataset)
    labels = {s.label for s in specs}
    everyone = {label: _spec(label) for label in sorted(set(config["strategies"]) - labels)} | {s.label: s for s in specs}
    expected = {(e.id, label): pair_fingerprint(e, spec, settings)
                for e in loaded for label, spec in sorted(everyone.items()) if spec is not None}
    pending: list[Pair] = []
    changed = 0
    for i, example in enumerate(loaded):
        for spec in specs:
            key = (example.id, spec.label)
            if key not in stored:
                pending.append((i, example, spec))
            elif stored[key][0] != expected[key]:  # also a row stored before fingerprints (None)
                pending.append((i, example, spec))
                changed += 1
            elif stored[key][1] and evaluation.retry_errors:
                pending.append((i, example, spec))
    return Plan(evaluation, store, pending, expected, len(loaded) * len(specs), changed)


def run(work: Plan, executor: Executor, *, console: Console | None = None) -> Outcome:
    """Run the plan's pending pairs; each row is stored, with its fingerprint, the moment it is back."""
    rows = _run(work, executor, console or Console(stderr=True))
    return Outcome(work.store, len(rows), [r["error"] for r in rows if r["error"] is not None],
                   skipped=work.total - len(work.pending), changed=work.changed)


def _spec(label: str) -> StrategySpec | None:
    """A strategy an earlier command of the run gave; None where it no longer parses (a plugin gone)."""
    try:
        return StrategySpec.parse(label)
    except CoaError:
        return None


def _other_corpora(store: Store, evaluation: Evaluation) -> list[tuple[str, str | None]]:
    """(dataset, corpus path) of the batch runs in the store of another corpus than the evaluation's;
    none for a run that is not a batch. A corpus is its file's resolved path: the same file with
    edited rows is the same corpus (its changed rows run again), a file elsewhere is another one. A
    run stored before paths were recorded is taken to be of the corpus whose file has its name."""
    if evaluation.corpus is None:
        return []
    path = str(evaluation.corpus.resolve())
    others = []
    for name in store.datasets():
        config = store.config(name) or {}
        if name.startswith("batch:") and (config["corpus"] != path if "corpus" in config else name != evaluation.dataset):
            others.append((name, config.get("corpus")))
    return others


def _run(work: Plan, executor: Executor, console: Console) -> list[dict]:
    """The rows of the pending pairs, each saved the moment it comes back; in the pairs' order."""
    dataset, store = work.evaluation.dataset, work.store
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    rows: dict[tuple[str, str], dict] = {}
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(dataset, total=len(work.pending))

        def on_row(row: dict) -> None:
            row["fingerprint"] = work.expected[row["example"], row["strategy"]]
            store.save(row)
            rows[row["example"], row["strategy"]] = row
            progress.advance(bar)

        executor.run(dataset, work.evaluation.config, work.pending, on_row)
    return [rows[e.id, s.label] for _, e, s in work.pending if (e.id, s.label) in rows]


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
        row_id = jsonl.row_id(row, where, n)
        questions = row.get("questions")
        if questions is None:
            query = jsonl.text_field(row, where, "input", "question", "query")
            queries = [(row_id, query, jsonl.references(row.get("answers", row.get("answer")), where))]
        else:
            if not (isinstance(questions, list) and questions and all(isinstance(q, str) and q.strip() for q in questions)):
                raise InputError(f"{where}: 'questions' must be a non-empty list of texts")
            answers = row.get("answers")
            if answers is not None and not (isinstance(answers, list) and len(answers) == len(questions)):
                raise InputError(f"{where}: with 'questions', 'answers' must be a list of one entry per question "
                                 f"({len(questions)})")
            queries = [(f"{row_id}#{k}", jsonl.no_nul(q, where, "questions"),
                        jsonl.references(answers[k] if answers else None, where, f"answers[{k}]"))
                       for k, q in enumerate(questions)]
        choices = jsonl.choices_field(row, where)
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


def write_answers(work: Plan, path: Path) -> None:
    """The stored answers to the run's input as JSONL (id, strategy, answer, error), in the corpus's
    order: every pair of the input (as limited) under each of the run's strategies whose row was
    produced from the input as it is now; rows of other ids, or of rows since edited, are left out.
    Written beside and renamed into place, so the file is whole at any moment."""
    stored = {(row["example"], row["strategy"]): row for row in work.store.rows(work.evaluation.dataset)}
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with temporary.open("w", encoding="utf-8") as out:
        for key, fingerprint in work.expected.items():
            row = stored.get(key)
            if row is not None and row["fingerprint"] == fingerprint:
                out.write(json.dumps({"id": row["example"], "strategy": row["strategy"], "answer": row["prediction"],
                                      "error": row["error"]}, ensure_ascii=False) + "\n")
    os.replace(temporary, path)
