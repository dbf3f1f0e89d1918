"""Hugging Face datasets in the LongBench, L-Eval or LongBench v2 layout: hf:NAME[:CONFIG].

NAME is a directory written by `save_to_disk` (a Dataset, or a DatasetDict from which
`split` picks), a directory of data files, a .json/.jsonl/.parquet file, or a hub name
such as THUDM/LongBench (this needs the hub or its cache; nothing else is fetched).

Options: `split` (default test; a single saved Dataset or data file is used whole),
`layout` (auto, longbench, leval or longbench2; auto goes by the columns) and `metric`, which
overrides the layout's metric and is needed where the layout names none.

LongBench rows (`context`, `input`, `answers`, `all_classes`, `_id`, `dataset`) are scored
with LongBench's metric for their dataset, named by CONFIG, else each row's `dataset`,
else NAME's file name (hotpotqa.jsonl). L-Eval rows (`input` the document, lists of
`instructions` and `outputs`, `evaluation`) give one example per question, read as leval:TASK
reads them (coa.eval.datasets.leval_rows; the task is CONFIG, else NAME's file name): exam
(option letters, or true/false for sci_fi), rouge, f1, em; rows left to a judge are skipped.
LongBench v2 rows (`question`, `choice_A` to `choice_D`, `answer`, `context`: THUDM/LongBench-v2,
whose one split is train) are read as longbench2:PATH reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coa.errors import ConfigError, InputError
from coa.eval.datasets import Example, Source, dataset, leval_rows, longbench2
from coa.eval.datasets.jsonl import LONGBENCH, _answers, make_task, text_field
from coa.extras import require
from coa.task import Kind

FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
LAYOUTS = {  # the columns each layout cannot do without
    "longbench": ("context", "input", "answers"),
    "leval": ("input", "instructions", "outputs"),
    "longbench2": ("context", "question", "choice_A", "choice_B", "choice_C", "choice_D", "answer"),
}


@dataset("hf", "a Hugging Face dataset in the LongBench, L-Eval or LongBench v2 layout: hf:NAME[:CONFIG] "
               "(save_to_disk directory, json/jsonl/parquet file or hub name; split, layout, metric)")
def hf(source: Source) -> Iterator[Example]:
    from coa.eval.metrics import METRICS

    split = source.option("split", "test")
    layout = source.option("layout", "auto", valid=lambda v: v in ("auto", *LAYOUTS),
                           expected="auto, longbench, leval or longbench2")
    metric = source.option("metric", None, valid=lambda v: v in METRICS, expected="one of " + ", ".join(sorted(METRICS)))
    name, config = _name(source.argument)
    where = f"hf:{name}"
    table = _load(name, config, split)
    columns = list(table.column_names)
    if layout == "auto":
        layout = next((lay for lay, needed in LAYOUTS.items() if set(needed) <= set(columns)), None)
        if layout is None:
            needs = "; ".join(f"{lay}: {', '.join(needed)}" for lay, needed in LAYOUTS.items())
            raise InputError(f"{where}: columns {', '.join(columns)} fit no layout ({needs})")
    missing = [c for c in LAYOUTS[layout] if c not in columns]
    if missing:
        raise InputError(f"{where}: no column{'s' * (len(missing) > 1)} {', '.join(map(repr, missing))} (the {layout} layout needs {', '.join(LAYOUTS[layout])})")
    if layout == "longbench":
        yield from _longbench(table, where, config, Path(name).stem.removesuffix("_e"), metric)
    elif layout == "longbench2":
        yield from longbench2.examples(((f"{where} row {n}", row) for n, row in enumerate(table)), metric)
    else:
        yield from _leval(table, where, config or Path(name).stem, metric, source)


def _name(argument: str) -> tuple[str, str | None]:
    """(NAME, CONFIG) from "NAME[:CONFIG]"; a local path may itself contain a colon."""
    if not argument:
        raise ConfigError("dataset hf needs a name: hf:NAME[:CONFIG] (a save_to_disk directory, a data file or a hub name)")
    if Path(argument).expanduser().exists():
        return argument, None
    name, _, config = argument.rpartition(":") if ":" in argument else (argument, "", "")
    if Path(name).expanduser().exists():
        return name, config or None
    # Hub names are "owner/name"; anything that reads as a path is a missing file, not a hub lookup.
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).suffix in FILE_BUILDERS:
        raise InputError(f"{name}: no such file or directory")
    return name, config or None


def _load(name: str, config: str | None, split: str) -> Any:
    """The rows as a `datasets.Dataset`."""
    datasets = require("datasets", "hf", "dataset hf")
    path = Path(name).expanduser()
    if path.is_dir() and ((path / "state.json").is_file() or (path / "dataset_dict.json").is_file()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise InputError(f"hf:{name}: no split {split!r}; it has {', '.join(loaded)} (choose with --opt split=...)")
            return loaded[split]
        return loaded
    if path.is_file():
        builder = FILE_BUILDERS.get(path.suffix)
        if builder is None:
            raise InputError(f"hf:{name}: not a {', '.join(FILE_BUILDERS)} file or a save_to_disk directory")
        # One file is one split, which `datasets` calls "train".
        with _quiet(datasets):
            return _call(name, datasets.load_dataset, builder, data_files=str(path), split="train")
    if path.is_dir():  # data files (parquet, jsonl, ...) in a folder; CONFIG only names the LongBench dataset
        with _quiet(datasets):
            return _call(name, datasets.load_dataset, str(path), split=split)
    return _call(name, datasets.load_dataset, name, config, split=split)  # the hub, or its cache


@contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No progress bars or log lines from `datasets` meanwhile: converting local files takes
    moments, and a bad one is reported once, by `_call`, not also by the library's logger."""
    shown, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if shown:
            datasets.enable_progress_bars()


