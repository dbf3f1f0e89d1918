"""Chain of Agents: workers read the chunks in order, passing a communication
unit (CU) forward; a manager answers from the last CU alone."""

from __future__ import annotations

import asyncio
import os
import random
from collections import deque
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from coa.answers import is_refusal
from coa.budget import MIN_CHUNK_TOKENS
from coa.chunking import Chunk
from coa.errors import ContextOverflowError
from coa.fence import unfence
from coa.grounding import grounded
from coa.models.base import Messages, truncate_to_tokens
from coa.strategies.base import Session, Strategy, query_text, register
from coa.strategies.options import Options
from coa.task import Task

RECHUNK_FACTOR = 0.75  # after an overflow, chunks are re-split this much smaller
MAX_RECHUNKS = 3

Order = Literal["ltr", "rtl", "perm"]


class ChainOptions(Options):
    order: Order = Field("ltr", description="workers left to right, right to left, or in a permutation seeded by --seed")
    manager: bool = Field(True, description="false: the last worker's CU is the answer (the paper's ablation)")
    guard: bool = Field(True, description="a refusal-only worker output does not replace the CU (chain collapse)")
    grounding: bool | None = Field(None, description="keep only CU sentences the sources support; auto: on for QA kinds")
    prefetch: bool = Field(False, description="while a worker runs, a free server slot evaluates the next chunk "
                           "(llama-server with -np 2 or more)")


@dataclass
class Chain:
    """One pass of workers over the chunks, and what it produced."""

    cu: str = ""
    rechunks: int = 0
    budget: int = 0


@register
class ChainOfAgents(Strategy):
    name = "coa"
    description = "Chain of Agents: workers pass a communication unit along the chunks, a manager answers"
    Options = ChainOptions

    async def solve_many(self, runs: list[tuple[Session, Task]]) -> list[tuple[str, dict]]:
        """Questions over one document share one pass over its chunks (see `run_chains`)."""
        if len({task.document for _, task in runs}) > 1:
            return await super().solve_many(runs)
        options: ChainOptions = self.options
        limits = [manager_tokens(session, task) if options.manager else 0 for session, task in runs]
        chains = await run_chains(runs, options, seed=self.config.seed)
        outcomes = []
        for (session, task), chain, max_tokens in zip(runs, chains, limits, strict=True):
            answer = await manage(session, task, chain.cu, max_tokens) if options.manager else chain.cu
            outcomes.append((answer, {
                "max_cu_tokens": cu_limit(session),
                "chunk_tokens": chain.budget,
                "rechunks": chain.rechunks,
                "grounding": grounding_for(options, task),
            }))
        return outcomes


def cu_limit(session: Session) -> int:
    return session.config.cu_limit(session.window)


def grounding_for(options: ChainOptions, task: Task) -> bool:
    return options.grounding if options.grounding is not None else task.kind.needs_query


def worker_messages(session: Session, task: Task, chunk: str, previous: str, index: int, total: int) -> Messages:
    return session.prompt("coa", "worker", task.kind).render(
        chunk=chunk, previous=previous, query=query_text(task), choices=task.lettered_choices, index=index, total=total
    )


def chunk_budget(session: Session, task: Task) -> int:
    limit = cu_limit(session)
    # A one-character CU stands in for the real one, so that its fence's tags are counted too.
    return session.budget(worker_messages(session, task, "", "x", 1, 1), 2 * limit, "worker")  # CU in + CU out


def ordered(chunks: list[Chunk], order: Order, seed: int) -> list[Chunk]:
    if order == "rtl":
        return chunks[::-1]
    if order == "perm":
        return random.Random(seed).sample(chunks, len(chunks))
    return chunks


async def run_chain(
    session: Session,
    task: Task,
    options: ChainOptions,
    *,
    seed: int | None = None,
    temperature: float | None = None,
    path: int | None = None,
) -> Chain:
    """Workers over the chunks in the chosen order; `seed` orders a permutation and seeds sampling."""
    return (await run_chains([(session, task)], options, seed=seed, temperature=temperature, path=path))[0]


