"""RAG: the passages that best match the query, in document order, until the window is full."""

from __future__ import annotations

from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.retrieval import RetrievalOptions, answer_retrieved
from coa.task import Task

RagOptions = RetrievalOptions


@register
class Rag(Strategy):
    name = "rag"
    description = "Retrieval: 300-word passages ranked by BM25 (or dense embeddings), best ones in document order"
    Options = RagOptions

    async def solve(self, session: Session, task: Task):
        return await answer_retrieved(session, task, self.options)
