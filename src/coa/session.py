"""The kernel of a run: a Session makes, checks, times and records the calls of one run, within
its Window and its limits, and tells an observer as each call begins and ends. Strategies get
one in `solve`; nothing here knows any strategy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coa.answers import clean_answer
from coa.config import Config
from coa.errors import CoaError, LimitError
from coa.grounding import check_support
from coa.models.base import Messages, Model
from coa.prompts import Prompt, load_prompt, task_format
from coa.task import Call, Citation, Kind, Result, Task, query_text
from coa.window import Window


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


class Session:
    """The calls of one run: each is checked against the window, timed, recorded and reported;
    independent calls run concurrently up to `config.concurrency`."""

    def __init__(self, model: Model, config: Config, observer: Observer) -> None:
        self.model = model
        self.config = config
        self.observer = observer
        self.window = Window(model, config)
        self.calls: list[Call] = []
        self.started = time.perf_counter()
        self._slots = asyncio.Semaphore(max(1, config.concurrency))
        self._planned: dict[str, int] = {}
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

    def requirement(self, task: Task) -> str:
        """What the answer must be like: the task's own, or its kind's in the prompt set."""
        return task.requirement or task_format(task.kind, self.config.prompts_dir).requirement

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
        prompt = self.window.prompt_tokens(messages)
        self.window.check(prompt, max_tokens)  # never send what cannot fit
        total = max(self._planned.get(role, 1), index + 1)
        async with self._slots:
            # Checked once a slot is free, as the call is sent: a call that waited for one is timed from then.
            self._within_limits(prompt + max_tokens, final)
            late = self._past_deadline()
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
            from_cache=completion.from_cache,
        )
        self._spent += call.prompt_tokens + call.completion_tokens - (prompt + max_tokens)
        if then is not None:
            then(call)
        if final and (late or self._past_deadline()):  # only a final call gets past the deadline: say so
            past = (f"the final call {'began' if late else 'ran'} past the run's "
                    f"{self.config.max_seconds:g}-second limit (max_seconds)")
            call.note = f"{call.note}; {past}" if call.note else past
            self.warnings.append(past)
        self.calls.append(call)
        self.observer(Progress(role, index, total, call))
        return call

    def _within_limits(self, tokens: int, final: bool) -> None:
        """Count a call about to begin with at most `tokens` tokens; refuse it past the run's limits
        (checked before the call is sent, so a limit is never passed, even by concurrent calls), or
        where it would leave too little for the final call that `answer_reserve` keeps for."""
        limit_calls, limit_tokens = self.config.max_calls, self.config.max_total_tokens
        kept_calls, kept_tokens = (0, 0) if final or self.answer_reserve is None else (1, self.answer_reserve)
        if not final and self._past_deadline():
            raise LimitError(f"the run stopped at its limit of {self.config.max_seconds:g} seconds (max_seconds; "
                             f"{self.elapsed:.1f} s used)")
        if limit_calls is not None and self._started + kept_calls >= limit_calls:
            raise LimitError(f"the run stopped at its limit of {limit_calls} model calls (max_calls)")
        if limit_tokens is not None and self._spent + tokens + kept_tokens > limit_tokens:
            raise LimitError(f"the run stopped before a call that could take its tokens past {limit_tokens:,} "
                             f"(max_total_tokens; {self._spent:,} used)")
        self._started += 1
        self._spent += tokens

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def seconds_left(self) -> float | None:
        """What is left of the run's max_seconds (None where it has none; 0 or less once past it)."""
        return None if self.config.max_seconds is None else self.config.max_seconds - self.elapsed

    def _past_deadline(self) -> bool:
        return (left := self.seconds_left) is not None and left <= 0

    async def prefill(self, role: str, index: int, messages: Messages) -> Call | None:
        """Have the backend evaluate a prompt prefix into its cache without generating (a server
        with free slots), recorded as a call; None where the backend cannot, or it failed: a
        prefill only saves time, and its failure must not fail the run."""
        started = time.perf_counter()
        try:
            evaluated = await asyncio.to_thread(self.model.prefill, messages)
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
            window=self.window.size,
            kind=task.kind,
            calls=self.calls,
            seconds=self.elapsed,
            settings={"temperature": self.config.temperature, "seed": self.config.seed, **settings},
            # e.g. a server tokenizer that stopped answering, a run cut short by its limits
            warnings=[*self.model.warnings, *self.warnings],
            token_counter=self.model.token_counter,
            citations=list(self.citations or ()),
            supported=supported,
        )
