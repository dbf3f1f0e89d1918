"""GraphReader (Li et al. 2024): the document as a graph of key elements and atomic facts, which an
agent explores with a notebook before it answers.

What follows the paper:
- Graph construction, once per document and without the question: the text is cut into chunks
  that fit the window, and one call per chunk (concurrent, `toolbox.map_chunks`) lists the
  chunk's atomic facts, each with the key elements it mentions. A node is a normalised key
  element holding the facts that mention it; each fact keeps the chunk it came from. Two nodes
  are neighbours when they are mentioned by one fact.
- Exploration in the paper's order: a rational plan (the question broken into steps and what to
  look for); initial nodes, chosen by the model from candidate key elements; then, node by node
  from a queue, the node's atomic facts are read and the notebook rewritten, and the model chooses
  to read the source chunks of some facts, to look at the node's neighbours, to go on to the next
  node, or to answer. After a chunk it rewrites the notebook and chooses again; at the neighbours
  it chooses which to put in the queue. The answer is written from the notebook alone (a `final`
  call), as the paper's answer reasoning step.

Where it departs, and why:
- A small prompted model instead of GPT-4 with function calls: every choice is one line in a
  strict form, parsed strictly, so that a malformed reply is caught before anything happens:
    initial:    NODES: 1, 4                  (numbers of the listed elements, or their names)
    facts:      READ_CHUNKS: 3, 7 | NEIGHBOURS | NEXT | ANSWER
    chunk:      CONTINUE (more chosen chunks) | NEIGHBOURS | NEXT | ANSWER
    neighbours: NEIGHBOURS: 2, 5 | NEXT | ANSWER
  Markdown emphasis around the keyword is allowed, and `ANSWER: ...` (its text is not used: the
  answer call writes it). In the facts and chunk steps the choice is the reply's last non-empty
  line and the lines before it are the rewritten notebook (an empty one keeps the old notebook);
  in the initial and neighbours steps the reply is that one line alone.
  A reply whose choice line is not in the form, or names nothing on the list, is malformed: the
  notebook stays as it was and the exploration of that node stops (the next node in the queue);
  it is recorded in the exploration log and the call's note. Items of a list that are not on the
  list are ignored and recorded. A malformed initial reply falls back to the best BM25 candidates.
- Candidates: the paper shows the model every node; here the initial list (and a node's
  neighbours) are ranked by BM25 (`retrieval.bm25_scores`, a node scored by its name and facts)
  against the question and its options, and capped at `candidates`. Where no more candidates
  exist than `initial_nodes`, all are taken and no call is made.
- Extraction lines are `FACT: <fact> | <element>; <element>`; any other line is dropped and
  counted (`malformed_lines`). Facts must rest on their chunk (not in the paper): a fact with a
  content word (stemmed, `coa.grounding.content_words`) the chunk does not hold, or one shaped as
  an instruction, is DROPPED (counted as `unsupported_facts`), never kept as unverified; so is an
  element whose words the chunk does not hold, and a fact left with no element. Each kept fact
  gets the place in the document it rests on (verbatim, else the chunk's sentence sharing most of
  its words).
- Node normalisation (the paper's lexical normalisation, made explicit): lower case, whitespace
  folded, punctuation at the ends stripped, a leading article (a, an, the) and a possessive 's
  dropped, and the last word made singular by simple rules (-ies to -y; -ches, -shes, -sses, -xes,
  -zes lose -es; otherwise a final -s is dropped, but not from -ss, -us, -is or words of three
  letters or fewer). A node shows the first spelling seen.
- One notebook and one queue (the paper runs one exploration per initial node and reasons over
  all notebooks): a small model keeps one notebook more reliably, and the calls stay bounded.
- Caps, as options: `max_steps` exploration calls in all (facts, chunk and neighbours calls; the
  plan and the initial choice not counted), `initial_nodes`, `max_neighbours` enqueued per step,
  `max_chunks` read per READ_CHUNKS choice (chunks read before are not read again), `candidates`
  listed. The facts of a node are shown as many as fit the window, the rest counted as left out.
- Run limits: once the graph is built, a window's worth of tokens and one call are kept for the
  answer. At a limit (`coa.errors.LimitError`) during the exploration the answer is written from
  the notebook so far, with a warning, where the notebook holds anything; otherwise (and during
  construction) the error stands.
- Several questions on one document (`solve_many`): the graph is built once (in the first run's
  session, recorded there; later runs record `graph_reused`) and each question explores it in its
  own session. Chunks are cut to the budget of the longest question.
- Citations (not in the paper): each sentence of the final notebook is placed in the chunks the
  run read or the source sentences of the facts it was shown (`coa.grounding.locate`/`support`),
  so the answer is checked against the document's words. Questions only (qa, mcq).

The trace (settings): the graph (`nodes` with their names and fact ids, `facts` with text, chunk
and character span, `edges`), the `plan`, the `initial` nodes, the `exploration` log (node, action,
choice, what was chosen), the `notebook`, and why the exploration ended (`ended`: answer, queue,
steps, limit or empty).
"""

