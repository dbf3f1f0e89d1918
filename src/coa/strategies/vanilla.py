"""Vanilla: the task requirement, the document truncated to fit the window, the question."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from coa.models.base import truncate_to_tokens
from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.options import Options
from coa.strategies.toolbox import answer_messages
from coa.task import Task


class VanillaOptions(Options):
    truncate: Literal["middle", "head", "tail", "all"] = Field(
        "middle", description="the part of an overlong document dropped; all: the whole document, so the model answers "
        "from what it knows (the closed-book anchor: how much of a score needs no reading)")
    window: int | None = Field(None, ge=64, description="this strategy's own window (auto: the run's), e.g. one that "
                               "holds the whole document: the full-context anchor beside short-window strategies")


@register
class Vanilla(Strategy):
    name = "vanilla"
    description = "One call: the document truncated to fit the window (middle dropped, as LongBench), the question"
    Options = VanillaOptions

    async def solve(self, session: Session, task: Task):
        room, limit = session.window.split(answer_messages(session, task, ""), task, "vanilla")
        document = truncate(session, task.document, room, self.options.truncate)
        session.plan("reader", 1)
        call = await session.call("reader", 0, answer_messages(session, task, document), limit)
        return call.output, {"document_tokens": session.window.tokens(task.document), "kept_tokens": session.window.tokens(document)}


def truncate(session: Session, text: str, room: int, drop: str) -> str:
    """`text` within `room` tokens, dropping its middle, head or tail; nothing of it for `all`."""
    if drop == "all":
        return ""
    if session.window.tokens(text) <= room:
        return text
    if drop == "head":
        return truncate_to_tokens(session.model, text, room, keep="tail")
    if drop == "tail":
        return truncate_to_tokens(session.model, text, room, keep="head")
    head = truncate_to_tokens(session.model, text, room // 2, keep="head")
    return head + truncate_to_tokens(session.model, text[len(head) :], room - session.window.tokens(head), keep="tail")
