"""RAG: the passages that best match the query, in document order, until the window is full."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from coa.errors import ConfigError
from coa.models.base import Model, truncate_to_tokens
from coa.strategies.base import Session, Strategy, answer_messages, query_text, register
from coa.strategies.options import Options, Place
from coa.task import Kind, Task

PSEUDO_QUERY = "What is the summary of the whole text?"  # the paper's query for query-less tasks
_WORD = re.compile(r"\S+")


class RagOptions(Options):
    retriever: Literal["bm25", "dense"] = Field("bm25", description="BM25, or embeddings from embed_model")
    chunk_words: int = Field(300, ge=1, description="words per passage")
    embed_model: str = Field("", description="dense: the embedding model's name on an OpenAI-compatible server")
    embed_url: str = Place(description="dense: that server's base URL, with the key --embed-api-key "
                           "(default: the chat model's server and key)")


@register
class Rag(Strategy):
    name = "rag"
    description = "Retrieval: 300-word passages ranked by BM25 (or dense embeddings), best ones in document order"
    Options = RagOptions

    async def solve(self, session: Session, task: Task):
        room, limit = session.split_room(answer_messages(session, task, ""), task, "rag")
        found = await retrieve(session, task, room, self.options)
        session.plan("reader", 1)
        call = await session.call("reader", 0, answer_messages(session, task, found.context), limit)
        return call.output, found.settings


@dataclass(frozen=True)
class Retrieval:
    """The passages of a document and those chosen for a query, in document order."""

    query: str
    passages: list[str]
    chosen: list[int]

    @property
    def context(self) -> str:
        return "\n\n".join(self.passages[i].strip() for i in self.chosen)

    @property
    def settings(self) -> dict[str, Any]:
        return {"query": self.query, "passages": len(self.passages), "retrieved": list(self.chosen)}


async def retrieve(session: Session, task: Task, room: int, options: RagOptions) -> Retrieval:
    """The passages that best match the task's query (a pseudo-query where it has none), best first
    while they fit in `room` tokens, then put back in document order."""
    passages = word_passages(task.document, options.chunk_words)
    query = task.query or (query_text(task) if task.kind is Kind.CODE else PSEUDO_QUERY)
    if options.retriever == "dense":
        scores = await dense_scores(passages, query, options, session.model, session.config.embed_api_key)
    else:
        scores = bm25_scores(passages, query)
    chosen, used = [], 0
    ranked = sorted(range(len(passages)), key=lambda i: -scores[i])  # best first; ties in document order
    for i in ranked:
        tokens = session.tokens(passages[i])
        if used + tokens <= room:
            chosen.append(i)
            used += tokens
    if not chosen and ranked:  # every passage is longer than the window (a text without spaces): cut the best
        best = ranked[0]
        passages[best] = truncate_to_tokens(session.model, passages[best], room)
        chosen = [best]
        session.warnings.append(f"retrieval: every passage is longer than the {room:,} tokens the window leaves; "
                                "the best one was cut to fit")
    return Retrieval(query, passages, sorted(chosen))


def word_passages(text: str, words: int) -> list[str]:
    """Consecutive slices of `text` holding `words` words each (the last may hold fewer)."""
    starts = [m.start() for m in _WORD.finditer(text)][::words]
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)], strict=False)]


def bm25_scores(passages: list[str], query: str) -> list[float]:
    import bm25s

    corpus = bm25s.tokenize(passages, stopwords="en", show_progress=False)
    if not corpus.vocab:  # only stop words and one-letter words: nothing to match, and bm25s cannot index it
        return [0.0] * len(passages)
    index = bm25s.BM25()
    index.index(corpus, show_progress=False)
    terms = bm25s.tokenize(query, stopwords="en", return_ids=False, show_progress=False)[0]
    return index.get_scores(terms).tolist() if terms else [0.0] * len(passages)


async def dense_scores(passages: list[str], query: str, options: RagOptions, model: Model,
                       embed_key: str | None = None) -> list[float]:
    import asyncio

    from coa.models.openai import OpenAIModel

    if not options.embed_model:
        raise ConfigError("dense retrieval needs --opt embed_model=NAME")
    if options.embed_url:
        # Its own key only: the chat server's key never goes to another host.
        embedder = OpenAIModel(options.embed_model, base_url=options.embed_url, api_key=embed_key)
    elif isinstance(model, OpenAIModel):
        embedder = model.with_model(options.embed_model)  # the chat server and key: the passages go nowhere else
    else:
        raise ConfigError(f"dense retrieval with {model.name}, which is not on a server, needs --opt embed_url=URL")
    vectors = np.array(await asyncio.to_thread(embedder.embed, [query, *passages]), dtype=float)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    return (vectors[1:] @ vectors[0]).tolist()
