"""Retrieval, shared by the strategies that rank parts of a document against a question (rag,
recite, readagent's fallback, the chain's relevance order): word passages, BM25, and dense scores
from a backend that embeds."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from coa.errors import ConfigError
from coa.models.base import Embed, truncate_to_tokens
from coa.session import Session
from coa.strategies.options import Options, Place
from coa.strategies.toolbox import answer_messages
from coa.task import Kind, Task, query_text

PSEUDO_QUERY = "What is the summary of the whole text?"  # the paper's query for query-less tasks
_WORD = re.compile(r"\S+")


class RetrievalOptions(Options):
    retriever: Literal["bm25", "dense"] = Field("bm25", description="BM25, or embeddings from embed_model")
    chunk_words: int = Field(300, ge=1, description="words per passage")
    embed_model: str = Field("", description="dense: the embedding model's name on an OpenAI-compatible server")
    embed_url: str = Place(description="dense: that server's base URL, with the key --embed-api-key "
                           "(default: the chat model's server and key)")


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


async def retrieve(session: Session, task: Task, room: int, options: RetrievalOptions) -> Retrieval:
    """The passages that best match the task's query (a pseudo-query where it has none), best first
    while they fit in `room` tokens, then put back in document order."""
    passages = word_passages(task.document, options.chunk_words)
    query = task.query or (query_text(task) if task.kind is Kind.CODE else PSEUDO_QUERY)
    if options.retriever == "dense":
        scores = await dense_scores(session, [query, *passages], options)
    else:
        scores = bm25_scores(passages, query)
    chosen, used = [], 0
    ranked = sorted(range(len(passages)), key=lambda i: -scores[i])  # best first; ties in document order
    for i in ranked:
        tokens = session.window.tokens(passages[i])
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


async def dense_scores(session: Session, texts: list[str], options: RetrievalOptions) -> list[float]:
    """The cosine of each text after the first (the passages) with the first (the query)."""
    if not options.embed_model:
        raise ConfigError("dense retrieval needs --opt embed_model=NAME")
    if options.embed_url:  # the operator's embedding server, with its own key: the chat server's never goes there
        from coa.models.openai import embedding_server

        embed: Embed = embedding_server(options.embed_url, options.embed_model, session.config.embed_api_key).embed
    else:  # the backend's own server, where it has one
        embed = session.model.embedder(options.embed_model)
    vectors = np.array(await asyncio.to_thread(embed, texts), dtype=float)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    return (vectors[1:] @ vectors[0]).tolist()


async def answer_retrieved(session: Session, task: Task, options: RetrievalOptions) -> tuple[str, dict[str, Any]]:
    """rag: one call that answers from the passages retrieved for the task."""
    room, limit = session.window.split(answer_messages(session, task, ""), task, "rag")
    found = await retrieve(session, task, room, options)
    session.plan("reader", 1)
    call = await session.call("reader", 0, answer_messages(session, task, found.context), limit)
    return call.output, found.settings