from __future__ import annotations

import re
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import Field

from coa.budget import MIN_CHUNK_TOKENS
from coa.chunking import Chunk, sentences
from coa.errors import ConfigError, LimitError
from coa.fence import unfence
from coa.grounding import content_words, instruction_shaped, locate, same, support
from coa.models.base import Messages, truncate_to_tokens
from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.options import Options
from coa.strategies.retrieval import bm25_scores
from coa.strategies.toolbox import answer_at_limit, map_chunks, questions_only, render
from coa.task import Call, Citation, Task, query_text

CHOICE_TOKENS = 48  # a one-line choice of numbers or names
_FACT = re.compile(r"^(?:[-*\u2022]\s*|\d+[.)]\s*)?[*_]*FACT[*_]*\s*:[*_]*\s*(.+?)\s*\|\s*(.+?)\s*$", re.IGNORECASE)
_NONE = re.compile(r"^[*_\s]*none[.!]?[*_\s]*$", re.IGNORECASE)
_CHOICE = re.compile(r"^[*_`#\s]*(READ_CHUNKS|NEIGHBOURS|NEIGHBORS|NEXT|ANSWER|CONTINUE|NODES)[*_`]*"
                     r"\s*(?::[*_`]*\s*(.*?))?[*_`.\s]*$", re.IGNORECASE)
_ANSWER_MARK = re.compile(r"^[*_#\s]*(?:final\s+)?answer[*_]*\s*:[*_]*\s*", re.IGNORECASE)
_NOTEBOOK_MARK = re.compile(r"^[*_#\s]*(?:updated\s+|new\s+)?notebook[*_]*\s*:[*_]*\s*", re.IGNORECASE)
_ARTICLE = re.compile(r"^(?:the|a|an)\s+")


class GraphReaderOptions(Options):
    chunk_tokens: int | None = Field(None, ge=MIN_CHUNK_TOKENS,
                                     description="tokens per chunk of the graph; auto: as many as the prompts leave")
    extract_tokens: int = Field(384, ge=32, le=4096, description="generation limit of a chunk's facts and elements")
    plan_tokens: int = Field(128, ge=16, le=1024, description="generation limit of the rational plan")
    notebook_tokens: int = Field(192, ge=32, le=2048,
                                 description="generation limit of a rewritten notebook and its choice line")
    max_steps: int = Field(8, ge=1, le=64, description="exploration calls (facts, chunk, neighbours) before the answer")
    initial_nodes: int = Field(2, ge=1, le=8, description="nodes the exploration may start from")
    candidates: int = Field(12, ge=2, le=64, description="key elements listed for a choice (best BM25 match first)")
    max_neighbours: int = Field(2, ge=1, le=8, description="neighbour nodes put in the queue per neighbours step")
    max_chunks: int = Field(2, ge=1, le=8, description="chunks read per READ_CHUNKS choice")


@dataclass
class Fact:
    id: int  # 1-based, as the prompts show it
    text: str
    chunk: int  # the chunk it came from (0-based)
    start: int  # the document's span it rests on
    end: int
    elements: list[str]  # node keys

    def record(self) -> dict[str, Any]:
        return {"id": self.id, "text": self.text, "chunk": self.chunk, "span": [self.start, self.end],
                "elements": self.elements}


