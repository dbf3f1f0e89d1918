"""Merge: every chunk answered on its own, the answers combined by vote or by a manager."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from coa.answers import is_refusal, majority, vote_key
from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.options import Options
from coa.strategies.toolbox import answer_messages, combine_with_manager, map_chunks
from coa.task import Kind, Task


class MergeOptions(Options):
    combine: Literal["auto", "vote", "manager"] = Field(
        "auto", description="auto: a vote on short answers, a manager call for summaries")


@register
class Merge(Strategy):
    name = "merge"
    description = "Each chunk answered independently; majority vote (short answers) or a manager call (summaries)"
    Options = MergeOptions

    async def solve(self, session: Session, task: Task):
        budget, limit = session.window.split(answer_messages(session, task, ""), task, "merge worker")
        chunks = session.window.chunks(task, budget)
        calls = await map_chunks(session, "worker", chunks, lambda _, chunk: answer_messages(session, task, chunk.text), limit)
        answers = [call.output.strip() for call in calls]
        combine = self.options.combine
        if combine == "auto":
            combine = "manager" if task.kind is Kind.SUMMARIZE else "vote"
        if combine == "vote":
            counted = [i for i, a in enumerate(answers) if not is_refusal(a)] or list(range(len(answers)))
            for i, call in enumerate(calls):
                call.note = "vote: counted" if i in counted else "vote: a refusal, not counted"
            keys = [vote_key(task.kind, answers[i], len(task.choices)) for i in counted]
            return majority([answers[i] for i in counted], keys), {"combine": combine, "chunks": len(chunks)}
        return await combine_with_manager(session, task, answers), {"combine": combine, "chunks": len(chunks)}
