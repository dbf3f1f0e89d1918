"""What every strategy shares: the interface, the registry, and a Session that makes, checks,
times and records the calls of one run. Options are in `options`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from coa import budget
from coa.chunking import Chunk, TokenIndex, chunk_text, token_index
from coa.config import Config
from coa.errors import CoaError, LimitError
from coa.fence import unfence
from coa.grounding import check_support
from coa.models.base import Messages, Model, count_prompt, truncate_to_tokens
from coa.prompts import Prompt, TaskFormat, load_prompt, task_format
from coa.registry import Registry
from coa.strategies.options import NoOptions, Options, parse_options, parse_pairs  # noqa: F401  (callers import them from here)
from coa.strategies.options import Options as BaseOptions
from coa.task import Call, Citation, Kind, Result, Task

CODE_QUERY_LINES = 20


@dataclass(frozen=True)
class Progress:
    """A call is about to start (`call` is None) or has finished."""

    role: str
    index: int
    total: int  # calls of this role planned so far
    call: Call | None = None


# Hears each call begin and end. What it raises as a call begins stops the run before that call
# is sent (the server stops a cancelled run so).
Observer = Callable[[Progress], None]


def ignore(_: Progress) -> None:
    pass


class Strategy:
    """A way to solve a Task with a model. Subclasses set `name`, `description`,
    `Options` (an `Options` model of their `--opt` settings) and implement `solve`, or
    `solve_many` where tasks over one document can share work."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[Options]] = NoOptions

    def __init__(
        self,
        model: Model,
        config: Config = Config(),  # noqa: B008  (frozen: one shared default is safe)
        observer: Observer = ignore,
        options: Mapping[str, Any] | BaseOptions | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.observer = observer
        # Any: each strategy reads its own Options subclass's fields.
        self.options: Any = options if isinstance(options, self.Options) else parse_options(
            self, options.model_dump() if isinstance(options, BaseOptions) else options or {}
        )

    def run(self, task: Task) -> Result:
        return asyncio.run(self.arun(task))

    def run_many(self, tasks: Sequence[Task]) -> list[Result]:
        return asyncio.run(self.arun_many(tasks))

    async def arun(self, task: Task) -> Result:
        return (await self.arun_many([task]))[0]

    async def arun_many(self, tasks: Sequence[Task]) -> list[Result]:
        """A result for each task; tasks that share a document (several questions) may share the reading."""
        runs = [(Session(self.model, self.run_config(), self.observer), task) for task in tasks]
        outcomes = await self.solve_many(runs)
        return [
            session.result(answer, self.name, task, {**self.options.model_dump(), **settings})
            for (session, task), (answer, settings) in zip(runs, outcomes, strict=True)
        ]

    def run_config(self) -> Config:
        """The run's settings, with the strategy's own `window` option where it has one."""
        window = getattr(self.options, "window", None)
        return replace(self.config, window=window) if window else self.config

    async def solve_many(self, runs: list[tuple[Session, Task]]) -> list[tuple[str, dict[str, Any]]]:
        """`solve` for each run in turn; a strategy that can share work across tasks overrides this."""
        outcomes = []
        for session, task in runs:
            session.started = time.perf_counter()  # each run's wall time is its own
            outcomes.append(await self.solve(session, task))
        return outcomes

    async def solve(self, session: Session, task: Task) -> tuple[str, dict[str, Any]]:
        """The raw answer and the settings worth recording."""
        return (await self.solve_many([(session, task)]))[0]


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "chainofagents.strategies", package="coa.strategies")


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator of the built-in strategies: registers `cls` under its `name`."""
    return STRATEGIES.register(cls.name, cls.description)(cls)


def get_strategy(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)


class Session:
    """The calls of one run: each is checked against the window, timed, recorded and reported;
    independent calls run concurrently up to `config.concurrency`."""

    def __init__(self, model: Model, config: Config, observer: Observer) -> None:
        self.model = model
        self.config = config
        self.observer = observer
        self.window = min(config.window, model.context_window)
        self.calls: list[Call] = []
        self.started = time.perf_counter()
        self._slots = asyncio.Semaphore(max(1, config.concurrency))
        self._planned: dict[str, int] = {}
        self._index: tuple[str, TokenIndex] | None = None
        # Set by a strategy that keeps the evidence it answered from (its answer is then checked against
        # it); None: a strategy that does not cite.
        self.citations: list[Citation] | None = None
        self.warnings: list[str] = []  # what the result should tell its reader (a run cut short, ...)
        # Tokens kept back under config's limits for one last call that answers from what was read
        # (set by a strategy that can answer early); None: no call is kept for.
        self.answer_reserve: int | None = None
        self._started = 0  # calls begun, for config.max_calls
        self._spent = 0  # tokens of the calls begun (prompt + generation limit until they finish), for max_total_tokens

    # -- prompts and budgets ---------------------------------------------------------------
    def prompt(self, strategy: str, role: str, kind: Kind | None = None) -> Prompt:
        return load_prompt(strategy, role, kind, self.config.prompts_dir)

    def format(self, task: Task) -> TaskFormat:
        fmt = task_format(task.kind, self.config.prompts_dir)
        return TaskFormat(task.requirement or fmt.requirement, fmt.max_tokens)

    def tokens(self, text: str) -> int:
        return self.model.count_tokens(text)

    def prompt_tokens(self, messages: Messages) -> int:
        return count_prompt(self.model, messages)

    def room(self, messages: Messages, reserve: int) -> int:
        """Tokens left for more text in `messages` once `reserve` tokens are kept for output."""
        return budget.room(self.window, self.prompt_tokens(messages), reserve)

    def budget(self, messages: Messages, reserve: int, what: str) -> int:
        """Tokens of text a call with this prompt can read; a clear error where too few are left."""
        return budget.text_budget(self.window, self.prompt_tokens(messages), reserve, what)

    def answer_limit(self, messages: Messages, task: Task, reserve: int = 0) -> int:
        """Generation limit of the final answer: the task's, or what is left in the window."""
        return budget.answer_limit(self.window, self.prompt_tokens(messages), self.format(task).max_tokens, reserve)

    def split_room(self, messages: Messages, task: Task, what: str) -> tuple[int, int]:
        """(tokens for input text, generation limit) for a call that answers from inputs added to `messages`."""
        return budget.split(self.window, self.prompt_tokens(messages), self.format(task).max_tokens, what)

    def index(self, text: str) -> TokenIndex:
        """Where each token of `text` starts: the tokenizer runs over a document once per run."""
        if self._index is None or self._index[0] is not text:
            self._index = (text, token_index(text, self.tokens, getattr(self.model, "token_offsets", None)))
        return self._index[1]

    def chunks(self, task: Task, budget: int, within: Chunk | None = None) -> list[Chunk]:
        """The document (or the part `within` covers) in chunks of at most `budget` tokens."""
        start, end = (within.start, within.end) if within else (0, len(task.document))
        return chunk_text(task.document, budget, self.index(task.document), lines=task.kind is Kind.CODE,
                          count=self.tokens, start=start, end=end)

    # -- calls ---------------------------------------------------------------------------------
    def plan(self, role: str, total: int) -> None:
        """Tell observers how many calls of `role` to expect."""
        self._planned[role] = total

    async def call(
        self,
        role: str,
        index: int,
        messages: Messages,
        max_tokens: int,
        *,
        span: tuple[int, int] | None = None,
        temperature: float | None = None,
        seed: int | None = None,
        path: int | None = None,
        then: Callable[[Call], None] | None = None,
        final: bool = False,
    ) -> Call:
        """Make one call. `then(call)` fills in what the strategy makes of the output (the CU passed
        on, a note) before the call is recorded and observers hear that it finished. A `final` call
        may use what `answer_reserve` kept back."""
        prompt = self.prompt_tokens(messages)
        budget.check_fits(self.window, prompt, max_tokens)  # never send what cannot fit
        self._within_limits(prompt + max_tokens, final)
        total = max(self._planned.get(role, 1), index + 1)
        async with self._slots:
            self.observer(Progress(role, index, total))
            completion = await asyncio.to_thread(
                self.model.complete,
                messages,
                max_tokens=max_tokens,
                temperature=self.config.temperature if temperature is None else temperature,
                seed=self.config.seed if seed is None else seed,
            )
        call = Call(
            role=role,
            index=index,
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            seconds=completion.seconds,
            output=completion.text,
            span=span,
            messages=messages,
            finish_reason=completion.finish_reason,
            path=path,
            cached_tokens=completion.cached_tokens,
            prefill_seconds=completion.prefill_seconds,
        )
        self._spent += call.prompt_tokens + call.completion_tokens - (prompt + max_tokens)
        if then is not None:
            then(call)
        self.calls.append(call)
        self.observer(Progress(role, index, total, call))
        return call

    def _within_limits(self, tokens: int, final: bool) -> None:
        """Count a call about to begin with at most `tokens` tokens; refuse it past the run's limits
        (checked before the call is sent, so a limit is never passed, even by concurrent calls), or
        where it would leave too little for the final call that `answer_reserve` keeps for."""
        limit_calls, limit_tokens = self.config.max_calls, self.config.max_total_tokens
        kept_calls, kept_tokens = (0, 0) if final or self.answer_reserve is None else (1, self.answer_reserve)
        if limit_calls is not None and self._started + kept_calls >= limit_calls:
            raise LimitError(f"the run stopped at its limit of {limit_calls} model calls (max_calls)")
        if limit_tokens is not None and self._spent + tokens + kept_tokens > limit_tokens:
            raise LimitError(f"the run stopped before a call that could take its tokens past {limit_tokens:,} "
                             f"(max_total_tokens; {self._spent:,} used)")
        self._started += 1
        self._spent += tokens

    async def prefill(self, role: str, index: int, messages: Messages) -> Call | None:
        """Have the backend evaluate a prompt prefix into its cache without generating (a server
        with free slots), recorded as a call; None where the backend cannot, or it failed: a
        prefill only saves time, and its failure must not fail the run."""
        prefill = getattr(self.model, "prefill", None)
        if prefill is None:
            return None
        started = time.perf_counter()
        try:
            evaluated = await asyncio.to_thread(prefill, messages)
        except (NotImplementedError, CoaError):
            return None
        call = Call(role=role, index=index, prompt_tokens=evaluated, completion_tokens=0,
                    seconds=time.perf_counter() - started, output="", messages=messages, finish_reason="prefill")
        self.calls.append(call)
        return call

    def result(self, answer: str, strategy: str, task: Task, settings: dict[str, Any]) -> Result:
        answer = clean_answer(task.kind, answer)
        supported, warning = check_support(task.kind, answer, query_text(task), task.choices, self.citations)
        if warning:
            self.warnings.append(warning)
        return Result(
            answer=answer,
            strategy=strategy,
            model=self.model.name,
            window=self.window,
            kind=task.kind,
            calls=self.calls,
            seconds=time.perf_counter() - self.started,
            settings={"temperature": self.config.temperature, "seed": self.config.seed, **settings},
            # e.g. a server tokenizer that stopped answering, a run cut short by its limits
            warnings=[*getattr(self.model, "warnings", ()), *self.warnings],
            token_counter=getattr(self.model, "token_counter", None),
            citations=list(self.citations or ()),
            supported=supported,
        )