@dataclass
class Node:
    key: str  # the normalised key element
    name: str  # its first spelling
    facts: list[int] = field(default_factory=list)
    neighbours: set[str] = field(default_factory=set)


@dataclass
class Graph:
    chunks: list[Chunk]
    budget: int
    facts: dict[int, Fact] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    malformed: int = 0
    unsupported: int = 0

    @property
    def edges(self) -> int:
        return sum(len(n.neighbours) for n in self.nodes.values()) // 2

    def add(self, chunk: int, text: str, start: int, end: int, elements: list[tuple[str, str]]) -> None:
        """A fact from `chunk` mentioning `elements` (key, spelling): its nodes and their edges."""
        keys = list(dict.fromkeys(key for key, _ in elements))
        fact = Fact(len(self.facts) + 1, text, chunk, start, end, keys)
        self.facts[fact.id] = fact
        for key, name in elements:
            node = self.nodes.setdefault(key, Node(key, name))
            if fact.id not in node.facts:
                node.facts.append(fact.id)
            node.neighbours.update(k for k in keys if k != key)

    def passage(self, key: str) -> str:
        node = self.nodes[key]
        return " ".join([node.name, *(self.facts[i].text for i in node.facts)])

    def settings(self) -> dict[str, Any]:
        return {"chunks": len(self.chunks), "chunk_tokens": self.budget, "edges": self.edges,
                "malformed_lines": self.malformed, "unsupported_facts": self.unsupported,
                "nodes": [{"name": n.key, "label": n.name, "facts": n.facts} for n in self.nodes.values()],
                "facts": [f.record() for f in self.facts.values()]}


@dataclass(frozen=True)
class Choice:
    kind: str  # READ_CHUNKS, NEIGHBOURS, NEXT, ANSWER, CONTINUE, NODES
    items: tuple[str, ...] = ()
    notebook: str = ""


class _StepsSpent(Exception):
    """The exploration used its `max_steps` calls."""


@register
class GraphReader(Strategy):
    name = "graphreader"
    description = "GraphReader: a graph of key elements and atomic facts, explored with a notebook, then the answer"
    Options = GraphReaderOptions

    async def solve_many(self, runs: list[tuple[Session, Task]]) -> list[tuple[str, dict[str, Any]]]:
        """Runs over one document share its graph: built once, in the first of them."""
        for _, task in runs:
            questions_only(self.name, task)
        options: GraphReaderOptions = self.options
        graphs: dict[str, Graph] = {}
        outcomes = []
        for session, task in runs:
            session.started = time.perf_counter()
            graph = graphs.get(task.document)
            reused = graph is not None
            if graph is None:
                same_document = [(s, t) for s, t in runs if t.document == task.document]
                graph = graphs[task.document] = await build_graph(session, task, options, same_document)
            explorer = Explorer(session, task, graph, options)
            answer, ended = await explorer.explore()
            session.citations = explorer.citations()
            outcomes.append((answer, {**graph.settings(), "graph_reused": reused, **explorer.settings(), "ended": ended}))
        return outcomes


# -- the graph ----------------------------------------------------------------------------------
def chunk_budget(session: Session, task: Task, options: GraphReaderOptions) -> int:
    """Tokens per chunk: what the extraction prompt leaves, and what a chunk prompt leaves with
    the plan and a notebook shown (so that a chunk is read whole); failing fast on a small window."""
    extract = session.window.text_budget(extract_messages(session, "", 1, 1), options.extract_tokens, "extract")
    shown = options.plan_tokens + 2 * options.notebook_tokens  # the plan, the notebook, the reply
    read = session.window.text_budget(chunk_messages(session, task, "", "", "", "", [1], 1, 1, True), shown, "chunk")
    session.window.text_budget(facts_messages(session, task, "", "", "", "", 0), shown, "facts")
    session.window.split(answer_messages(session, task, "", ""), task, "graphreader answer")
    return min(options.chunk_tokens or extract, extract, read)


