"""What a run is asked (Task) and what it returns (Result, a trace of Calls)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from coa.errors import InputError


class Kind(StrEnum):
    QA = "qa"  # free-form question answering
    MCQ = "mcq"  # multiple-choice question answering
    SUMMARIZE = "summarize"  # summarization, optionally focused by a query
    CODE = "code"  # next-line code completion

    @property
    def needs_query(self) -> bool:
        return self in (Kind.QA, Kind.MCQ)


LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class Task:
    """A long input and what to do with it.

    For code completion the query is the code right before the line to write;
    when it is omitted, the last lines of the document serve.
    """

    document: str
    query: str | None = None
    kind: Kind = Kind.QA
    choices: tuple[str, ...] = ()
    requirement: str | None = None  # overrides the prompt's default task requirement

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        object.__setattr__(self, "choices", tuple(self.choices))
        if not self.document.strip():
            raise InputError("the document is empty")
        if self.kind.needs_query and not (self.query or "").strip():
            raise InputError(f"a {self.kind} task needs a question")
        if self.kind is Kind.MCQ and not 2 <= len(self.choices) <= len(LETTERS):
            raise InputError(f"a multiple-choice task needs 2 to {len(LETTERS)} choices")
        if self.kind is not Kind.MCQ and self.choices:
            raise InputError("choices only apply to multiple-choice tasks")

    @property
    def lettered_choices(self) -> list[str]:
        return [f"{letter}. {text}" for letter, text in zip(LETTERS, self.choices, strict=False)]


@dataclass(frozen=True)
class Citation:
    """Evidence the answer was given, in the document's own words: `text` is always
    `document[start:end]`; `line` is the CU line it came from (a copy with other spacing, or a
    restatement whose citation is the sentence it rests on)."""

    text: str  # document[start:end]
    start: int  # character offsets in the document
    end: int
    worker: int  # the worker (0-based, in reading order) that quoted it
    line: str = ""


@dataclass
class Call:
    """One model call in a run."""

    role: str  # "worker", "manager", or a strategy's own ("judge", "collapse", ...)
    index: int  # position among the calls of this role (0-based)
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    output: str  # what the model wrote
    span: tuple[int, int] | None = None  # token span of the chunk this call read
    cu: str | None = None  # what a chain worker passed on (its output, unless a guard changed it); a manager: the CU it read
    messages: list[dict[str, str]] = field(default_factory=list)
    finish_reason: str = "stop"
    path: int | None = None  # which chain of a multi-path run
    note: str | None = None  # what the strategy did with the output (guard fired, dropped, ...)
    cached_tokens: int = 0  # of prompt_tokens, those the backend reused from its cache
    prefill_seconds: float | None = None  # of seconds, the prompt's evaluation, where the backend tells
    from_cache: bool = False  # answered by the response cache (--cache): original token counts, zero seconds


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    calls: int
    seconds: float  # time spent inside the model
    cached_tokens: int = 0  # prompt tokens reused from the backend's cache, not evaluated


@dataclass
class Result:
    """The answer and the record of every call that produced it."""

    answer: str
    strategy: str
    model: str
    window: int
    kind: Kind
    calls: list[Call]
    seconds: float  # wall time of the whole run
    settings: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    token_counter: str | None = None  # how the backend's tokens were counted (model tokenizer, server endpoint, tiktoken, estimate)
    citations: list[Citation] = field(default_factory=list)  # the evidence the answer was given, where the strategy keeps it
    # Whether every content word the answer adds to the question is in a citation; None: not checked
    # (a strategy that does not cite, or a summary or code)
    supported: bool | None = None

    @property
    def usage(self) -> Usage:
        return Usage(
            prompt_tokens=sum(c.prompt_tokens for c in self.calls),
            completion_tokens=sum(c.completion_tokens for c in self.calls),
            calls=len(self.calls),
            seconds=sum(c.seconds for c in self.calls),
            cached_tokens=sum(c.cached_tokens for c in self.calls),
        )

    @property
    def workers(self) -> list[Call]:
        return [c for c in self.calls if c.role == "worker"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["usage"] = asdict(self.usage)
        return data

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


CODE_QUERY_LINES = 20


def query_text(task: Task) -> str:
    """The query as prompts show it; for code, the lines right before the one to write."""
    if task.kind is Kind.CODE and not task.query:
        return "".join(task.document.splitlines(keepends=True)[-CODE_QUERY_LINES:])
    return task.query or ""
