"""Chain of Agents: workers read the chunks in order, passing a communication
unit (CU) forward; a manager answers from the last CU alone."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from coa.chunking import Chunk, chunk_text
from coa.config import Config
from coa.errors import ConfigError, ContextOverflowError
from coa.grounding import grounded
from coa.models.base import Completion, Messages, Model, count_prompt, truncate_to_tokens
from coa.prompts import Prompt, load_prompt
from coa.strategies.base import Observer, Progress, ignore
from coa.task import Call, Kind, Result, Task

MIN_CHUNK_TOKENS = 32  # below this a worker sees too little text to be worth a call
MIN_ANSWER_TOKENS = 16
SAFETY_TOKENS = 16  # joining a chunk into a template can shift counts by a few tokens
RECHUNK_FACTOR = 0.75  # after an overflow the rest of the document is re-split this much smaller
MAX_RECHUNKS = 3
CODE_QUERY_LINES = 20


@dataclass(frozen=True)
class Plan:
    window: int
    cu_limit: int
    budget: int  # tokens of source text per worker
    answer_limit: int  # tokens the manager may write


class ChainOfAgents:
    name = "coa"

    def __init__(self, model: Model, config: Config = Config(), observer: Observer = ignore) -> None:
        self.model = model
        self.config = config
        self.observer = observer

    def prompts(self, kind: Kind) -> tuple[Prompt, Prompt]:
        directory = self.config.prompts_dir
        return load_prompt("coa", "worker", kind, directory), load_prompt("coa", "manager", kind, directory)

    def plan(self, task: Task) -> Plan:
        """Token budgets such that no prompt plus its output can exceed the window."""
        window = min(self.config.window, self.model.context_window)
        cu_limit = self.config.cu_limit(window)
        worker, manager = self.prompts(task.kind)
        overhead = count_prompt(self.model, self._worker_messages(worker, task, "", "", 1, 1))
        budget = window - overhead - 2 * cu_limit - SAFETY_TOKENS  # incoming CU + generated CU
        if budget < MIN_CHUNK_TOKENS:
            raise ConfigError(
                f"window {window} is too small: the worker prompt takes {overhead} tokens and the CU "
                f"{cu_limit} in and {cu_limit} out, leaving {max(budget, 0)} for text; "
                "use a larger --window or a smaller --max-cu-tokens"
            )
        manager_overhead = count_prompt(self.model, self._manager_messages(manager, task, ""))
        room = window - manager_overhead - cu_limit - SAFETY_TOKENS
        if room < MIN_ANSWER_TOKENS:
            raise ConfigError(
                f"window {window} is too small for the manager prompt ({manager_overhead} tokens) "
                f"and a {cu_limit}-token CU; use a larger --window or a shorter requirement"
            )
        return Plan(window, cu_limit, budget, min(manager.max_tokens or cu_limit, room))

    def run(self, task: Task) -> Result:
        started = time.perf_counter()
        plan = self.plan(task)
        worker, manager = self.prompts(task.kind)
        lines = task.kind is Kind.CODE
        grounding = self.config.grounding if self.config.grounding is not None else task.kind.needs_query
        chunks = chunk_text(task.document, plan.budget, self.model.count_tokens, lines=lines)
        calls: list[Call] = []
        cu, position, budget, rechunks = "", 0, plan.budget, 0
        while len(calls) < len(chunks):
            i = len(calls)
            chunk = chunks[i]
            self.observer(Progress("worker", i, len(chunks)))
            previous = truncate_to_tokens(self.model, cu, plan.cu_limit)
            messages = self._worker_messages(worker, task, chunk.text, previous, i + 1, len(chunks))
            try:
                completion = self._complete(messages, plan.cu_limit, plan.window)
            except ContextOverflowError:
                # Re-split what is left smaller and carry on with the CU built so far.
                budget = int(budget * RECHUNK_FACTOR)
                rechunks += 1
                if rechunks > MAX_RECHUNKS or budget < MIN_CHUNK_TOKENS:
                    raise
                rest = chunk_text(task.document[chunk.start :], budget, self.model.count_tokens, lines=lines)
                chunks = chunks[:i] + [_shifted(c, chunk.start) for c in rest]
                continue
            cu = completion.text.strip()
            if grounding:  # unsupported sentences are dropped; with none left, the old CU carries on
                cu = grounded(cu, [chunk.text, previous]) or previous
            call = _call("worker", i, completion, messages, span=(position, position + chunk.tokens))
            call.cu = cu
            position += chunk.tokens
            calls.append(call)
            self.observer(Progress("worker", i, len(chunks), call))

        self.observer(Progress("manager", 0, 1))
        messages = self._manager_messages(manager, task, truncate_to_tokens(self.model, cu, plan.cu_limit))
        completion = self._complete(messages, plan.answer_limit, plan.window)
        call = _call("manager", 0, completion, messages)
        calls.append(call)
        self.observer(Progress("manager", 0, 1, call))
        return Result(
            answer=clean_answer(task.kind, completion.text),
            strategy=self.name,
            model=self.model.name,
            window=plan.window,
            kind=task.kind,
            calls=calls,
            seconds=time.perf_counter() - started,
            settings={
                "max_cu_tokens": plan.cu_limit,
                "chunk_tokens": budget,
                "rechunks": rechunks,
                "temperature": self.config.temperature,
                "seed": self.config.seed,
                "grounding": grounding,
            },
        )

    def _complete(self, messages: Messages, max_tokens: int, window: int) -> Completion:
        needed = count_prompt(self.model, messages) + max_tokens
        if needed > window:  # never send what cannot fit; the caller re-chunks
            raise ContextOverflowError(f"prompt and output need {needed} tokens, the window is {window}")
        return self.model.complete(
            messages, max_tokens=max_tokens, temperature=self.config.temperature, seed=self.config.seed
        )

    @staticmethod
    def _worker_messages(prompt: Prompt, task: Task, chunk: str, previous: str, index: int, total: int) -> Messages:
        return prompt.render(
            chunk=chunk,
            previous=previous,
            query=_query(task),
            choices=task.lettered_choices,
            index=index,
            total=total,
        )

    @staticmethod
    def _manager_messages(prompt: Prompt, task: Task, summary: str) -> Messages:
        return prompt.render(
            summary=summary,
            query=_query(task),
            choices=task.lettered_choices,
            requirement=task.requirement or prompt.requirement or "",
        )


def _query(task: Task) -> str:
    if task.kind is Kind.CODE and not task.query:
        return "".join(task.document.splitlines(keepends=True)[-CODE_QUERY_LINES:])
    return task.query or ""


def _shifted(chunk: Chunk, offset: int) -> Chunk:
    return replace(chunk, start=chunk.start + offset, end=chunk.end + offset)


def _call(role: str, index: int, completion: Completion, messages: Messages, span=None) -> Call:
    return Call(
        role=role,
        index=index,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        seconds=completion.seconds,
        output=completion.text,
        span=span,
        messages=messages,
        finish_reason=completion.finish_reason,
    )


def clean_answer(kind: Kind, text: str) -> str:
    """The answer as a user wants it: trimmed; for code, the first line of code."""
    text = text.strip()
    if kind is Kind.CODE:
        lines = [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("```")]
        return lines[0] if lines else ""
    return text