async def build_graph(session: Session, task: Task, options: GraphReaderOptions,
                      runs: list[tuple[Session, Task]]) -> Graph:
    """The document's graph: one extraction call per chunk, its lines parsed strictly, its facts
    kept where the chunk supports them."""
    budget = min(chunk_budget(s, t, options) for s, t in runs)
    chunks = session.window.chunks(task, budget)
    graph = Graph(chunks, budget)
    calls = await map_chunks(session, "extract", chunks,
                             lambda i, chunk: extract_messages(session, chunk.text, i + 1, len(chunks)),
                             options.extract_tokens)
    for i, (chunk, call) in enumerate(zip(chunks, calls, strict=True)):
        lines, malformed = read_extraction(call.output)
        kept = unsupported = 0
        seen: set[str] = set()
        for text, names in lines:
            if (normal := " ".join(text.lower().split())) in seen:  # the same fact twice from one chunk
                continue
            seen.add(normal)
            grounded = ground_fact(text, names, chunk.text)
            if grounded is None:
                unsupported += 1
                continue
            (a, b), elements = grounded
            graph.add(i, text, chunk.start + a, chunk.start + b, elements)
            kept += 1
        graph.malformed += malformed
        graph.unsupported += unsupported
        call.note = f"{kept} facts kept, {unsupported} unsupported by the chunk, {malformed} malformed lines dropped"
    return graph


def read_extraction(output: str) -> tuple[list[tuple[str, list[str]]], int]:
    """(fact, its elements) for each line in the form `FACT: <fact> | <element>; <element>`, and how
    many non-empty lines were not (a lone NONE is not counted)."""
    found, malformed = [], 0
    for line in unfence(output).splitlines():
        line = line.strip()
        if not line or _NONE.match(line):
            continue
        match = _FACT.match(line)
        names = [n.strip() for n in re.split(r"[;,|]", match.group(2)) if n.strip()] if match else []
        fact = match.group(1).strip() if match else ""
        if not fact or not names:
            malformed += 1
            continue
        found.append((fact, names))
    return found, malformed


def normal_element(name: str) -> str:
    """The node key of a key element: case and whitespace folded, end punctuation, a leading article
    and a possessive dropped, the last word made singular (simple rules)."""
    text = " ".join(name.lower().split())
    text = re.sub(r"^[\W_]+|[\W_]+$", "", text)
    text = _ARTICLE.sub("", text)
    text = re.sub(r"['\u2019]s$", "", text)
    words = text.split()
    if not words:
        return ""
    last = words[-1]
    if len(last) > 4 and last.endswith("ies"):
        last = last[:-3] + "y"
    elif last.endswith(("ches", "shes", "sses", "xes", "zes")):
        last = last[:-2]
    elif len(last) > 3 and last.endswith("s") and not last.endswith(("ss", "us", "is")):
        last = last[:-1]
    return " ".join([*words[:-1], last])


def ground_fact(text: str, names: list[str], chunk: str) -> tuple[tuple[int, int], list[tuple[str, str]]] | None:
    """The span of `chunk` a fact rests on and its elements that the chunk holds; None for a fact
    with a word the chunk does not hold, one shaped as an instruction, or one without an element."""
    words, held = content_words(text), content_words(chunk)
    if not words or not words <= held or instruction_shaped(text):
        return None
    elements = [(key, name.strip()) for name in names
                if (key := normal_element(name)) and content_words(name) <= held]
    if not elements:
        return None
    return place(text, chunk), elements


def place(text: str, chunk: str) -> tuple[int, int]:
    """Where `chunk` holds `text` verbatim, else its sentence sharing the most content words with it."""
    found = locate(text, chunk)
    if found is not None:
        return found
    words, best, where, cursor = content_words(text), -1, (0, len(chunk)), 0
    for sentence in sentences(chunk):
        start = chunk.find(sentence.strip(), cursor)
        if start < 0:
            continue
        cursor = start + len(sentence.strip())
        shared = len(words & content_words(sentence))
        if shared > best:
            best, where = shared, (start, cursor)
    return where


