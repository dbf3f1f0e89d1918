"""Recite: retrieve-then-reason prompting. Passages are retrieved exactly as `rag` retrieves them;
one call then copies out, word for word, the sentences of those passages that bear on the question
and only then answers, in a fixed "Evidence: ... / Answer: ..." form. The answer part is returned,
the recited evidence is kept in the settings.

Reciting needs a question: summarize and code tasks fall back to `rag` itself (the same
retrieval and answering prompt), recorded as `recited: false`."""

from __future__ import annotations

import re

from pydantic import Field

from coa.fence import unfence
from coa.models.base import Messages
from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.retrieval import RetrievalOptions, answer_retrieved, retrieve
from coa.strategies.toolbox import render
from coa.task import Task

# "Answer:" at the start of a line or after a space, markdown emphasis allowed ("**Answer:**").
_ANSWER = re.compile(r"(?:^|(?<=\s))[*_#]*(?:final\s+)?answer[*_]*\s*:[*_]*", re.IGNORECASE)
_EVIDENCE = re.compile(r"^\W*evidence[*_]*\s*:[*_]*", re.IGNORECASE)


class ReciteOptions(RetrievalOptions):
    evidence_tokens: int = Field(256, ge=16, le=4096,
                                 description="generation room for the recited sentences, on top of the answer's")


@register
class Recite(Strategy):
    name = "recite"
    description = "Retrieve-then-reason: rag's passages; one call recites the relevant sentences, then answers"
    Options = ReciteOptions

    async def solve(self, session: Session, task: Task):
        if not task.kind.needs_query:  # nothing to recite evidence for: rag as it is
            answer, settings = await answer_retrieved(session, task, self.options)
            return answer, {**settings, "recited": False, "evidence": "", "parsed": None}
        empty = recite_messages(session, task, "")
        wanted = session.window.answer_tokens(task) + self.options.evidence_tokens
        room, limit = session.window.split(empty, task, "recite", wanted)
        found = await retrieve(session, task, room, self.options)
        session.plan("reader", 1)
        call = await session.call("reader", 0, recite_messages(session, task, found.context), limit)
        evidence, answer, parsed = read_recital(call.output)
        if parsed != "marker":
            call.note = f"no Answer: line; the {parsed} taken as the answer"
        return answer, {**found.settings, "recited": True, "evidence": evidence, "parsed": parsed}


def recite_messages(session: Session, task: Task, passages: str) -> Messages:
    return render(session, "recite", "answer", task, document=passages)


def read_recital(output: str) -> tuple[str, str, str]:
    """(evidence, answer, how the answer was found): the text after the last "Answer:" marker;
    without one, the last non-empty line (a recital cut short) or the whole output."""
    text = unfence(output).strip()
    markers = list(_ANSWER.finditer(text))
    if markers:
        last = markers[-1]
        return _evidence(text[: last.start()]), text[last.end() :].strip(), "marker"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1:
        return _evidence("\n".join(lines[:-1])), lines[-1], "last line"
    return "", _EVIDENCE.sub("", text).strip(), "whole output"


def _evidence(text: str) -> str:
    return _EVIDENCE.sub("", text.strip()).strip()
