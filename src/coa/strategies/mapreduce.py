"""LLM x MapReduce: each chunk maps to extracted information, rationale, answer and a
confidence score; groups collapse until they fit; the reduce weighs answers by confidence."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, replace
from typing import Literal

from pydantic import Field

from coa.answers import is_refusal, majority, vote_key
from coa.models.base import Messages, truncate_to_tokens
from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.options import Options
from coa.strategies.toolbox import groups, item_costs, map_chunks, render
from coa.task import Task

_FIELD = re.compile(
    r"^\W*(extracted information|rationale|answer|confidence(?: score)?)\W*?:\s*(.*?)(?=^\W*(?:extracted information|rationale|answer|confidence(?: score)?)\W*?:|\Z)",
    re.IGNORECASE | re.MULTILINE | re.DOTALL,
)
MAX_CONFIDENCE = 5


@dataclass(frozen=True)
class Finding:
    information: str
    rationale: str
    answer: str
    confidence: int

    @property
    def empty(self) -> bool:
        """No information and no answer: the chunk had nothing for the task."""
        return is_refusal(self.information) and is_refusal(self.answer)


def read_finding(text: str) -> Finding:
    """The structured map or collapse output; missing fields are empty, confidence 0."""
    values: dict[str, str] = {}
    for label, value in _FIELD.findall(text):
        label = label.lower()
        key = "confidence" if label.startswith("confidence") else {"extracted information": "information"}.get(label, label)
        values.setdefault(key, value.strip())
    number = re.search(r"\d+", values.get("confidence", ""))
    confidence = min(MAX_CONFIDENCE, int(number.group())) if number else 0
    if not values:  # no structure at all: the whole output is the information
        values["information"] = text.strip()
    return Finding(values.get("information", ""), values.get("rationale", ""), values.get("answer", ""), confidence)


def shortened(session: Session, finding: Finding, tokens: int) -> Finding:
    """The finding within about `tokens` tokens: half for the information, a quarter each for the rest."""
    def cut(text: str, share: int) -> str:
        return truncate_to_tokens(session.model, text, max(1, share))

    return replace(finding, information=cut(finding.information, tokens // 2),
                   rationale=cut(finding.rationale, tokens // 4), answer=cut(finding.answer, tokens // 4))


class MapReduceOptions(Options):
    reduce: Literal["llm", "vote"] = Field("llm", description="vote: answers weighted by confidence, no reduce call")


@register
class MapReduce(Strategy):
    name = "mapreduce"
    description = "LLM x MapReduce: structured map (info, rationale, answer, confidence), collapse, confidence-weighted reduce"
    Options = MapReduceOptions

    async def solve(self, session: Session, task: Task):
        limit = session.window.cu_tokens
        chunks = session.window.chunks(task, session.window.text_budget(self._map(session, task, ""), limit, "map"))
        calls = await map_chunks(session, "worker", chunks, lambda _, chunk: self._map(session, task, chunk.text), limit)
        findings = []
        for call in calls:
            finding = read_finding(call.output)
            call.note = "dropped: no information" if finding.empty else f"confidence {finding.confidence}"
            if not finding.empty:
                findings.append(finding)
        mapped = len(findings)
        if self.options.reduce == "vote":
            keys = [vote_key(task.kind, f.answer, len(task.choices)) for f in findings]
            answer = majority([f.answer for f in findings], keys, [f.confidence for f in findings])
            return answer, {"chunks": len(chunks), "kept": mapped, "collapse_levels": 0}
        _, answer_limit = session.window.split(self._reduce(session, task, []), task, "reduce")
        collapse_room = session.window.text_budget(self._collapse(session, task, []), limit, "collapse")
        levels = 0
        while len(findings) > 1 and session.window.room(self._reduce(session, task, findings), answer_limit) < 0:
            render = lambda items: self._collapse(session, task, items)  # noqa: E731
            batches = groups(item_costs(session, render, findings), collapse_room)
            session.plan("collapse", len(batches))
            findings = list(await asyncio.gather(*(
                self._collapse_batch(session, task, [findings[j] for j in batch], i, limit, collapse_room)
                for i, batch in enumerate(batches)
            )))
            levels += 1
        ranked = sorted(findings, key=lambda f: -f.confidence)  # stable: ties keep document order
        session.plan("manager", 1)
        call = await session.call("manager", 0, self._reduce(session, task, ranked), answer_limit)
        return call.output, {"chunks": len(chunks), "kept": mapped, "collapse_levels": levels}

    async def _collapse_batch(
        self, session: Session, task: Task, batch: list[Finding], index: int, limit: int, room: int
    ) -> Finding:
        if len(batch) == 1:
            return batch[0]
        render = lambda items: self._collapse(session, task, items)  # noqa: E731
        if sum(item_costs(session, render, batch)) > room:  # batches pair findings even when too big: cut them
            share = room // len(batch) - item_costs(session, render, [Finding("", "", "", 0)])[0]
            batch = [shortened(session, finding, max(share, 4)) for finding in batch]
        call = await session.call("collapse", index, self._collapse(session, task, batch), limit)
        return read_finding(call.output)

    @staticmethod
    def _map(session: Session, task: Task, chunk: str) -> Messages:
        return render(session, "mapreduce", "map", task, chunk=chunk)

    @staticmethod
    def _collapse(session: Session, task: Task, items: list[Finding]) -> Messages:
        return render(session, "mapreduce", "collapse", task, items=items)

    @staticmethod
    def _reduce(session: Session, task: Task, items: list[Finding]) -> Messages:
        return render(session, "mapreduce", "reduce", task, items=items)
