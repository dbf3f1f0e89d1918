"""Datasets by name. A loader turns options into Examples: a Task, its references and how to score it.

    @dataset("niah", "needle in a haystack: ...")
    def niah(source: Source) -> Iterator[Example]: ...

Built-in loaders live in the modules of this package, one family each; other packages add
theirs through the `chainofagents.datasets` entry point group (a loader function; its
docstring describes it).

`Source` carries the data directory, the loader's options (`--opt key=value`), the
seed, and the evaluated model's token counter (lengths are in that model's tokens).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coa.errors import ConfigError, InputError
from coa.registry import Registry
from coa.task import Task


@dataclass(frozen=True)
class Example:
    id: str
    task: Task
    references: list[str]
    metric: str
    meta: dict[str, Any] = field(default_factory=dict)  # length, depth, positions, ...


@dataclass
class Source:
    data_dir: Path
    options: dict[str, str]
    seed: int
    count_tokens: Callable[[str], int]
    argument: str = ""  # what follows the colon in "leval:quality" or "jsonl:PATH"
    used: set[str] = field(default_factory=set)

    def option(self, key: str, default: Any, kind: Callable[[str], Any] = str, *,
               valid: Callable[[Any], bool] = lambda value: True, expected: str = "") -> Any:
        """The option's value as `kind` makes it; a ConfigError saying what is `expected` where
        `kind` fails or the value is not `valid`."""
        self.used.add(key)
        if key not in self.options:
            return default
        raw = self.options[key]
        try:
            value = kind(raw)
            if valid(value):
                return value
        except ValueError:
            pass
        raise ConfigError(f"dataset option {key}={raw!r} is not valid" + (f": expected {expected}" if expected else ""))

    def file(self, *parts: str) -> Path:
        path = self.data_dir.joinpath(*parts)
        if not path.is_file():
            raise InputError(f"{path}: not found (data is looked for in --data-dir, else $COA_DATA_DIR, else "
                             f"{user_data_dir()}; point one of them at the data directory)")
        return path


Loader = Callable[[Source], Iterator[Example]]
DATASETS: Registry[Loader] = Registry("dataset", "chainofagents.datasets", package="coa.eval.datasets")
dataset = DATASETS.register


def user_data_dir() -> Path:
    """Where datasets live when neither --data-dir nor COA_DATA_DIR says: the user's data directory."""
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "chainofagents" / "data"


def default_data_dir() -> Path:
    return Path(os.environ["COA_DATA_DIR"]) if os.environ.get("COA_DATA_DIR") else user_data_dir()


def load(name: str, *, data_dir: Path | None, options: dict[str, str], seed: int,
         count_tokens: Callable[[str], int], limit: int | None = None) -> list[Example]:
    """The examples of dataset `name` ("niah", "leval:quality", "jsonl:PATH", ...); with a `limit`,
    at most that many, spread over the documents (see `spread`)."""
    family, _, argument = name.partition(":")
    loader = DATASETS.get(family)
    source = Source(data_dir or default_data_dir(), dict(options), seed, count_tokens, argument)
    examples = _read(name, loader(source), limit)
    unknown = set(options) - source.used
    if unknown:
        raise ConfigError(f"dataset {family} has no option {', '.join(sorted(unknown))}")
    if not examples:
        raise InputError(f"dataset {name} has no examples")
    return examples if limit is None else spread(examples, limit)


def _read(name: str, stream: Iterator[Example], limit: int | None) -> list[Example]:
    """The loader's examples, with distinct ids. With a `limit`, reading stops once `limit`
    documents have appeared: `spread` then takes the first example of each and nothing after,
    which keeps generated datasets (one document per example) from being built in full."""
    examples: list[Example] = []
    ids: set[str] = set()
    documents: set[str] = set()
    for example in stream:
        if example.id in ids:  # results are stored by id: a second example would overwrite the first
            raise InputError(f"dataset {name}: example id {example.id!r} is used twice")
        ids.add(example.id)
        examples.append(example)
        documents.add(example.task.document)
        if limit is not None and len(documents) >= limit:
            break
    return examples


def spread(examples: list[Example], limit: int) -> list[Example]:
    """At most `limit` of `examples`, taken round-robin over their documents: the first question
    of each document (in order of appearance), then the second of each, and so on; returned in
    their original order. A small limit on a dataset with many questions per document (QuALITY,
    QMSum) so covers many documents rather than the first one or two."""
    seen: dict[str, int] = {}  # questions so far per document
    order: dict[str, int] = {}  # documents in order of appearance
    rank = []
    for example in examples:
        document = example.task.document
        rank.append((seen.get(document, 0), order.setdefault(document, len(order))))
        seen[document] = seen.get(document, 0) + 1
    chosen = sorted(sorted(range(len(examples)), key=rank.__getitem__)[:limit])
    return [examples[i] for i in chosen]


def numbers(kind: Callable[[str], Any]) -> Callable[[str], list]:
    """A `Source.option` kind: comma-separated numbers, "1000,2000"."""
    return lambda text: [kind(part) for part in text.split(",")]
