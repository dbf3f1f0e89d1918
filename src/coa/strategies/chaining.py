"""The chain's pieces, shared by coa and coa-multipath: the options, the reading order, the
workers' steps over the chunks (the evidence CU, or the paper's written CU), re-chunking on
overflow, early exit and prefetch."""

from __future__ import annotations

import asyncio
import os
import random
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from pydantic import Field, FiniteFloat

from coa import evidence
from coa.answers import is_refusal
from coa.budget import MIN_CHUNK_TOKENS
from coa.chunking import Chunk
from coa.errors import ContextOverflowError, LimitError
from coa.fence import unfence
from coa.grounding import bears_on, cite, grounded, same
from coa.models.base import Messages, truncate_to_tokens
from coa.session import Session
from coa.strategies.options import Options
from coa.strategies.retrieval import bm25_scores
from coa.strategies.toolbox import render
from coa.task import Call, Citation, Kind, Task, query_text

RECHUNK_FACTOR = 0.75  # after an overflow, chunks are re-split this much smaller
MAX_RECHUNKS = 3
MAX_SHRINKS = 3  # a manager prompt refused as too long is retried with its CU shrunk this many times

Order = Literal["ltr", "rtl", "perm", "relevance"]


class ChainOptions(Options):
    cu: Literal["evidence", "paper"] = Field(
        "evidence", description="evidence: workers add what their chunk says for the question, kept in the document's "
        "words with its places (tasks with a question); paper: each worker rewrites the CU, as in the paper")
    order: Order = Field("ltr", description="workers left to right, right to left, in a permutation seeded by --seed, "
                         "or by relevance: the chunks that match the question best (BM25) last, nearest the manager")
    skip: FiniteFloat = Field(0.0, ge=0, le=1, description="chunks whose BM25 match with the question is below this share "
                              "of the best chunk's are not read (0: read every chunk)")
    focus: bool = Field(True, description="evidence CU, questions: the manager reads the evidence about the "
                        "question's subject and the lines linked to it, not lines that only share its common words")
    early_exit: int = Field(0, ge=0, description="stop once this many workers in a row left a CU that bears on the "
                            "question unchanged (0: never)")
    chunk_tokens: int | None = Field(None, ge=MIN_CHUNK_TOKENS, description="the most tokens of text a worker reads "
                                     "(auto: all the window leaves); smaller chunks are easier for a small model")
    cite: bool = Field(False, description="paper CU: the manager sees each quote of the CU with its place in the document")
    manager: bool = Field(True, description="false: the last worker's CU is the answer (the paper's ablation)")
    guard: bool | None = Field(None, description="paper CU: a refusal-only worker output does not replace the CU "
                               "(chain collapse); auto: off, as in the paper")
    grounding: bool | None = Field(None, description="paper CU: keep only CU sentences the sources support; auto: off, "
                                   "as in the paper")
    prefetch: bool = Field(False, description="while a worker runs, a free server slot evaluates the next chunk "
                           "(llama-server with -np 2 or more)")


@dataclass
class Chain:
    """One pass of workers over the chunks, and what it produced."""

    cu: str = ""
    rechunks: int = 0
    budget: int = 0
    citations: list[Citation] = field(default_factory=list)  # of the lines of `cu`; the evidence CU itself
    skipped: int = 0  # chunks not read: they did not match the question
    unchanged: int = 0  # workers in a row that left an answer-bearing CU as it was
    stopped: bool = False  # early exit
    saved: int = 0  # worker calls early exit saved
    limited: bool = False  # reading stopped at the run's limits (the manager answers from what was read)
    dropped: int = 0  # evidence lines dropped because the CU was full
    chosen: set[tuple[int, int]] = field(default_factory=set)  # spans of evidence a worker's own words brought in


def cu_limit(session: Session) -> int:
    return session.window.cu_tokens


def reply_tokens(session: Session) -> int:
    """An evidence worker's generation limit: a few sentences, never more than the CU holds."""
    return min(evidence.REPLY_TOKENS, cu_limit(session))


def uses_evidence(options: ChainOptions, task: Task) -> bool:
    """The evidence CU needs a question to look for evidence of; summaries without one and code
    completion keep the paper's written CU."""
    return options.cu == "evidence" and bool((task.query or "").strip()) and task.kind is not Kind.CODE


def grounding_for(options: ChainOptions, task: Task) -> bool:
    return bool(options.grounding) and task.kind.needs_query


def worker_messages(session: Session, task: Task, chunk: str, previous: str, index: int, total: int) -> Messages:
    return render(session, "coa", "worker", task, by_kind=True, chunk=chunk, previous=previous, index=index, total=total)


def evidence_messages(session: Session, task: Task, chunk: str, found: str) -> Messages:
    return render(session, "coa", "evidence-worker", task, chunk=chunk, evidence=found)