async def run_chains(
    runs: list[tuple[Session, Task]],
    options: ChainOptions,
    *,
    seed: int | None = None,
    temperature: float | None = None,
    path: int | None = None,
) -> list[Chain]:
    """One chain per (session, task), all over the same document and the same chunks, chunk-major:
    every task's worker reads chunk i before any reads chunk i+1. Worker prompts begin with the
    system text and the chunk, so a backend that keeps the prompt prefix it last evaluated
    (llama.cpp does, in-process and per server slot) reads each chunk once for all the questions."""
    session, task = runs[0]
    limit = cu_limit(session)
    budget = min(chunk_budget(s, t) for s, t in runs)  # the longest question sets the chunks for all
    chains = [Chain(budget=budget) for _ in runs]
    asked = [" ".join([query_text(t), *t.choices]) if grounding_for(options, t) else None for _, t in runs]
    read: list[list[tuple[int, int]]] = [[] for _ in runs]  # spans each chain has read: an overflow re-splits mid-step
    queue = deque(ordered(session.chunks(task, budget), options.order, seed or 0))
    done = 0
    while queue:
        chunk = queue.popleft()
        if chunk.tokens > budget:  # the budget shrank after an overflow
            queue.extendleft(reversed(session.chunks(task, budget, within=chunk)))
            continue
        total = done + len(queue) + 1
        ahead = asyncio.create_task(prefetch(session, task, queue[0], done + 2, total)) if options.prefetch and queue else None
        try:
            for (s, t), chain, spans, question in zip(runs, chains, read, asked, strict=True):
                if any(a <= chunk.start and chunk.end <= b for a, b in spans):
                    continue
                s.plan("worker", total)
                previous = truncate_to_tokens(s.model, chain.cu, limit)
                messages = worker_messages(s, t, chunk.text, previous, done + 1, total)
                call = await s.call(
                    "worker", done, messages, limit, span=chunk.span, temperature=temperature, seed=seed, path=path
                )
                chain.cu, call.note = next_cu(call.output, previous, chunk.text, question, guard=options.guard)
                call.cu = chain.cu
                spans.append((chunk.start, chunk.end))
        except ContextOverflowError:
            if ahead is not None:
                ahead.cancel()
            # The server's window is smaller than we were told: re-split smaller and go on.
            budget = int(budget * RECHUNK_FACTOR)
            for chain in chains:
                chain.budget, chain.rechunks = budget, chain.rechunks + 1
            if chains[0].rechunks > MAX_RECHUNKS or budget < MIN_CHUNK_TOKENS:
                raise
            queue.appendleft(chunk)
            continue
        if ahead is not None:
            await ahead  # the next chunk is in a slot's cache before its worker asks
        done += 1
    return chains


async def prefetch(session: Session, task: Task, chunk: Chunk, position: int, total: int) -> None:
    """Evaluate the part of `chunk`'s worker prompt (the worker at `position`) before the CU (the system
    text, the chunk and, for QA, the question) into a free slot, while the current worker runs.
    The part is found as what two renderings with different CUs share."""
    index = len([c for c in session.calls if c.role == "prefetch"])
    with_none, with_cu = (worker_messages(session, task, chunk.text, cu, position, total) for cu in ("", "x"))
    shared = os.path.commonprefix([with_none[-1]["content"], with_cu[-1]["content"]])
    if shared:
        await session.prefill("prefetch", index, [*with_none[:-1], {**with_none[-1], "content": shared}])


def next_cu(output: str, previous: str, chunk: str, asked: str | None, *, guard: bool) -> tuple[str, str | None]:
    """The CU a worker passes on, and a note when a guard changed it; `asked`: the question to ground against, or None."""
    output = unfence(output).strip()
    if guard and is_refusal(output):
        return previous, "collapse guard: refusal kept out of the CU"
    if asked is not None:
        kept = grounded(output, [chunk, previous], asked)
        if not kept:
            return previous, "grounding: no sentence found in the sources, previous CU kept"
        if kept != output:
            return kept, "grounding: unsupported sentences dropped"
    return output, None


def manager_messages(session: Session, task: Task, summary: str) -> Messages:
    return session.prompt("coa", "manager", task.kind).render(
        summary=summary, query=query_text(task), choices=task.lettered_choices, requirement=session.format(task).requirement
    )


def manager_tokens(session: Session, task: Task) -> int:
    """The manager's generation limit; checked before any worker runs, so a window too small fails fast."""
    return session.answer_limit(manager_messages(session, task, ""), task, reserve=cu_limit(session))


async def manage(
    session: Session, task: Task, cu: str, max_tokens: int, *,
    seed: int | None = None, temperature: float | None = None, path: int | None = None,
) -> str:
    """The manager's answer from the last CU, the query and the task requirement."""
    summary = truncate_to_tokens(session.model, cu, cu_limit(session))
    session.plan("manager", 1)
    messages = manager_messages(session, task, summary)
    call = await session.call("manager", 0, messages, max_tokens, seed=seed, temperature=temperature, path=path)
    return call.output
