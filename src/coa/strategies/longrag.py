"""LongRAG (Zhao et al., EMNLP 2024): retrieval seen from two perspectives, the global information
around what was retrieved and the factual details in it, brought together by one answering call.

1. Hybrid retriever: the document in `chunk_words`-word passages (`retrieval.word_passages`),
   ranked against the question (and a multiple-choice task's options) by BM25, by dense
   embeddings, or by both fused (`hybrid`: reciprocal rank fusion, k=60, tied scores sharing a
   rank). The best `top_k` that fit are taken (each must fit a filter call, and together the
   generator's prompt beside the extractor's output).
2. Information extractor (global view): each retrieved passage is mapped back to the stretch of
   the document around it (the passage and `context_passages` passages either side: the
   "long-context mapping"); the stretches are merged where they overlap or touch, kept in
   document order and fitted to the extractor's window (the stretches narrowed first, then the
   lowest-ranked passages left out). One call writes out the information in them that bears on the
   question. A reply that only says nothing was found is read as no information.
3. CoT-guided filter (factual details): one call per retrieved passage, concurrently, reasons
   briefly and ends with a line "Helpful: yes" or "Helpful: no" (at most `filter_tokens` tokens).
   The verdict is read strictly from the reply's last non-empty line (markdown emphasis and a full
   stop allowed); anything else (no verdict, a verdict followed by more text, a reply cut short at
   its limit) is malformed and the passage is kept: leaving a passage out cannot be undone, since
   the generator never sees it, while keeping a useless one costs only room that was set aside for
   it anyway; a malformed reply says nothing about the passage. As in the paper's code, when the
   filter keeps no passage at all, all of them are kept (`filter_fallback` in the settings).
4. Generator: one final call answers from the extractor's information and the kept passages (in
   document order), both fenced.

Where it departs from the paper, and why:
- No fine-tuned LongRAG models (the paper's LRGInstruction-tuned ChatGLM3, Qwen1.5, Vicuna and
  Llama3 extractors and filters): the prompted model itself plays extractor, filter and generator.
- Retrieval: the paper chunks the corpus's paragraphs into ~200-word, sentence-aligned chunks with
  two sentences of overlap, retrieves 100 by dense embeddings (multilingual-e5-large) and re-ranks
  them to the top 7 with a cross-encoder. Here passages are `chunk_words` words (default 200, no
  overlap) of the one document; the default ranking is BM25 (it runs without an embedding server),
  `hybrid` fuses BM25 with dense scores by rank rather than re-ranking with a cross-encoder, and
  `top_k` defaults to the paper's 7, fewer where the window is small.
- Long-context mapping: the paper maps a chunk to its source paragraph in the dataset's own
  structure (a long paragraph is replaced by the chunk itself). A document here has no such
  paragraphs, so a passage's surrounding context is its neighbours in the document.
- Filter: the paper first writes one chain of thought over all retrieved chunks (1,000 tokens),
  then asks per chunk, with that thought, for a JSON True/False (any "True" in a malformed reply
  keeps the chunk). Here each filter call reasons about its own passage and ends with a strict
  verdict line, in one call per passage; its reasoning is capped by `filter_tokens`, and the
  extractor's output by `extract_tokens` (the paper's 1,000 tokens do not fit small windows).
- The extractor runs before the filter calls rather than beside them, so the trace reads in order.
- Citations (not in the paper): where each kept passage holds the answer word for word, or the
  sentence it rests on, and the extractor's sentences that the context it read holds word for word
  (`coa.grounding`), so the answer is checked against what the generator read, in the document's
  words. Questions only (qa and mcq).
- Run limits: the generator's call is kept for (`final`, and the session's answer reserve), but a
  limit reached by the extractor or a filter call stops the run with its LimitError: a run cut
  before its filter has finished has nothing checked to answer from."""

from __future__ import annotations