def chunk_budget(session: Session, task: Task, options: ChainOptions) -> int:
    limit = cu_limit(session)
    if uses_evidence(options, task):  # the evidence so far in, a few sentences out
        return session.window.text_budget(evidence_messages(session, task, "", "x"), limit + reply_tokens(session), "worker")
    # A one-character CU stands in for the real one, so that its fence's tags are counted too.
    return session.window.text_budget(worker_messages(session, task, "", "x", 1, 1), 2 * limit, "worker")  # CU in + CU out


def query_aware(options: ChainOptions) -> bool:
    return options.order == "relevance" or options.skip > 0


def reading(chunks: list[Chunk], options: ChainOptions, task: Task, seed: int) -> tuple[list[Chunk], int]:
    """The chunks to read, in reading order, and how many are skipped. Relevance is BM25 between each
    chunk and the question (with its options); a task without a query is read whole, left to right."""
    query = " ".join([task.query or "", *task.choices]).strip()
    if not query_aware(options) or not query or len(chunks) < 2:
        return ordered(chunks, "ltr" if options.order == "relevance" else options.order, seed), 0
    scores = bm25_scores([c.text for c in chunks], query)
    best = max(scores)
    kept = [i for i, score in enumerate(scores) if best <= 0 or score >= options.skip * best]
    if options.order == "relevance":  # the best match last, next to the manager; ties in document order
        return [chunks[i] for i in sorted(kept, key=lambda i: scores[i])], len(chunks) - len(kept)
    return ordered([chunks[i] for i in kept], options.order, seed), len(chunks) - len(kept)


def ordered(chunks: list[Chunk], order: str, seed: int) -> list[Chunk]:
    if order == "rtl":
        return chunks[::-1]
    if order == "perm":
        return random.Random(seed).sample(chunks, len(chunks))
    return chunks


def quoted(cu: str, citations: list[Citation]) -> str:
    """The CU for the manager with each quote's place in the document: "[chars 120-164] ..."."""
    places = {c.line.strip(): c for c in citations}
    return "\n".join(f"[chars {c.start}-{c.end}] {line}" if (c := places.get(line.strip())) else line
                     for line in cu.splitlines())


def asked(task: Task) -> str:
    """The question with its options: what evidence and relevance are measured against."""
    return " ".join([query_text(task), *task.choices])


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
    return (await run_chains([(session, task)], options, seed=seed, temperature=temperature, path=path))[0]


async def run_chains(
    runs: list[tuple[Session, Task]],
    options: ChainOptions,
    *,
    seed: int | None = None,
    temperature: float | None = None,
    path: int | None = None,
) -> list[Chain]:
    """One chain per (session, task), all over the same document and the same chunks, chunk-major:
    every task's worker reads chunk i before any reads chunk i+1. Worker prompts begin with the
    system text and the chunk, so a backend that keeps the prompt prefix it last evaluated
    (llama.cpp does, in-process and per server slot) reads each chunk once for all the questions."""
    session, task = runs[0]
    budget = min(chunk_budget(s, t, options) for s, t in runs)  # the longest question sets the chunks for all
    budget = min(budget, options.chunk_tokens or budget)
    chains = [Chain(budget=budget) for _ in runs]
    read: list[list[tuple[int, int]]] = [[] for _ in runs]  # spans each chain has read: an overflow re-splits mid-step
    chunks, skipped = reading(session.window.chunks(task, budget), options, task, seed or 0)
    for chain in chains:
        chain.skipped = skipped
    if options.manager:  # under a call or token limit, the manager can still answer from what was read
        for s, _ in runs:
            s.answer_reserve = s.window.size
    queue = deque(chunks)
    done = 0
    while queue:
        if all(chain.stopped or chain.limited for chain in chains):
            for chain in chains:
                chain.saved += len(queue) if chain.stopped else 0
            break
        chunk = queue.popleft()
        if chunk.tokens > budget:  # the budget shrank after an overflow
            queue.extendleft(reversed(session.window.chunks(task, budget, within=chunk)))
            continue
        total = done + len(queue) + 1
        ahead = asyncio.create_task(prefetch(session, task, queue[0], done + 2, total, options)) if options.prefetch and queue else None
        try:
            for (s, t), chain, spans in zip(runs, chains, read, strict=True):
                if chain.limited or any(a <= chunk.start and chunk.end <= b for a, b in spans):
                    continue
                if chain.stopped:
                    chain.saved += 1
                    continue
                s.plan("worker", total)
                step = evidence_step if uses_evidence(options, t) else paper_step
                try:
                    call = await step(s, t, chain, chunk, options, done, total, seed=seed, temperature=temperature,
                                      path=path)
                except LimitError as e:
                    if not spans or not options.manager:  # nothing read yet, or no manager to answer
                        raise
                    chain.limited = True
                    s.warnings.append(f"{e}: the answer is from the first {len(spans)} of {total} chunks")
                    continue
                cu = call.cu or ""
                if options.early_exit and t.kind.needs_query:
                    chain.unchanged = chain.unchanged + 1 if same(cu, chain.cu) and bears_on(cu, query_text(t)) else 0
                    chain.stopped = chain.unchanged >= options.early_exit
                chain.cu = cu
                spans.append((chunk.start, chunk.end))
        except ContextOverflowError:
            if ahead is not None:
                ahead.cancel()
            # The server's window is smaller than we were told: re-split smaller and go on.
            budget = int(budget * RECHUNK_FACTOR)
            for chain in chains:
                chain.budget, chain.rechunks = budget, chain.rechunks + 1
            if chains[0].rechunks > MAX_RECHUNKS or budget < MIN_CHUNK_TOKENS:
                raise
            queue.appendleft(chunk)
            continue
        if ahead is not None:
            await ahead  # the next chunk is in a slot's cache before its worker asks
        done += 1
    return chains