def answer_messages(session: Session, task: Task, document: str) -> Messages:
    """The prompt that answers straight from a text (vanilla, rag, merge)."""
    return session.prompt("common", "answer").render(
        document=document, query=query_text(task), choices=task.lettered_choices, kind=str(task.kind),
        requirement=session.format(task).requirement,
    )


def combine_messages(session: Session, task: Task, notes: list[str]) -> Messages:
    """The prompt that writes the final answer from notes on parts of the text (merge, hierarchical)."""
    return session.prompt("common", "combine").render(
        notes=notes, query=query_text(task), choices=task.lettered_choices, kind=str(task.kind),
        requirement=session.format(task).requirement,
    )


def fit_notes(session: Session, notes: list[str], room: int) -> list[str]:
    """Notes cut to an equal share of `room` tokens each, when together they exceed it."""
    if sum(session.tokens(n) for n in notes) <= room:
        return notes
    share = max(1, room // max(1, len(notes)) - 8)  # a few tokens per note for its "Part i:" label
    return [truncate_to_tokens(session.model, n, share) for n in notes]


def item_costs(session: Session, render: Callable[[list], Messages], items: list) -> list[int]:
    """Tokens each item adds to the prompt `render(items)` builds, labels included."""
    base = count_prompt(session.model, render([]))
    return [count_prompt(session.model, render([item])) - base for item in items]


def groups(sizes: list[int], room: int) -> list[list[int]]:
    """Consecutive indices grouped so that each group's sizes sum to at most `room`
    (a group always takes two items, so that every level of a tree shrinks)."""
    result: list[list[int]] = []
    for i, size in enumerate(sizes):
        if result and (len(result[-1]) < 2 or sum(sizes[j] for j in result[-1]) + size <= room):
            result[-1].append(i)
        else:
            result.append([i])
    return result


def query_text(task: Task) -> str:
    """The query as prompts show it; for code, the lines right before the one to write."""
    if task.kind is Kind.CODE and not task.query:
        return "".join(task.document.splitlines(keepends=True)[-CODE_QUERY_LINES:])
    return task.query or ""


def clean_answer(kind: Kind, text: str) -> str:
    """The answer as a user wants it: trimmed, without echoed fence tags; for code, the first line of code."""
    text = unfence(text)
    if kind is Kind.CODE:  # indentation is part of the line
        lines = [line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("```")]
        return lines[0] if lines else ""
    return text.strip()
