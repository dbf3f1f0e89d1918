"""rlm: a Recursive-Language-Model-style explorer (Zhang, Kraska, Khattab 2025, arXiv 2512.24601).

As in the paper, the root model never sees the document: it is told the question and the text's
length, and explores the text through tools, turn after turn, seeing only what its calls return;
it can hand pieces of the text to sub-calls (a model call over those pieces alone) and collect
their answers, one at a time or batched over every part; it ends the run by giving its answer.

The protocol. Each root reply's first line is one call (markdown emphasis and backticks around it
are allowed; anything after the first line is ignored):
  TOOL: search <pattern>    plain words: BM25 over 40-word passages (`retrieval.bm25_scores`);
                            anything else (or /pattern/): a regular expression, case ignored, run by
                            the `regex` package under a time limit (`regex_seconds`); at most
                            `max_hits` hits, each `start-end: snippet` where the snippet is
                            document[start:end] with its whitespace folded
  TOOL: read <start> <end>  document[start:end], cut to `read_chars` characters
  TOOL: ask <start>-<end>[,<start>-<end>...] :: <question>
                            one sub-call over those spans (each fenced, with its offsets; at most 8
                            spans, cut evenly where together they overflow the sub-call's window)
  TOOL: map <question>      one sub-call per part of the text (the parts cut to the sub-call's
                            window), run concurrently; the answers collected, refusals dropped
                            (`coa.answers.is_refusal`)
  TOOL: code                with `code=true` only: the lines after it, up to a line END, are Python
  <lines>                   run in `coa.sandbox` (a fresh interpreter in new user, network, mount and
  END                       pid namespaces: no network, no file writes, `code_seconds` of wall clock,
                            `code_memory_mb` of memory) with the text bound to the str `document`;
                            the root is shown what it printed (cut to `read_chars`) and how it ended
  TOOL: answer <text>       ends the run with that answer
A reply that is not such a call (no `TOOL:` line, an unknown tool, bad arguments, offsets out of
range, a map needing more sub-calls than are left) is never executed: the root is shown its reply
and told what was wrong, and asked again; after `retries` such replies in a row it answers from its
notes. Results are data: fenced in the root's prompt, and only the root's own reply is ever read
as a call.

Where it departs from the paper, and why:
- A fixed tool set instead of a Python REPL. The paper's root writes code in a REPL where the
  document is a variable; a 1.5B model writes such code poorly (the paper's Qwen3-8B struggles as
  an RLM), and executing model-written code needs a sandbox. The paper reports that grep and
  slicing alone match the full RLM on retrieval tasks: search and read are those, ask and map its
  sub-calls (map is its batched `llm_query` over chunks). The paper's REPL survives as an
  optional code tool (`code=true`, off by default): each run is a fresh sandboxed process, so no
  state carries from one run to the next, and the code cannot call sub-models (the paper's
  `llm_query` inside the REPL); only text it prints from the document counts as seen, for citations.
  Where the sandbox cannot be had (no user namespaces, not Linux), `code=true` is a ConfigError.
- One call per root turn, in a strict one-line form, so that a small model can follow it and a
  malformed call is caught before anything runs.
- Depth: a sub-call is a plain model call over its spans; it cannot call tools or sub-calls of its
  own (the paper's experiments use depth 1 as well, and it is enough for questions over one
  document). `depth=0` offers no sub-calls: search and read alone.
- The root's history (its calls and their results) is compacted to fit its window: older results
  shortened first, then the oldest calls left out, then the last result cut to the room left.
- map's parts are fixed (the text cut to the sub-call's window, `chunk_tokens`), where the paper's
  root chooses how to split the text in code; ask lets it choose spans of its own.
- Caps: `turns` executed calls, `subcalls` sub-calls (a map that needs more than are left is
  refused and the root told; an ask or map with none left ends the exploration), `retries`
  malformed replies in a row, and the session's run limits (max_calls, max_total_tokens, max_seconds; a window's worth of tokens and
  one call are kept back). At any of them the root answers from its notes (the history) in a final
  call, and the result carries a warning saying why.
- Citations (not in the paper): where the spans the run read, searched or asked over hold the
  answer (or a sub-call's answer that agrees with it) word for word, or the sentence it rests
  on (`coa.grounding`), so the answer is checked against what was seen. Questions only (qa, mcq).

The trace: each root call's note says the call it made (or what was wrong with it); the settings
record each turn's tool, arguments and outcome, the rejected replies, and why the run stopped
(`stopped`: answer, turns, subcalls, malformed or limit).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import Field, FiniteFloat

from coa import sandbox
from coa.answers import is_refusal, normalize_answer, picked_letters
from coa.budget import MIN_CHUNK_TOKENS
from coa.errors import ConfigError, LimitError
from coa.fence import unfence
from coa.grounding import content_words, instruction_shaped, locate, support
from coa.models.base import Messages, truncate_to_tokens
from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.options import Options
from coa.strategies.retrieval import bm25_scores
from coa.strategies.toolbox import answer_at_limit, fit_history, questions_only, raise_gathered, render
from coa.task import Call, Citation, Kind, Task, query_text

try:  # a dependency of nltk, so present wherever coa is; without it, search is BM25 only
    import regex
except ImportError:  # pragma: no cover
    regex = None

ROOT_TOKENS = 96  # a root turn: one call on one line
SHORT_TOKENS = 32  # an older call's result, once the history no longer fits whole
MIN_RESULT_TOKENS = 16  # the least the last result is cut to before the history is said not to fit
PASSAGE_WORDS = 40  # BM25 passages for a plain-word search
CONTEXT_CHARS = 60  # a search hit's snippet: this much text either side of the match
MATCH_CHARS = 120  # and at most this much of the match itself
MAX_SPANS = 8  # spans one ask may read
NOTE_TOKENS = 48  # a turn's note, in our words, beside its result
CODE_TOKENS = 320  # a root turn where the code tool is offered: a short program fits
MIN_QUOTE_CHARS = 20  # a printed line this long found verbatim in the text counts as seen
TOOLS = ("search", "read", "ask", "map", "code", "answer")
_CALL = re.compile(r"^[*_#`>\s]*TOOL[*_]*\s*:[*_`]*\s*([A-Za-z_]+)\b[*_`]*\s*(.*?)[*_`\s]*$", re.IGNORECASE)
_ANSWER_MARK = re.compile(r"^[*_#`\s]*(?:TOOL[*_]*\s*:[*_`]*\s*answer\b|(?:final\s+)?answer[*_]*\s*:)[*_`]*\s*",
                          re.IGNORECASE)
_WORDS = re.compile(r"[\w\s'’-]+")  # a plain-word pattern: searched by BM25
_SPAN = re.compile(r"(\d+)\s*-\s*(\d+)")
_SPANS = re.compile(r"\d+\s*-\s*\d+(?:\s*,\s*\d+\s*-\s*\d+)*")
_END = re.compile(r"^[*_`\s]*END[*_`\s]*$")
_MARKDOWN_FENCE = re.compile(r"^\s*```[\w+-]*\s*$")
_READ = re.compile(r"(\d+)\s*(?:[\s,-]|to)\s*(\d+)", re.IGNORECASE)


class RlmOptions(Options):
    turns: int = Field(8, ge=1, le=64, description="tool calls the root may make before it must answer")
    subcalls: int = Field(16, ge=0, le=512, description="sub-calls (ask: one; map: one per part) the root may use in all")
    depth: int = Field(1, ge=0, le=1, description="1: the root may make sub-calls (ask, map), which call no tools "
                                                  "themselves; 0: search and read only")
    read_chars: int = Field(2000, ge=100, le=100_000, description="the most characters one read shows")
    max_hits: int = Field(8, ge=1, le=50, description="hits one search shows")
    retries: int = Field(2, ge=0, le=5, description="malformed root replies in a row asked again before it answers from its notes")
    sub_tokens: int = Field(96, ge=8, le=1024, description="generation limit of a sub-call's answer")
    regex_seconds: FiniteFloat = Field(1.0, gt=0, le=30, description="time limit of one regular-expression search, in seconds")
    chunk_tokens: int | None = Field(None, ge=MIN_CHUNK_TOKENS,
                                     description="tokens per part for map; auto: as many as the sub-call's prompt leaves")
    code: bool = Field(False, description="offer the code tool: model-written Python run in a sandbox (no network, "
                                          "no file writes) with the text as a read-only str")
    code_seconds: FiniteFloat = Field(5.0, gt=0, le=60, description="wall-clock limit of one code run, in seconds")
    code_memory_mb: int = Field(256, ge=64, le=4096, description="memory limit of one code run, in MiB")


class Malformed(Exception):
    """A root reply that cannot be executed; its message tells the root what was wrong."""


@dataclass
class Turn:
    """One executed call: the tool, its arguments, what the root is shown (`note`, our words; `result`,
    the data) and what the trace records."""

    number: int
    tool: str
    call: str
    args: dict[str, Any]
    note: str = ""
    result: str = ""
    record: dict[str, Any] = field(default_factory=dict)

    def view(self) -> dict[str, Any]:
        return {"number": self.number, "call": self.call, "note": self.note, "result": self.result}

    def trace(self) -> dict[str, Any]:
        return {"turn": self.number, "tool": self.tool, "args": self.args, **self.record}


@dataclass(frozen=True)
class Seen:
    """A span of the document the run saw (read, a search snippet, or a sub-call's input), with the
    sub-call's answer over it where there was one."""

    start: int
    end: int
    turn: int
    answer: str = ""


class Stop(Exception):
    """The exploration ends before the root answered: `why` is the trace's `stopped`."""

    def __init__(self, why: str, warning: str) -> None:
        super().__init__(warning)
        self.why, self.warning = why, warning


@register
class Rlm(Strategy):
    name = "rlm"
    description = "RLM: the root never sees the text; it searches, reads and asks sub-calls over spans through fixed tools"
    Options = RlmOptions

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.options.code and (why := sandbox.unavailable()):
            raise ConfigError(f"rlm: code=true needs the code sandbox, and {why}; leave code off")

    async def solve(self, session: Session, task: Task):
        questions_only(self.name, task)
        explorer = Explorer(session, task, self.options)
        answer, stopped = await explorer.explore()
        session.citations = explorer.citations(answer)
        return answer, {"stopped": stopped, "parts": len(explorer.chunks), "chunk_tokens": explorer.budget,
                        "regex": regex is not None, "subcalls_used": explorer.used,
                        "history": [t.trace() for t in explorer.turns], "rejected": explorer.rejected}


class Explorer:
    """The root, its tools and its history, for one run."""

    def __init__(self, session: Session, task: Task, options: RlmOptions) -> None:
        self.session, self.task, self.options = session, task, options
        self.document = task.document
        self.turn_tokens = max(CODE_TOKENS if options.code else ROOT_TOKENS, session.window.answer_tokens(task))
        self.turns: list[Turn] = []
        self.seen: list[Seen] = []
        self.rejected: list[dict[str, Any]] = []
        self.used = 0  # sub-calls made
        self.root_calls = self.ask_calls = self.map_calls = 0
        # A sub-call reads its spans and a question written by the root (one root reply at most).
        reserve = options.sub_tokens + self.turn_tokens
        fits = session.window.text_budget(sub_messages(session, [], ""), reserve, "sub-call")
        self.budget = min(options.chunk_tokens or fits, fits)
        self.chunks = session.window.chunks(task, self.budget) if options.depth else []
        # Checked before any call is made, so that a window too small fails at once. A turn may show the
        # previous reply, asked for again: room for two replies and a shortened result.
        session.window.text_budget(self.root_messages([], 0, 1, "", "x"), 2 * self.turn_tokens, "root")
        session.window.split(self.root_messages([], 0, 0, final=True), task, "root's answer")

    # -- the turns -------------------------------------------------------------------------------
    async def explore(self) -> tuple[str, str]:
        """The answer and why the exploration stopped."""
        session = self.session
        session.answer_reserve = session.window.size  # a run limit still leaves the root its answer
        session.plan("root", self.options.turns + 1)
        try:
            for number in range(1, self.options.turns + 1):
                answer = await self.turn(number)
                if answer is not None:
                    return answer, "answer"
            raise Stop("turns", f"rlm: the root used its {self.options.turns} turns without answering; "
                                "it answered from its notes")
        except Stop as stop:
            session.warnings.append(stop.warning)
            why = stop.why
        except LimitError as e:
            answer_at_limit(session, e, any(c.role == "root" for c in session.calls),
                            f"the root answered from its notes after {len(self.turns)} call(s)")
            why = "limit"
        return await self.answer(), why

    async def turn(self, number: int) -> str | None:
        """One root call executed (its answer where it answered, else None). A reply that cannot be
        executed is asked for again, up to `retries` times."""
        previous = error = ""
        for _ in range(self.options.retries + 1):
            messages = self.fitted(partial(self.root_messages, number=number, previous=previous, error=error),
                                   2 * self.turn_tokens)
            call = await self.root_call(messages, self.turn_tokens)
            line = first_line(call.output)
            try:
                tool, args = parse_reply(call.output, len(self.document), self.options.depth > 0, self.options.code)
                if tool == "answer":
                    call.note = "answer"
                    return str(args["text"])
                turn = Turn(number, tool, tool + ("\n" if tool == "code" else " ") + args_text(tool, args), args)
                await self.execute(turn)
            except Malformed as e:
                previous, error = line or "(empty)", str(e)
                self.rejected.append({"turn": number, "reply": previous, "error": error})
                call.note = f"not executed: {error}"
                continue
            call.note = f"{turn.call}"
            return None
        raise Stop("malformed", f"rlm: {self.options.retries + 1} root replies in a row were not calls that can be "
                                "made; it answered from its notes")

    async def execute(self, turn: Turn) -> None:
        if turn.tool == "search":
            self.search(turn)
        elif turn.tool == "read":
            self.read(turn)
        elif turn.tool == "code":
            self.turns.append(turn)
            await self.run_code(turn)
            return
        elif turn.tool == "ask":
            self.spend(1)
            self.turns.append(turn)  # in the history even where a limit stops its sub-call
            await self.ask(turn)
            return
        else:
            self.spend(len(self.chunks))
            self.turns.append(turn)
            await self.map(turn)
            return
        self.turns.append(turn)

    def spend(self, calls: int) -> None:
        left = self.options.subcalls - self.used
        if left <= 0:
            raise Stop("subcalls", f"rlm: the root's {self.options.subcalls} sub-calls were used up; "
                                   "it answered from its notes")
        if calls > left:
            raise Malformed(f"map needs {calls} helper calls and only {left} are left: ask over a few spans instead")
        self.used += calls

    # -- tools -----------------------------------------------------------------------------------
    def search(self, turn: Turn) -> None:
        pattern, options = str(turn.args["pattern"]), self.options
        plain = turn.args["mode"] == "words"
        if plain or regex is None:
            hits, stopped = self.bm25_hits(pattern), ""
            how = "words, BM25" if plain else "words, BM25: regular expressions are not available"
        else:
            hits, stopped = self.regex_hits(pattern)
            how = "regular expression"
        shown = hits[: options.max_hits]
        for a, b in shown:
            self.seen.append(Seen(a, b, turn.number - 1))
        more = " (more not shown)" if len(hits) > len(shown) else ""
        turn.note = f"{len(shown)} hit{'s' if len(shown) != 1 else ''} ({how}){more}{stopped}" + (":" if shown else ".")
        turn.result = "\n".join(f"{a}-{b}: {' '.join(self.document[a:b].split())}" for a, b in shown)
        turn.record = {"hits": [[a, b] for a, b in shown], "how": how, **({"timed_out": True} if stopped else {})}

    def bm25_hits(self, words: str) -> list[tuple[int, int]]:
        starts = [m.start() for m in re.finditer(r"\S+", self.document)][::PASSAGE_WORDS]
        ends = [*starts[1:], len(self.document)]
        passages = [self.document[a:b] for a, b in zip(starts, ends, strict=True)]
        if not passages:
            return []
        scores = bm25_scores(passages, words)
        ranked = sorted((i for i in range(len(passages)) if scores[i] > 0), key=lambda i: -scores[i])
        # Each snippet is centred on the passage's rarest query word (the one that most tells it apart).
        patterns = [re.compile(rf"\b{re.escape(t)}", re.IGNORECASE) for t in dict.fromkeys(re.findall(r"\w+", words.lower()))]
        patterns.sort(key=lambda p: len(p.findall(self.document)))
        hits = []
        for i in ranked[: self.options.max_hits + 1]:
            a, b = starts[i], ends[i]
            found = next((m.start() for p in patterns if (m := p.search(passages[i]))), 0)
            at = a + found
            hits.append((max(a, at - CONTEXT_CHARS), min(b, at + CONTEXT_CHARS)))
        return hits

    def regex_hits(self, pattern: str) -> tuple[list[tuple[int, int]], str]:
        """Hits of `pattern` (already compiled once, so known to be valid) up to one more than shown;
        a search past its time limit is stopped with the hits found so far."""
        assert regex is not None
        seconds, hits = self.options.regex_seconds, []
        deadline = time.monotonic() + seconds
        try:
            for m in regex.finditer(pattern, self.document, regex.IGNORECASE, timeout=seconds):
                if m.end() > m.start():
                    end = min(m.end(), m.start() + MATCH_CHARS)
                    hits.append((max(0, m.start() - CONTEXT_CHARS), min(len(self.document), end + CONTEXT_CHARS)))
                if len(hits) > self.options.max_hits or time.monotonic() > deadline:
                    break
        except TimeoutError:
            return hits, f"; stopped at its time limit of {seconds:g} s: try a simpler pattern"
        return hits, ""

    def read(self, turn: Turn) -> None:
        start, end = int(turn.args["start"]), int(turn.args["end"])
        shown = min(end, start + self.options.read_chars)
        # What the root's prompt can show with this turn alone in its history (its note a few tokens).
        view = {"number": turn.number, "call": turn.call, "note": "", "result": ""}
        room = self.session.window.room(self.root_messages([view], 0, turn.number, "", "x"), 2 * self.turn_tokens)
        shown = start + len(truncate_to_tokens(self.session.model, self.document[start:shown], max(1, room - NOTE_TOKENS)))
        self.seen.append(Seen(start, shown, turn.number - 1))
        limit = (f"the read limit of {self.options.read_chars} characters" if shown == start + self.options.read_chars
                 else "fit the window")
        cut = f" (cut to {limit}; read on from {shown})" if shown < end else ""
        turn.note = f"Characters {start} to {shown}{cut}:"
        turn.result = self.document[start:shown]
        turn.record = {"shown": [start, shown]}

    async def run_code(self, turn: Turn) -> None:
        """The root's code, run in the sandbox (off the event loop: it blocks for up to its limit), never
        past the run's max_seconds. Document text it printed counts as seen."""
        seconds, left = self.options.code_seconds, self.session.seconds_left
        if left is not None:
            seconds = max(0.1, min(seconds, left))
        try:
            ran = await asyncio.to_thread(sandbox.run_code, str(turn.args["code"]), self.document, seconds=seconds,
                                          memory_mb=self.options.code_memory_mb, output_chars=self.options.read_chars)
        except sandbox.SandboxError as e:
            raise Stop("sandbox", f"rlm: the code sandbox failed ({e}); the root answered from its notes") from None
        for line in dict.fromkeys(line.strip() for line in ran.output.splitlines()):
            if len(line) >= MIN_QUOTE_CHARS and (at := self.document.find(line)) >= 0:
                self.seen.append(Seen(at, at + len(line), turn.number - 1))
        how = {"timeout": f"stopped at its time limit of {seconds:g} s", "ok": "ran"}.get(ran.outcome, ran.outcome)
        cut = f", cut to {self.options.read_chars} characters" if ran.cut else ""
        turn.note = f"The code {how}" + (f"; what it printed{cut}:" if ran.output.strip() else " and printed nothing.")
        turn.result = ran.output.strip()
        turn.record = {"outcome": ran.outcome, "exit_code": ran.exit_code, "seconds": ran.seconds, "cut": ran.cut}

    async def ask(self, turn: Turn) -> None:
        question = str(turn.args["question"])
        spans = self.fit_spans([tuple(s) for s in turn.args["spans"]], question)
        index, self.ask_calls = self.ask_calls, self.ask_calls + 1
        self.session.plan("ask", self.ask_calls)
        call = await self.session.call("ask", index, sub_messages(self.session, spans, question), self.options.sub_tokens)
        answer = reply_text(call.output)
        for span in spans:
            self.seen.append(Seen(span["start"], span["end"], turn.number - 1, answer or ""))
        where = ", ".join(f"{s['start']}-{s['end']}" for s in spans)
        cut = " (cut to fit the helper's window)" if [[s["start"], s["end"]] for s in spans] != turn.args["spans"] else ""
        call.note = "refusal" if answer is None else ""
        turn.note = f"The helper read {where}{cut}" + (" and found no answer." if answer is None else " and answered:")
        turn.result = answer or ""
        turn.record = {"read": [[s["start"], s["end"]] for s in spans], "answer": answer}

    async def map(self, turn: Turn) -> None:
        question, session = str(turn.args["question"]), self.session
        first, self.map_calls = self.map_calls, self.map_calls + len(self.chunks)
        session.plan("map", self.map_calls)
        outcomes = await asyncio.gather(*(
            session.call("map", first + i, sub_messages(session, [span(c.start, c.end, c.text)], question),
                         self.options.sub_tokens, span=c.span)
            for i, c in enumerate(self.chunks)
        ), return_exceptions=True)
        answers = {}
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Call):
                if (answer := reply_text(outcome.output)) is None:
                    outcome.note = "refusal: dropped"
                else:
                    answers[i] = answer
                    chunk = self.chunks[i]
                    self.seen.append(Seen(chunk.start, chunk.end, turn.number - 1, answer))
        made = sum(isinstance(o, Call) for o in outcomes)
        turn.note = (f"Answers from {len(answers)} of the {len(self.chunks)} parts"
                     + (f" ({len(self.chunks) - made} not read: the run's limit)" if made < len(self.chunks) else "")
                     + ("; the others found nothing" if len(answers) < made else "") + (":" if answers else "."))
        turn.result = "\n".join(f"Part {i + 1}, characters {self.chunks[i].start}-{self.chunks[i].end}: {a}"
                                for i, a in answers.items())
        turn.record = {"answers": {i: a for i, a in answers.items()}, "parts_read": made}
        raise_gathered(outcomes)

    def fit_spans(self, spans: list[tuple[int, int]], question: str) -> list[dict[str, Any]]:
        """The spans as one sub-call reads them: whole where they fit its window, else each cut (from
        its end) to an equal share of the room."""
        session, reserve = self.session, self.options.sub_tokens
        whole = [span(a, b, self.document[a:b]) for a, b in spans]
        if session.window.room(sub_messages(session, whole, question), reserve) >= 0:
            return whole
        room = session.window.room(sub_messages(session, [span(a, a, "") for a, _ in spans], question), reserve)
        share = max(1, room // len(spans))
        while share > 0:
            cut = []
            for a, b in spans:
                text = truncate_to_tokens(session.model, self.document[a:b], share)
                cut.append(span(a, a + len(text), text))
            if session.window.room(sub_messages(session, cut, question), reserve) >= 0:
                return cut
            share -= max(1, share // 8)
        raise ConfigError(f"rlm: a sub-call's spans do not fit a {session.window.size}-token window; use a larger --window")

    # -- the answer --------------------------------------------------------------------------------
    async def answer(self) -> str:
        """The root's answer from its notes (a `final` call: run limits keep room for it)."""
        render_final = partial(self.root_messages, number=0, final=True)
        _, limit = self.session.window.split(render_final([], 0), self.task, "root's answer")
        call = await self.root_call(self.fitted(render_final, limit), limit, final=True)
        call.note = "the answer from the root's notes"
        return _ANSWER_MARK.sub("", unfence(call.output).strip(), count=1)

    async def root_call(self, messages: Messages, limit: int, final: bool = False) -> Call:
        index, self.root_calls = self.root_calls, self.root_calls + 1
        return await self.session.call("root", index, messages, limit, final=final)

    def root_messages(self, turns: list[dict[str, Any]], left_out: int, number: int, previous: str = "",
                      error: str = "", final: bool = False) -> Messages:
        return render(self.session, "rlm", "root", self.task, turns=turns, left_out=left_out, length=len(self.document),
                      read_chars=self.options.read_chars, subcalls=self.options.depth > 0, code=self.options.code,
                      max_spans=MAX_SPANS,
                      parts=len(self.chunks), index=number, total=self.options.turns,
                      subcalls_left=self.options.subcalls - self.used, previous=previous, error=error, final=final)

    def fitted(self, render_with: Callable[[list[dict[str, Any]], int], Messages], reserve: int) -> Messages:
        return render_with(*fit_turns(self.session, render_with, [t.view() for t in self.turns], reserve))

    def citations(self, answer: str) -> list[Citation]:
        """Where the spans the run saw hold the answer (for a choice, its option's text) or a
        sub-call's answer that agrees with it: word for word, or the sentence it rests on."""
        targets = [answer]
        if self.task.kind is Kind.MCQ and (letters := picked_letters(answer, len(self.task.choices))):
            targets = [self.task.choices[ord(letter) - ord("A")] for letter in letters]  # each option picked
        words, question = content_words(" ".join(targets)), query_text(self.task)
        found: dict[tuple[int, int], Citation] = {}
        for seen in self.seen:
            text = self.document[seen.start : seen.end]
            lines = targets + ([seen.answer] if agrees(seen.answer, words) else [])
            for line in filter(str.strip, lines):
                if instruction_shaped(line):
                    continue
                place = locate(line, text) or support(line, text, question)
                if place is None or instruction_shaped(text[place[0] : place[1]]):
                    continue
                a, b = seen.start + place[0], seen.start + place[1]
                found.setdefault((a, b), Citation(self.document[a:b], a, b, seen.turn, line=line))
        return sorted(found.values(), key=lambda c: c.start)


def agrees(answer: str, words: set[str]) -> bool:
    """Whether a sub-call's answer says what the final answer (its content words `words`) says: the
    one's words among the other's (the root copied the helper's answer, or part of it)."""
    held = content_words(answer)
    return bool(held and words) and (held <= words or words <= held)


def span(start: int, end: int, text: str) -> dict[str, Any]:
    return {"start": start, "end": end, "text": text}


def sub_messages(session: Session, spans: list[dict[str, Any]], question: str) -> Messages:
    return session.prompt("rlm", "sub").render(spans=spans, question=question)


# -- reading root replies ------------------------------------------------------------------------
def first_line(output: str) -> str:
    text = unfence(output).strip()
    return text.splitlines()[0].strip() if text else ""


def parse_reply(output: str, length: int, subcalls: bool = True, code: bool = False) -> tuple[str, dict[str, Any]]:
    """The call a root reply makes: its first line's (`parse_call`), and for code the lines after it up
    to a line END (markdown code fences among them dropped); Malformed for anything that cannot run."""
    lines = unfence(output).strip().splitlines()
    tool, args = parse_call(lines[0].strip() if lines else "", length, subcalls, code)
    if tool != "code":
        return tool, args
    end = next((i for i, line in enumerate(lines[1:], 1) if _END.match(line)), None)
    if end is None:
        raise Malformed("code must end with a line that says END: TOOL: code, then the Python lines, then END")
    program = "\n".join(line for line in lines[1:end] if not _MARKDOWN_FENCE.match(line)).strip("\n")
    if not program.strip():
        raise Malformed("code needs Python lines between TOOL: code and END")
    try:
        compile(program, "<code>", "exec")
    except (SyntaxError, ValueError) as e:
        raise Malformed(f"the code is not valid Python ({type(e).__name__}: {e.msg if isinstance(e, SyntaxError) else e}"
                        + (f", line {e.lineno}" if isinstance(e, SyntaxError) and e.lineno else "") + ")") from None
    return tool, {"code": program}


def parse_call(line: str, length: int, subcalls: bool = True, code: bool = False) -> tuple[str, dict[str, Any]]:
    """The tool and its arguments from a reply's first line; Malformed (saying what was wrong) for
    anything that cannot be executed on a text of `length` characters."""
    match = _CALL.match(line)
    if match is None:
        raise Malformed("the reply's first line is not a call; write one line: TOOL: <tool> <arguments>")
    tool, rest = match.group(1).lower(), match.group(2).strip()
    if len(rest) >= 2 and rest[0] == "(" and rest[-1] == ")":  # written as a function call: read(0, 100)
        rest = rest[1:-1].strip()
    offered = [t for t in TOOLS if (subcalls or t not in ("ask", "map")) and (code or t != "code")]
    if tool not in offered:
        raise Malformed(f"there is no such tool in this run; the tools are: {', '.join(offered)}")
    if tool == "search":
        pattern = rest.strip()
        if len(pattern) >= 2 and pattern[0] == pattern[-1] and pattern[0] in "\"'":
            pattern = pattern[1:-1].strip()
        mode = "words" if _WORDS.fullmatch(pattern) else "regex"
        if len(pattern) >= 3 and pattern[0] == pattern[-1] == "/":
            pattern, mode = pattern[1:-1], "regex"
        if not pattern.strip():
            raise Malformed("search needs words or a regular expression: TOOL: search <pattern>")
        if mode == "regex" and regex is not None:
            try:
                regex.compile(pattern, regex.IGNORECASE)
            except (regex.error, ValueError, OverflowError) as e:
                raise Malformed(f"the pattern is not a valid regular expression ({e})") from None
        return tool, {"pattern": pattern, "mode": mode}
    if tool == "read":
        read = _READ.fullmatch(rest.rstrip("."))
        if read is None:
            raise Malformed("read takes two character offsets: TOOL: read <start> <end>")
        start, end = in_range(int(read.group(1)), int(read.group(2)), length)
        return tool, {"start": start, "end": end}
    if tool == "code":
        if rest:
            raise Malformed("code's Python goes on the lines after TOOL: code, ended by a line END")
        return tool, {}
    if tool == "ask":
        where, sep, question = rest.partition("::")
        if not sep or not _SPANS.fullmatch(where.strip()) or not question.strip():
            raise Malformed("ask takes spans and a question: TOOL: ask <start>-<end>[,<start>-<end>...] :: <question>")
        spans = [in_range(int(a), int(b), length) for a, b in _SPAN.findall(where)]
        if len(spans) > MAX_SPANS:
            raise Malformed(f"ask reads at most {MAX_SPANS} spans")
        return tool, {"spans": [list(s) for s in spans], "question": question.strip()}
    if not rest:
        raise Malformed(f"{tool} needs {'a question' if tool == 'map' else 'the answer'} after it: TOOL: {tool} <text>")
    return tool, {"question" if tool == "map" else "text": rest}


def in_range(start: int, end: int, length: int) -> tuple[int, int]:
    if not 0 <= start < end <= length:
        raise Malformed(f"offsets out of range: a span is <start> <end> with 0 <= start < end <= {length}")
    return start, end


def args_text(tool: str, args: dict[str, Any]) -> str:
    """A call as the history shows it."""
    if tool == "search":
        return f"/{args['pattern']}/" if args["mode"] == "regex" else str(args["pattern"])
    if tool == "read":
        return f"{args['start']} {args['end']}"
    if tool == "ask":
        return ",".join(f"{a}-{b}" for a, b in args["spans"]) + f" :: {args['question']}"
    if tool == "code":
        return f"{args['code']}\nEND"
    return str(args["question"])


def reply_text(output: str) -> str | None:
    """A sub-call's answer on one line, or None for a refusal (or a reply with no words)."""
    text = " ".join(unfence(output).split())
    return None if not normalize_answer(text) or is_refusal(text) else text


# -- fitting the window --------------------------------------------------------------------------
def shortened(session: Session, view: dict[str, Any], tokens: int) -> dict[str, Any]:
    """The turn with its result cut to `tokens` tokens, marked where cut."""
    short = truncate_to_tokens(session.model, view["result"], tokens)
    return view if short == view["result"] else {**view, "result": short.rstrip() + " ..."}


def fit_turns(session: Session, render_with: Callable[[list[dict[str, Any]], int], Messages],
              views: list[dict[str, Any]], reserve: int) -> tuple[list[dict[str, Any]], int]:
    """The turns to show and how many were left out, so that `render_with(shown, left_out)` leaves
    `reserve` tokens: older results shortened first (oldest first), then the oldest turns left out,
    then the last result cut to the room that is left."""
    def cut(shown: list[dict[str, Any]], left_out: int) -> dict[str, Any] | None:
        room = session.window.room(render_with([{**shown[-1], "result": ""}], left_out), reserve) - 4
        return shortened(session, shown[-1], room) if room >= MIN_RESULT_TOKENS else None

    return fit_history(session, render_with, views, reserve, shorten=lambda v: shortened(session, v, SHORT_TOKENS),
                       squeeze=cut, what="rlm: the root's prompt", keep_last=True)