# -- the exploration ----------------------------------------------------------------------------
class Explorer:
    """One question's exploration of the graph: plan, initial nodes, the queue, the notebook."""

    def __init__(self, session: Session, task: Task, graph: Graph, options: GraphReaderOptions) -> None:
        self.session, self.task, self.graph, self.options = session, task, graph, options
        self.plan = ""
        self.notebook = ""
        self.initial: list[str] = []
        self.fallback = False
        self.log: list[dict[str, Any]] = []
        self.steps = 0
        self.queue: deque[str] = deque()
        self.queued: set[str] = set()
        self.visited: set[str] = set()
        self.read: list[int] = []  # chunks read, in order
        self.seen: list[int] = []  # facts shown, in order
        self.counts: dict[str, int] = {}

    async def explore(self) -> tuple[str, str]:
        """The answer and why the exploration ended."""
        session = self.session
        session.answer_reserve = session.window.size  # a run limit still leaves the answer its call
        ended = "queue"
        try:
            if not self.graph.nodes:
                session.warnings.append("graphreader: the graph has no nodes (no fact was kept); the answer has nothing to rest on")
                return await self.answer(), "empty"
            await self.make_plan()
            await self.choose_initial()
            while self.queue:
                key = self.queue.popleft()
                if key in self.visited:
                    continue
                self.visited.add(key)
                if await self.visit(key) == "ANSWER":
                    ended = "answer"
                    break
        except _StepsSpent:
            ended = "steps"
        except LimitError as e:
            answer_at_limit(session, e, bool(self.notebook), f"the answer is from the notebook after {self.steps} exploration step(s)")
            ended = "limit"
        return await self.answer(), ended

    # -- steps ----------------------------------------------------------------------------------
    async def call(self, role: str, messages: Messages, limit: int, *, step: bool = True, final: bool = False) -> Call:
        if step:
            if self.steps >= self.options.max_steps:
                raise _StepsSpent
            self.steps += 1
        index = self.counts.get(role, 0)
        self.counts[role] = index + 1
        self.session.plan(role, index + 1)
        return await self.session.call(role, index, messages, limit, final=final)

    def record(self, node: str, action: str, choice: str, chosen: list[Any] | None = None, note: str = "") -> None:
        entry: dict[str, Any] = {"step": self.steps, "node": node, "action": action, "choice": choice,
                                 "chosen": chosen or []}
        if note:
            entry["note"] = note
        self.log.append(entry)

    async def make_plan(self) -> None:
        call = await self.call("plan", plan_messages(self.session, self.task), self.options.plan_tokens, step=False)
        self.plan = unfence(call.output).strip()

    async def choose_initial(self) -> None:
        keys = self.ranked(list(self.graph.nodes))
        most = self.options.initial_nodes
        if len(keys) <= most:
            chosen, note = keys, "every node taken: no more candidates than initial_nodes"
        else:
            def messages(shown: list[str]) -> Messages:
                return render(self.session, "graphreader", "initial", self.task, plan=self.plan, most=most,
                              elements=self.listing(shown))
            shown = self.fit_list(messages, keys, CHOICE_TOKENS)
            call = await self.call("initial", messages(shown), CHOICE_TOKENS, step=False)
            choice = read_choice(call.output, {"NODES": "list"})
            picked, unknown = self.pick(choice.items if choice else (), shown)
            if picked:
                chosen, note = picked[:most], ""
                if unknown:
                    note = f"not on the list, ignored: {', '.join(unknown)}"
            else:
                chosen, self.fallback = keys[:most], True
                note = "malformed or naming no listed element: the best BM25 candidates taken"
                call.note = note
        self.initial = chosen
        self.enqueue(chosen)
        self.record("", "initial", "NODES", [self.graph.nodes[k].name for k in chosen], note)

    async def visit(self, key: str) -> str:
        """Explore one node: its facts, then the chunks or the neighbours it leads to. Returns the last
        choice (ANSWER ends the exploration)."""
        choice = await self.facts_step(key)
        if choice.kind == "READ_CHUNKS":
            choice = await self.chunk_steps(key, choice)
        if choice.kind == "NEIGHBOURS":
            choice = await self.neighbour_step(key)
        return choice.kind

    async def facts_step(self, key: str) -> Choice:
        node = self.graph.nodes[key]
        lines = [f"[{i}] {self.graph.facts[i].text}" for i in node.facts]

        def messages(shown: list[str]) -> Messages:
            return facts_messages(self.session, self.task, self.plan, self.notebook, node.name, "\n".join(shown),
                                  len(lines) - len(shown))
        shown = self.fit_list(messages, lines, self.options.notebook_tokens)
        ids = node.facts[: len(shown)]
        call = await self.call("facts", messages(shown), self.options.notebook_tokens)
        self.seen.extend(i for i in ids if i not in self.seen)
        choice = read_choice(call.output, {"READ_CHUNKS": "list", "NEIGHBOURS": "none", "NEXT": "none", "ANSWER": "any"},
                             notebook=True)
        if choice is None:
            return self.malformed(call, node.name, "facts")
        if choice.kind != "READ_CHUNKS":
            self.update(choice)
            self.record(node.name, "facts", choice.kind)
            return choice
        wanted = [int(i) for i in choice.items if i.isdigit() and int(i) in ids]
        unknown = [i for i in choice.items if not (i.isdigit() and int(i) in ids)]
        if not wanted:
            return self.malformed(call, node.name, "facts", f"READ_CHUNKS names no fact shown: {', '.join(unknown)}")
        self.update(choice)
        fresh, notes = self.chunks_for(wanted)
        if unknown:
            notes.insert(0, f"not shown, ignored: {', '.join(unknown)}")
        self.record(node.name, "facts", "READ_CHUNKS", wanted, "; ".join(notes))
        return Choice("READ_CHUNKS", tuple(str(i) for i in wanted))

    def chunks_for(self, facts: list[int]) -> tuple[list[int], list[str]]:
        """The chunks to read for the chosen facts: those not read before, at most `max_chunks`; and
        what was left out."""
        chunks = list(dict.fromkeys(self.graph.facts[i].chunk for i in facts))
        fresh = [c for c in chunks if c not in self.read]
        notes = []
        if len(fresh) < len(chunks):
            notes.append(f"{len(chunks) - len(fresh)} chunk(s) read before")
        if len(fresh) > self.options.max_chunks:
            notes.append(f"{len(fresh) - self.options.max_chunks} chunk(s) over max_chunks left out")
        return fresh[: self.options.max_chunks], notes

    async def chunk_steps(self, key: str, chosen: Choice) -> Choice:
        """Read the chosen chunks one call each; after each the model chooses again."""
        node = self.graph.nodes[key]
        wanted = [int(i) for i in chosen.items]
        chunks, _ = self.chunks_for(wanted)
        if not chunks:  # every chunk chosen was read before: on to the neighbours
            return Choice("NEIGHBOURS")
        for n, index in enumerate(chunks):
            more = n < len(chunks) - 1
            facts = [i for i in wanted if self.graph.facts[i].chunk == index]
            chunk = self.graph.chunks[index]

            def messages(text: str, facts: list[int] = facts, n: int = n, more: bool = more) -> Messages:
                return chunk_messages(self.session, self.task, self.plan, self.notebook, node.name, text, facts,
                                      n + 1, len(chunks), more)
            room = self.session.window.room(messages(""), self.options.notebook_tokens)
            text = chunk.text if self.session.window.tokens(chunk.text) <= room else \
                truncate_to_tokens(self.session.model, chunk.text, max(room, 0))
            call = await self.call("chunk", messages(text), self.options.notebook_tokens)
            self.read.append(index)
            allowed = {"NEIGHBOURS": "none", "NEXT": "none", "ANSWER": "any"} | ({"CONTINUE": "none"} if more else {})
            choice = read_choice(call.output, allowed, notebook=True)
            if choice is None:
                return self.malformed(call, node.name, "chunk", chosen=[index])
            self.update(choice)
            self.record(node.name, "chunk", choice.kind, [index])
            if choice.kind != "CONTINUE":
                return choice
        return Choice("NEXT")  # not reached: the last chunk offers no CONTINUE

    async def neighbour_step(self, key: str) -> Choice:
        node = self.graph.nodes[key]
        open_ = self.ranked([k for k in node.neighbours if k not in self.visited and k not in self.queued])
        if not open_:
            self.record(node.name, "neighbours", "NEXT", note="no neighbour left to explore")
            return Choice("NEXT")
        most = self.options.max_neighbours

        def messages(shown: list[str]) -> Messages:
            return render(self.session, "graphreader", "neighbours", self.task, plan=self.plan, notebook=self.notebook,
                          node=node.name, elements=self.listing(shown), most=most)
        shown = self.fit_list(messages, open_, CHOICE_TOKENS)
        call = await self.call("neighbours", messages(shown), CHOICE_TOKENS)
        choice = read_choice(call.output, {"NEIGHBOURS": "list", "NEXT": "none", "ANSWER": "any"})
        if choice is None:
            return self.malformed(call, node.name, "neighbours")
        if choice.kind != "NEIGHBOURS":
            self.record(node.name, "neighbours", choice.kind)
            return choice
        picked, unknown = self.pick(choice.items, shown)
        if not picked:
            return self.malformed(call, node.name, "neighbours", f"names no listed element: {', '.join(unknown)}")
        notes = [f"not on the list, ignored: {', '.join(unknown)}"] if unknown else []
        if len(picked) > most:
            notes.append(f"{len(picked) - most} over max_neighbours left out")
        picked = picked[:most]
        self.enqueue(picked)
        self.record(node.name, "neighbours", "NEIGHBOURS", [self.graph.nodes[k].name for k in picked], "; ".join(notes))
        return Choice("NEXT")

    def malformed(self, call: Call, node: str, action: str, why: str = "", chosen: list[Any] | None = None) -> Choice:
        note = why or "the choice line is not in the form asked for"
        call.note = f"malformed: {note}; this node's exploration stops"
        self.record(node, action, "malformed", chosen, note)
        return Choice("NEXT")

    def update(self, choice: Choice) -> None:
        if choice.notebook:
            self.notebook = choice.notebook

    async def answer(self) -> str:
        """The answer from the notebook (a `final` call: run limits keep room for it)."""
        room, limit = self.session.window.split(answer_messages(self.session, self.task, self.plan, ""), self.task,
                                                "graphreader answer")
        notebook = truncate_to_tokens(self.session.model, self.notebook, room)
        call = await self.call("answer", answer_messages(self.session, self.task, self.plan, notebook), limit,
                               step=False, final=True)
        return _ANSWER_MARK.sub("", unfence(call.output).strip(), count=1)

    # -- lists ----------------------------------------------------------------------------------
    def ranked(self, keys: list[str]) -> list[str]:
        """`keys` by BM25 against the question and its options (ties: more facts, then first seen),
        at most `candidates`."""
        if not keys:
            return []
        order = {k: i for i, k in enumerate(self.graph.nodes)}
        scores = bm25_scores([self.graph.passage(k) for k in keys], " ".join([query_text(self.task), *self.task.choices]))
        ranked = sorted(zip(keys, scores, strict=True),
                        key=lambda ks: (-ks[1], -len(self.graph.nodes[ks[0]].facts), order[ks[0]]))
        return [k for k, _ in ranked][: self.options.candidates]

    def listing(self, keys: list[str]) -> str:
        return "\n".join(f"{n}. {self.graph.nodes[k].name}" for n, k in enumerate(keys, start=1))

    def fit_list(self, messages: Callable[[list[str]], Messages], items: list[str], reserve: int) -> list[str]:
        """The first of `items` that `messages(shown)` holds with `reserve` tokens left; at least one."""
        shown = list(items)
        while len(shown) > 1 and self.session.window.room(messages(shown), reserve) < 0:
            shown = shown[: max(1, len(shown) * 3 // 4)]
        if self.session.window.room(messages(shown), reserve) < 0:
            raise ConfigError(f"graphreader: a list of the graph does not fit a {self.session.window.size}-token window; "
                              "use a larger --window")
        return shown

    def pick(self, items: tuple[str, ...] | list[str], shown: list[str]) -> tuple[list[str], list[str]]:
        """The listed keys that `items` name (by number in the list, or by name), and those that name none."""
        picked, unknown = [], []
        for item in items:
            key = shown[int(item) - 1] if item.isdigit() and 1 <= int(item) <= len(shown) else normal_element(item)
            if key in shown:
                if key not in picked:
                    picked.append(key)
            else:
                unknown.append(item)
        return picked, unknown

    def enqueue(self, keys: list[str]) -> None:
        for key in keys:
            if key not in self.queued and key not in self.visited:
                self.queue.append(key)
                self.queued.add(key)

    # -- the record -----------------------------------------------------------------------------
    def settings(self) -> dict[str, Any]:
        return {"plan": self.plan, "initial": [self.graph.nodes[k].name for k in self.initial],
                "initial_fallback": self.fallback, "exploration": self.log, "notebook": self.notebook,
                "steps": self.steps, "chunks_read": self.read, "facts_seen": self.seen}

    def citations(self) -> list[Citation]:
        """Where the document holds what the notebook rests on: each notebook sentence in a chunk the
        run read, or in the source of a fact it was shown (verbatim, or the sentence it rests on)."""
        document, question = self.task.document, query_text(self.task)
        found: dict[tuple[int, int], Citation] = {}
        sources = [(self.graph.chunks[i].text, self.graph.chunks[i].start, i) for i in self.read]
        facts = [self.graph.facts[i] for i in self.seen]
        for line in (s.strip() for row in self.notebook.splitlines() for s in sentences(row)):
            if not line or instruction_shaped(line):
                continue
            spot: tuple[int, int, int] | None = None
            for fact in facts:
                if same(line.rstrip("."), fact.text.rstrip(".")):
                    spot = (fact.start, fact.end, fact.chunk)
                    break
            for text, offset, index in ([] if spot else sources):
                if (at := locate(line, text) or support(line, text, question)) is not None:
                    spot = (offset + at[0], offset + at[1], index)
                    break
            for fact in ([] if spot else facts):
                text = document[fact.start : fact.end]
                if (at := locate(line, text) or support(line, text, question)) is not None:
                    spot = (fact.start + at[0], fact.start + at[1], fact.chunk)
                    break
            if spot is not None and not instruction_shaped(document[spot[0] : spot[1]]):
                start, end, index = spot
                found.setdefault((start, end), Citation(document[start:end], start, end, index, line=line))
        return sorted(found.values(), key=lambda c: c.start)


# -- replies --------------------------------------------------------------------------------------
def read_choice(output: str, allowed: dict[str, str], *, notebook: bool = False) -> Choice | None:
    """The choice on the reply's last non-empty line (the only line where `notebook` is False), with
    the lines before it as the notebook; None where it is not one of `allowed` in its form.
    `allowed` maps a keyword to its argument: "list" (required), "none" (forbidden), "any" (ignored)."""
    lines = [line.strip() for line in unfence(output).strip().splitlines() if line.strip()]
    if not lines or (not notebook and len(lines) > 1):
        return None
    match = _CHOICE.match(lines[-1])
    if match is None:
        return None
    kind = match.group(1).upper().replace("NEIGHBORS", "NEIGHBOURS")
    argument = (match.group(2) or "").strip()
    rule = allowed.get(kind)
    if rule is None or (rule == "none" and argument) or (rule == "list" and not argument):
        return None
    items = tuple(i.strip().strip("[]#()").strip() for i in re.split(r"[,;]", argument)) if rule == "list" else ()
    items = tuple(i for i in items if i)
    if rule == "list" and not items:
        return None
    text = "\n".join(lines[:-1]) if notebook else ""
    return Choice(kind, items, _NOTEBOOK_MARK.sub("", text, count=1).strip())


# -- prompts ---------------------------------------------------------------------------------------
def extract_messages(session: Session, chunk: str, index: int, total: int) -> Messages:
    return session.prompt("graphreader", "extract").render(chunk=chunk, index=index, total=total)


def plan_messages(session: Session, task: Task) -> Messages:
    return render(session, "graphreader", "plan", task)


def facts_messages(session: Session, task: Task, plan: str, notebook: str, node: str, facts: str,
                   left_out: int) -> Messages:
    return render(session, "graphreader", "facts", task, plan=plan, notebook=notebook, node=node, facts=facts,
                  left_out=left_out)


def chunk_messages(session: Session, task: Task, plan: str, notebook: str, node: str, chunk: str, facts: list[int],
                   number: int, count: int, more: bool) -> Messages:
    return render(session, "graphreader", "chunk", task, plan=plan, notebook=notebook, node=node, chunk=chunk,
                  fact_ids=facts, number=number, count=count, more=more)


def answer_messages(session: Session, task: Task, plan: str, notebook: str) -> Messages:
    return render(session, "graphreader", "answer", task, plan=plan, notebook=notebook)