def _call(name: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """`function(...)`, with whatever `datasets` raises (offline, unknown name, config or split,
    unreadable file) turned into one line."""
    try:
        return function(*args, **kwargs)
    except Exception as e:  # `datasets` raises many unrelated types for these
        cause = e.__cause__ if str(e).startswith("An error occurred while generating") and e.__cause__ else e
        text = " ".join(str(cause).split()) or type(cause).__name__
        raise ConfigError(f"hf:{name}: could not load: {text[:300]}") from None


def _longbench(table: Iterable[dict], where: str, config: str | None, stem: str, metric: str | None) -> Iterator[Example]:
    for n, row in enumerate(table):
        at = f"{where} row {n}"
        name = config or row.get("dataset") or stem  # as longbench:PATH: the most specific name given
        query = (text_field(row, at, "input") or "").strip() or None
        if name in LONGBENCH:
            kind, known, requirement = LONGBENCH[name]
            if kind is Kind.QA and not query:
                query = requirement
        elif metric:  # not one of LongBench's datasets: the user's metric, a plain task
            kind, known, requirement = (Kind.QA if query else Kind.SUMMARIZE), metric, None
        else:
            raise InputError(f"{at}: {name!r} is not a LongBench dataset, so its metric is unknown: "
                             f"name one with --opt metric=... or hf:NAME:CONFIG ({', '.join(sorted(LONGBENCH))})")
        task = make_task(at, text_field(row, at, "context", required=True), query, kind, (), requirement)
        yield Example(id=str(row.get("_id") or n), task=task, references=_answers(row, at), metric=metric or known,
                      meta={"dataset": name, "all_classes": row.get("all_classes") or [], "length": row.get("length")})


def _leval(table: Iterable[dict], where: str, name: str, metric: str | None, source: Source) -> Iterator[Example]:
    rows = ((f"{where} row {d}", row) for d, row in enumerate(table))
    yield from leval_rows.examples(rows, where, name, source.count_tokens, metric, evaluation_meta=True)