import asyncio
import re
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from coa.answers import clean_answer, is_refusal, picked_letters
from coa.chunking import sentences
from coa.errors import ConfigError
from coa.fence import unfence
from coa.grounding import instruction_shaped, locate, support
from coa.models.base import Messages, truncate_to_tokens
from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.options import Options, Place
from coa.strategies.retrieval import RetrievalOptions, bm25_scores, dense_scores, word_passages
from coa.strategies.toolbox import questions_only, raise_gathered, render
from coa.task import Call, Citation, Kind, Task, query_text

RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009)
# The filter's verdict, the whole of the reply's last non-empty line ("**Helpful:** yes.").
_VERDICT = re.compile(r"^[*_#\s]*helpful[*_]*\s*:[*_\s]*(yes|no)[*_.!\s]*$", re.IGNORECASE)


class LongRagOptions(Options):
    retriever: Literal["bm25", "dense", "hybrid"] = Field(
        "bm25", description="BM25, embeddings from embed_model, or both fused by reciprocal rank (hybrid)")
    chunk_words: int = Field(200, ge=1, description="words per passage")
    top_k: int = Field(7, ge=1, le=32, description="passages retrieved (the best that fit), each judged by the filter")
    context_passages: int = Field(1, ge=0, le=8,
                                  description="passages either side of each retrieved one that the extractor reads with it")
    extract_tokens: int = Field(256, ge=16, le=4096, description="generation limit of the extractor's information")
    filter_tokens: int = Field(96, ge=16, le=1024, description="generation limit of a filter call (its reasoning and verdict)")
    embed_model: str = Field("", description="dense, hybrid: the embedding model's name on an OpenAI-compatible server")
    embed_url: str = Place(description="dense, hybrid: that server's base URL, with the key --embed-api-key "
                           "(default: the chat model's server and key)")


@dataclass(frozen=True)
class Passage:
    index: int  # among the document's word passages
    start: int  # character offsets in the document
    text: str

    @property
    def end(self) -> int:
        return self.start + len(self.text)


@register
class LongRag(Strategy):
    name = "longrag"
    description = ("LongRAG: retrieved passages judged one by one by a CoT filter (details) beside information "
                   "extracted from the text around them (global view); the answer from both")
    Options = LongRagOptions

    async def solve(self, session: Session, task: Task):
        questions_only(self.name, task)
        return await Run(session, task, self.options).work()


