"""Hierarchical: workers judge whether their chunk is useful and answer from it; useful
outputs are merged up a tree whose fan-in fits the window; the root answers."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from coa.answers import is_refusal
from coa.models.base import Messages
from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.toolbox import (
    combine_messages,
    combine_with_manager,
    fit_notes,
    groups,
    item_costs,
    map_chunks,
    render,
)
from coa.task import Task

_USEFUL = re.compile(r"useful\s*[:=\-]?\s*\**\s*(yes|no)\b", re.IGNORECASE)


@register
class Hierarchical(Strategy):
    name = "hierarchical"
    description = "Workers flag useful chunks and take notes; notes merge up a tree; the root answers"

    async def solve(self, session: Session, task: Task):
        limit = session.window.cu_tokens
        chunks = session.window.chunks(task, session.window.text_budget(self._worker(session, task, ""), limit, "hierarchical worker"))
        calls = await map_chunks(session, "worker", chunks, lambda _, chunk: self._worker(session, task, chunk.text), limit)
        notes = []
        for call in calls:
            useful, note = read_worker(call.output)
            call.note = "useful" if useful else "not useful: left out of the tree"
            if useful:
                notes.append(note)
        useful_count = len(notes)
        notes = notes or [read_worker(c.output)[1] for c in calls]  # nothing flagged useful: keep all
        levels = 0
        merge_room = session.window.text_budget(self._merge(session, task, [""] * 2), limit, "hierarchical merge")
        _, root_limit = session.window.split(combine_messages(session, task, []), task, "root")
        while len(notes) > 1 and session.window.room(combine_messages(session, task, notes), root_limit) < 0:
            batches = groups(item_costs(session, lambda items: self._merge(session, task, items), notes), merge_room)
            session.plan("merge", len(batches))
            merged: list[Any] = await asyncio.gather(*(  # calls, and notes passed through alone
                session.call("merge", i, self._merge(session, task, fit_notes(session, [notes[j] for j in batch], merge_room)), limit)
                if len(batch) > 1 else _passthrough(notes[batch[0]])
                for i, batch in enumerate(batches)
            ))
            notes = [m if isinstance(m, str) else m.output.strip() for m in merged]
            levels += 1
        answer = await combine_with_manager(session, task, notes)
        return answer, {"useful_chunks": useful_count, "chunks": len(chunks), "merge_levels": levels}

    @staticmethod
    def _worker(session: Session, task: Task, chunk: str) -> Messages:
        return render(session, "hierarchical", "worker", task, chunk=chunk)

    @staticmethod
    def _merge(session: Session, task: Task, notes: list[str]) -> Messages:
        return render(session, "hierarchical", "merge", task, notes=notes)


async def _passthrough(note: str) -> str:
    return note


def read_worker(output: str) -> tuple[bool, str]:
    """(useful?, the notes) from a worker's output; without a flag, a refusal counts as not useful."""
    match = _USEFUL.search(output)
    notes = _USEFUL.sub("", output, count=1).strip(" \n:*-") if match else output.strip()
    if match:
        return match.group(1).lower() == "yes" and bool(notes), notes
    return not is_refusal(notes), notes