async def paper_step(session: Session, task: Task, chain: Chain, chunk: Chunk, options: ChainOptions, done: int,
                     total: int, **call_settings) -> Call:
    """A worker that writes the CU: it reads the chunk and the previous CU and writes the next."""
    limit = cu_limit(session)
    previous = truncate_to_tokens(session.model, chain.cu, limit)
    messages = worker_messages(session, task, chunk.text, previous, done + 1, total)
    question = asked(task) if grounding_for(options, task) else None
    passes = partial(pass_on, previous=previous, chunk=chunk.text, question=question, guard=bool(options.guard))
    call = await session.call("worker", done, messages, limit, span=chunk.span, then=passes, **call_settings)
    if task.kind.needs_query or (task.query or "").strip():  # the CU's lines the document holds are its citations
        chain.citations = cite(call.cu or "", chunk.text, chunk.start, chain.citations, done, asked(task))
    return call


async def evidence_step(session: Session, task: Task, chain: Chain, chunk: Chunk, options: ChainOptions, done: int,
                        total: int, **call_settings) -> Call:
    """A worker that writes what its chunk adds for the question; what the chunk grounds joins the
    evidence (copies in the document's words), and the least related lines leave a CU that outgrows
    its limit."""
    limit, question = cu_limit(session), asked(task)
    messages = evidence_messages(session, task, chunk.text, evidence.render(chain.citations))

    def passes(call: Call) -> None:
        new, unsupported = evidence.gather(unfence(call.output), task.document, chunk.start, chunk.end, question, done,
                                           chain.citations)
        taken = {(c.start, c.end) for c in [*chain.citations, *new]}
        matched: list[Citation] = []
        for _ in range(2):  # twice: both hops of a question may lie in one chunk
            for c in evidence.related(task.document, chunk.start, chunk.end, question,
                                      [*chain.citations, *new, *matched], done):
                if (c.start, c.end) not in taken:
                    taken.add((c.start, c.end))
                    matched.append(c)
        chain.chosen |= {(c.start, c.end) for c in new}
        new += matched
        kept, dropped = evidence.fit([*chain.citations, *new], limit, session.window.tokens, question, chain.chosen,
                                     evidence.subject_words(task.document, question))
        chain.citations, chain.dropped = kept, chain.dropped + dropped
        call.cu = evidence.render(kept)
        notes = [f"{len(new)} line(s) added" if new else "nothing new"]
        if matched:
            notes.append(f"{len(matched)} of them by their words")
        if unsupported:
            notes.append(f"{unsupported} sentence(s) the chunk does not hold dropped")
        if dropped:
            notes.append(f"CU full: {dropped} least related line(s) dropped")
        call.note = "; ".join(notes)

    return await session.call("worker", done, messages, reply_tokens(session), span=chunk.span, then=passes,
                              **call_settings)


async def prefetch(session: Session, task: Task, chunk: Chunk, position: int, total: int,
                   options: ChainOptions) -> None:
    """Evaluate the part of `chunk`'s worker prompt (the worker at `position`) before the CU (the system
    text, the chunk and, for QA, the question) into a free slot, while the current worker runs.
    The part is found as what two renderings with different CUs share."""
    index = len([c for c in session.calls if c.role == "prefetch"])
    if uses_evidence(options, task):
        with_none, with_cu = (evidence_messages(session, task, chunk.text, cu) for cu in ("", "x"))
    else:
        with_none, with_cu = (worker_messages(session, task, chunk.text, cu, position, total) for cu in ("", "x"))
    shared = os.path.commonprefix([with_none[-1]["content"], with_cu[-1]["content"]])
    if shared:
        await session.prefill("prefetch", index, [*with_none[:-1], {**with_none[-1], "content": shared}])


def pass_on(call: Call, *, previous: str, chunk: str, question: str | None, guard: bool) -> None:
    """Set a worker call's CU (and a note where it is not the output as written)."""
    call.cu, call.note = next_cu(call.output, previous, chunk, question, guard=guard)


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