class Run:
    """One question's retrieval, extraction, filter and answer."""

    def __init__(self, session: Session, task: Task, options: LongRagOptions) -> None:
        self.session, self.task, self.options = session, task, options
        self.all: list[Passage] = []  # the document's passages
        self.counted: dict[tuple[int, int], int] = {}  # tokens of a stretch of passages (inclusive)
        self.details = 0  # tokens the chosen passages take in the generator's prompt
        window = session.window
        # Budgets first, so that a window too small fails before anything is read or sent.
        self.gen_room, self.gen_limit = window.split(self.generator_messages("", []), task, "longrag generator")
        self.ext_room, self.ext_limit = window.split(self.extractor_messages([]), task, "longrag extractor",
                                                     options.extract_tokens)
        self.filter_room = window.text_budget(self.filter_messages(""), options.filter_tokens, "longrag filter")
        self.passage_cost = added(session, self.generator_messages("", ["x"]), self.generator_messages("", []))
        self.part_cost = added(session, self.extractor_messages(["x"]), self.extractor_messages([]))
        self.detail_room = self.gen_room - self.ext_limit
        if self.detail_room < self.passage_cost + 32:
            raise ConfigError(f"window {window.size} is too small for longrag: the generator's prompt leaves "
                              f"{max(self.detail_room, 0)} tokens for passages beside the extractor's {self.ext_limit}; "
                              "use a larger --window or a smaller extract_tokens")

    async def work(self) -> tuple[str, dict[str, Any]]:
        session, task = self.session, self.task
        query = " ".join([query_text(task), *task.choices])  # a choice's words find its evidence too
        passages = self.all = self.passages()
        ranking = await self.rank(query, passages)
        chosen = self.choose(passages, ranking)  # rank order
        self.keep(self.ext_limit)  # the extractor's information at its limit, until it is written
        parts, radius = self.context(passages, chosen)
        information, extracted = await self.extract(parts)
        self.keep(session.window.tokens(information))
        verdicts = await self.filter(chosen)
        kept = [p for p, verdict in zip(chosen, verdicts, strict=True) if verdict is not False]
        fallback = not kept
        if fallback:  # as the paper's code does: a filter that keeps nothing keeps everything
            kept = list(chosen)
            session.warnings.append("the filter judged no retrieved passage helpful; the generator read them all")
        kept.sort(key=lambda p: p.index)
        answer = await self.generate(information, kept)
        session.citations = self.citations(clean_answer(task.kind, answer), kept, parts, information)
        by_index = sorted(zip(chosen, verdicts, strict=True), key=lambda pv: pv[0].index)
        return answer, {
            "query": query,
            "passages": len(passages),
            "retrieved": [p.index for p, _ in by_index],  # document order; `ranking` has them best first
            "ranking": [p.index for p in chosen],
            "verdicts": [{None: "malformed", True: "yes", False: "no"}[v] for _, v in by_index],
            "kept": [p.index for p in kept],
            "filter_fallback": fallback,
            "context": [[p.start, p.end] for p in parts],
            "context_radius": radius,
            "extracted_tokens": extracted,
            "information_tokens": session.window.tokens(information),
        }

    def keep(self, information: int) -> None:
        """Keep back under run limits the generator's call: its prompt (the chosen passages and
        `information` tokens of the extractor's) and its answer, with a margin for counting shifts."""
        empty = self.session.window.prompt_tokens(self.generator_messages("", []))
        needed = empty + self.details + information + self.gen_limit + 32
        self.session.answer_reserve = min(self.session.window.size, needed)

    # -- retrieval --------------------------------------------------------------------------------
    def passages(self) -> list[Passage]:
        document = self.task.document
        texts = word_passages(document, self.options.chunk_words)
        if not texts:
            raise ConfigError("longrag: the document has no words to retrieve passages from")
        start, found = len(document) - sum(map(len, texts)), []  # the passages tile the text from its first word
        for i, text in enumerate(texts):
            found.append(Passage(i, start, text))
            start += len(text)
        return found

    async def rank(self, query: str, passages: list[Passage]) -> list[int]:
        """Passage indices best first (ties in document order)."""
        texts, retriever = [p.text for p in passages], self.options.retriever
        lists = []
        if retriever in ("bm25", "hybrid"):
            lists.append(bm25_scores(texts, query))
        if retriever in ("dense", "hybrid"):
            dense = RetrievalOptions(retriever="dense", chunk_words=self.options.chunk_words,
                                     embed_model=self.options.embed_model, embed_url=self.options.embed_url)
            try:
                lists.append(await dense_scores(self.session, [query, *texts], dense))
            except ConfigError as e:
                raise ConfigError(f"strategy longrag, retriever={retriever}: {e}") from None
        scores = lists[0] if len(lists) == 1 else fuse(lists)
        return sorted(range(len(passages)), key=lambda i: -scores[i])

    def choose(self, passages: list[Passage], ranking: list[int]) -> list[Passage]:
        """The best `top_k` passages that fit a filter call each and the generator together."""
        chosen: list[Passage] = []
        used = 0
        for i in ranking:
            if len(chosen) == self.options.top_k:
                break
            tokens = self.session.window.tokens(passages[i].text)
            if tokens <= self.filter_room and used + tokens + self.passage_cost <= self.detail_room:
                chosen.append(passages[i])
                used += tokens + self.passage_cost
        self.details = used
        if not chosen:  # every passage is longer than the window leaves (a text without spaces): cut the best
            best = passages[ranking[0]]
            room = min(self.filter_room, self.detail_room - self.passage_cost)
            chosen = [Passage(best.index, best.start, truncate_to_tokens(self.session.model, best.text, room))]
            self.details = room + self.passage_cost
            self.session.warnings.append(f"longrag: every passage is longer than the {room:,} tokens the window "
                                         "leaves; the best one was cut to fit")
        return chosen

    # -- the global view ------------------------------------------------------------------------
    def context(self, passages: list[Passage], chosen: list[Passage]) -> tuple[list[Passage], int]:
        """The stretches of the document around the chosen passages (each with `context_passages`
        neighbours either side), merged, in document order, fitted to the extractor's room: the
        stretches narrowed first, then the lowest-ranked passages left out. The radius used too."""
        last = len(passages) - 1
        for radius in range(self.options.context_passages, -1, -1):
            spans: list[tuple[int, int]] = []
            whole = True
            for p in chosen:  # best first: at radius 0, what does not fit is the lowest-ranked
                trial = merge([*spans, (max(0, p.index - radius), min(last, p.index + radius))])
                if self.cost(passages, trial, chosen) <= self.ext_room:
                    spans = trial
                    continue
                whole = False
                if radius > 0:
                    break  # narrower stretches first
            if spans and (whole or radius == 0):
                if not whole:
                    covered = sum(1 for p in chosen if any(a <= p.index <= b for a, b in spans))
                    self.session.warnings.append(f"longrag: the extractor read the context of {covered} of the "
                                                 f"{len(chosen)} retrieved passages (its window is full)")
                return [self.part(passages, span, chosen) for span in spans], radius
        best = chosen[0]  # one passage alone is longer than the extractor's room: cut it
        text = truncate_to_tokens(self.session.model, best.text, max(1, self.ext_room - self.part_cost))
        return [Passage(best.index, best.start, text)], 0

    def part(self, passages: list[Passage], span: tuple[int, int], chosen: list[Passage]) -> Passage:
        a, b = span
        cut = {p.index: p for p in chosen}  # a chosen passage cut to fit stays cut
        end = cut[b].end if b in cut else passages[b].end
        return Passage(a, passages[a].start, self.task.document[passages[a].start : end])

    def cost(self, passages: list[Passage], spans: list[tuple[int, int]], chosen: list[Passage]) -> int:
        """Tokens the stretches take in the extractor's prompt, labels and fences included."""
        for span in spans:
            if span not in self.counted:
                self.counted[span] = self.session.window.tokens(self.part(passages, span, chosen).text)
        return sum(self.counted[span] + self.part_cost for span in spans)

    async def extract(self, parts: list[Passage]) -> tuple[str, int]:
        """The extractor's information (empty where it found none) and the tokens it wrote."""
        session = self.session
        session.plan("extractor", 1)
        call = await session.call("extractor", 0, self.extractor_messages([p.text.strip() for p in parts]),
                                  self.ext_limit)
        information = unfence(call.output).strip()
        if is_refusal(information) or information.upper().rstrip(".") == "NONE":
            call.note = "no information found"
            information = ""
        return information, call.completion_tokens

    # -- the factual details --------------------------------------------------------------------
    async def filter(self, chosen: list[Passage]) -> list[bool | None]:
        """Each chosen passage's verdict: True (helpful), False (not) or None (malformed: kept).
        The calls are made concurrently, in document order."""
        session, order = self.session, sorted(range(len(chosen)), key=lambda n: chosen[n].index)
        session.plan("filter", len(chosen))
        outcomes = await asyncio.gather(*(
            session.call("filter", k, self.filter_messages(chosen[n].text.strip()), self.options.filter_tokens)
            for k, n in enumerate(order)
        ), return_exceptions=True)
        raise_gathered(outcomes)  # a run limit (or another error) before every passage was judged: nothing checked to answer from
        verdicts: list[bool | None] = [None] * len(chosen)
        for n, call in zip(order, outcomes, strict=True):
            assert isinstance(call, Call)
            verdicts[n] = verdict = read_verdict(call.output)
            if verdict is None:
                cut = " (cut short at filter_tokens)" if call.finish_reason == "length" else ""
                call.note = f"no 'Helpful: yes/no' line at the end{cut}: kept"
            else:
                call.note = "helpful: kept" if verdict else "not helpful: left out"
        return verdicts

    # -- the answer -----------------------------------------------------------------------------
    async def generate(self, information: str, kept: list[Passage]) -> str:
        session = self.session
        texts = [p.text.strip() for p in kept]
        information = truncate_to_tokens(session.model, information, self.ext_limit)
        messages = self.generator_messages(information, texts)
        while (over := -session.window.room(messages, self.gen_limit)) > 0 and information:  # counts shift a little
            information = truncate_to_tokens(session.model, information, max(0, session.window.tokens(information) - over))
            messages = self.generator_messages(information, texts)
        session.plan("generator", 1)
        call = await session.call("generator", 0, messages, self.gen_limit, final=True)
        return call.output

    def citations(self, answer: str, kept: list[Passage], parts: list[Passage], information: str) -> list[Citation]:
        """Where each kept passage holds the answer (for an option, its text) word for word or the
        sentence it rests on, and the extractor's sentences that its context holds word for word."""
        task, question = self.task, query_text(self.task)
        targets = [answer]
        if task.kind is Kind.MCQ and (letters := picked_letters(answer, len(task.choices))):
            targets = [task.choices[ord(letter) - ord("A")] for letter in letters]  # each option picked
        found: dict[tuple[int, int], Citation] = {}

        def add(place: tuple[int, int] | None, source: Passage, line: str) -> None:
            if place is None or instruction_shaped(source.text[place[0] : place[1]]):
                return
            start, end = source.start + place[0], source.start + place[1]
            index = next((p.index for p in self.all if p.start <= start < p.end), source.index)  # the passage it is in
            found.setdefault((start, end), Citation(task.document[start:end], start, end, index, line=line))

        for target in filter(str.strip, targets):
            for p in kept:
                add(locate(target, p.text) or support(target, p.text, question), p, target)
        for sentence in sentences(information):
            for part in parts:
                if (place := locate(sentence, part.text)) is not None:
                    add(place, part, sentence.strip())
                    break
        return sorted(found.values(), key=lambda c: c.start)

    # -- prompts --------------------------------------------------------------------------------
    def extractor_messages(self, parts: list[str]) -> Messages:
        return render(self.session, "longrag", "extractor", self.task, parts=parts)

    def filter_messages(self, passage: str) -> Messages:
        return render(self.session, "longrag", "filter", self.task, passage=passage)

    def generator_messages(self, information: str, passages: list[str]) -> Messages:
        return render(self.session, "longrag", "generator", self.task, information=information, passages=passages)


