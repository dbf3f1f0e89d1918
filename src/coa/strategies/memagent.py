"""MemAgent (Yu et al. 2025): a memory of fixed size, overwritten chunk by chunk. Each call sees
the question, the current memory and the next chunk, and writes the complete new memory, which
replaces the old one (cut to `memory_tokens`); the answer call sees only the memory and the question.

It differs from `coa` in its prompts (the memory is re-written as a whole, keeping what still
matters, rather than evidence passed along and extended) and in that the memory is a fixed
budget re-written at each step: no refusal guard and no grounding judge what a step writes;
only an empty reply keeps the old memory. Questions only (qa, mcq)."""

from __future__ import annotations

from functools import partial

from pydantic import Field

from coa.fence import unfence
from coa.models.base import Messages, truncate_to_tokens
from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.options import Options
from coa.strategies.toolbox import questions_only, render
from coa.task import Call, Task

WORDS_PER_TOKEN = 0.75  # the memory's size is told to the model in words, which it can judge


class MemAgentOptions(Options):
    memory_tokens: int | None = Field(None, ge=16, description="the memory's size in tokens; auto: the CU limit (--max-cu-tokens)")


@register
class MemAgent(Strategy):
    name = "memagent"
    description = "MemAgent: a fixed-size memory re-written chunk by chunk; the answer from the memory alone"
    Options = MemAgentOptions

    async def solve(self, session: Session, task: Task):
        questions_only(self.name, task)
        size = self.options.memory_tokens or session.window.cu_tokens
        # Checked before any update runs, so that a window too small fails fast.
        answer_tokens = session.window.answer_limit(manager_messages(session, task, ""), task, reserve=size)
        # A one-character memory stands in for the real one, so that its fence's tags are counted too.
        budget = session.window.text_budget(update_messages(session, task, "", "x", size, 1, 1), 2 * size, "memory update")
        chunks = session.window.chunks(task, budget)
        memory = ""
        session.plan("worker", len(chunks))
        for i, chunk in enumerate(chunks):
            messages = update_messages(session, task, chunk.text, memory, size, i + 1, len(chunks))
            call = await session.call("worker", i, messages, size, span=chunk.span,
                                      then=partial(keep_memory, session=session, previous=memory, size=size))
            memory = call.cu or ""
        session.plan("manager", 1)
        call = await session.call("manager", 0, manager_messages(session, task, memory), answer_tokens)
        return call.output, {"memory_tokens": size, "chunks": len(chunks), "chunk_tokens": budget}


def keep_memory(call: Call, *, session: Session, previous: str, size: int) -> None:
    call.cu, call.note = next_memory(session, call.output, previous, size)


def next_memory(session: Session, output: str, previous: str, size: int) -> tuple[str, str | None]:
    """The memory passed on, within `size` tokens, and a note where it is not the reply as written."""
    memory = unfence(output).strip()
    if not memory:
        return previous, "empty reply: memory kept"
    cut = truncate_to_tokens(session.model, memory, size)
    return cut, None if cut == memory else "memory cut to memory_tokens"


def update_messages(session: Session, task: Task, chunk: str, memory: str, size: int, index: int, total: int) -> Messages:
    return render(session, "memagent", "update", task, chunk=chunk, memory=memory,
                  words=max(1, int(size * WORDS_PER_TOKEN)), index=index, total=total)


def manager_messages(session: Session, task: Task, memory: str) -> Messages:
    return render(session, "memagent", "answer", task, memory=memory)
