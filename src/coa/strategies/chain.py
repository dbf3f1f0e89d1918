"""Chain of Agents: workers read the chunks in order, passing a communication
unit (CU) forward; a manager answers from the last CU alone."""

from __future__ import annotations

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

    async def solve(self, session: Session, task: Task):
        options: ChainOptions = self.options
        max_tokens = manager_tokens(session, task) if options.manager else 0
        chain = await run_chain(session, task, options, seed=self.config.seed)
        answer = await manage(session, task, chain.cu, max_tokens) if options.manager else chain.cu
        return answer, {
            "max_cu_tokens": cu_limit(session),
            "chunk_tokens": chain.budget,
            "rechunks": chain.rechunks,
            "grounding": grounding_for(options, task),
        }


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
    limit = cu_limit(session)
    chain = Chain(budget=chunk_budget(session, task))
    asked = " ".join([query_text(task), *task.choices]) if grounding_for(options, task) else None  # grounding's question
    queue = deque(ordered(session.chunks(task, chain.budget), options.order, seed or 0))
    done = 0
    while queue:
        chunk = queue.popleft()
        if chunk.tokens > chain.budget:  # the budget shrank after an overflow
            queue.extendleft(reversed(session.chunks(task, chain.budget, within=chunk)))
            continue
        session.plan("worker", done + len(queue) + 1)
        previous = truncate_to_tokens(session.model, chain.cu, limit)
        messages = worker_messages(session, task, chunk.text, previous, done + 1, done + len(queue) + 1)
        try:
            call = await session.call(
                "worker", done, messages, limit, span=chunk.span, temperature=temperature, seed=seed, path=path
            )
        except ContextOverflowError:
            # The server's window is smaller than we were told: re-split smaller and go on.
            chain.budget = int(chain.budget * RECHUNK_FACTOR)
            chain.rechunks += 1
            if chain.rechunks > MAX_RECHUNKS or chain.budget < MIN_CHUNK_TOKENS:
                raise
            queue.appendleft(chunk)
            continue
        chain.cu, call.note = next_cu(call.output.strip(), previous, chunk.text, asked, guard=options.guard)
        call.cu = chain.cu
        done += 1
    return chain


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