def added(session: Session, more: Messages, base: Messages) -> int:
    """Tokens a one-token item ("x") adds to a prompt, its labels and fence included."""
    return max(1, session.window.prompt_tokens(more) - session.window.prompt_tokens(base))


def fuse(rankings: Sequence[Sequence[float]]) -> list[float]:
    """Reciprocal rank fusion of several score lists: each item's sum of 1 / (RRF_K + its rank).
    Tied scores share the best rank of their group, so that no list favours an item for its place in
    the document (a passage with no query word is not ranked above another for coming first)."""
    fused = [0.0] * len(rankings[0])
    for scores in rankings:
        ascending = sorted(-s for s in scores)  # an item's rank: 1 + how many score higher
        for i, score in enumerate(scores):
            fused[i] += 1.0 / (RRF_K + 1 + bisect_left(ascending, -score))
    return fused


def merge(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Spans of passage indices (inclusive) merged where they overlap or touch, in order."""
    result: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if result and a <= result[-1][1] + 1:
            result[-1] = (result[-1][0], max(result[-1][1], b))
        else:
            result.append((a, b))
    return result


def read_verdict(output: str) -> bool | None:
    """The filter's verdict from the reply's last non-empty line: True for "Helpful: yes", False for
    "Helpful: no", None where that line is anything else (the passage is then kept)."""
    lines = [line.strip() for line in unfence(output).splitlines() if line.strip()]
    match = _VERDICT.match(lines[-1]) if lines else None
    return None if match is None else match.group(1).lower() == "yes"
