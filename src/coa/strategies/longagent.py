"""LongAgent (Zhao et al. 2024): a leader and a team of members, one member per chunk, in rounds.

The leader sees the question and the dialogue so far, never the text. Each round it replies in a
strict form, `ASK: <question>` (the question decomposed: one fact to look up) or `ANSWER: <answer>`.
Every member reads its own chunk and answers the leader's question from it, or replies NO ANSWER
(refusals, found by `coa.answers.is_refusal`, drop out). Where members' answers differ (after
normalisation), members are paired off, each with the next one that answered otherwise; a pair's
two chunks are read together by one call, which answers again, and its answer replaces both (the
paper's inter-member communication: the conflicting members' texts merged and asked again). The
leader then asks again or answers; after `rounds` rounds it is asked for the answer.

Where it departs from the paper, and why:
- Members and leader are the prompted model itself; the paper fine-tunes LLaMA-2 members and
  lets the leader choose when to resolve conflicts. Here every conflict (up to `max_conflicts`
  pairs a round) is resolved as soon as it is seen, since a small model rarely asks for it.
- A pair's two chunks share one window: each is cut to half the room, around the place where its
  member's answer stands in it (or from its start where the answer is not written there).
- A leader reply not in the form is asked for once more with the reply shown; a second one ends
  the rounds (the leader is asked for the answer), or, before anything was asked, sends the
  question itself to the members. A question already asked ends the rounds too: the members
  would answer it as before.
- The dialogue is fitted to the leader's window: older rounds' answers are shortened first, then
  the oldest rounds left out, then the last round's answers that the fewest members gave. The
  members' answers are data, fenced: only the leader's own reply can end a round.
- Run limits: a window's worth of tokens and one call are kept for the leader's answer; a round
  a limit cuts short keeps the members that answered, and the leader answers with a warning.
- Citations (not in the paper): for each member's answer, where its chunk holds it word for word
  or the sentence it rests on (`coa.grounding`), so the answer is checked against what the
  members read. Questions only (qa, mcq).

Member prompts begin with the system text and the chunk, so a backend that keeps its last prompt's
prefix re-reads a member's chunk from its cache in later rounds."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydantic import Field

from coa.answers import is_refusal, normalize_answer
from coa.budget import MIN_CHUNK_TOKENS
from coa.errors import ConfigError, LimitError
from coa.fence import unfence
from coa.grounding import instruction_shaped, locate, support
from coa.models.base import Messages, Model, truncate_to_tokens
from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.options import Options
from coa.strategies.toolbox import answer_at_limit, fit_history, questions_only, raise_gathered, render
from coa.task import Call, Citation, Task, query_text

LEADER_TOKENS = 96  # a leader's turn: one question or a short answer, on one line
SHORT_TOKENS = 24  # an answer of an older round, once the dialogue no longer fits whole
# "ASK: ..." or "ANSWER: ..." opening the reply, markdown emphasis allowed ("**ASK:**").
_TURN = re.compile(r"^[*_#\s]*(ASK|ANSWER)[*_]*\s*:[*_]*\s*(.*)$", re.IGNORECASE)
_ANSWER_MARK = re.compile(r"^[*_#\s]*(?:final\s+)?answer[*_]*\s*:[*_]*\s*", re.IGNORECASE)


class LongAgentOptions(Options):
    rounds: int = Field(3, ge=1, le=8, description="rounds of questions the leader may ask the members before it must answer")
    max_conflicts: int = Field(2, ge=0, le=16,
                               description="pairs of members with conflicting answers that re-read both chunks, per round")
    member_tokens: int = Field(64, ge=8, le=1024, description="generation limit of a member's answer")
    chunk_tokens: int | None = Field(None, ge=MIN_CHUNK_TOKENS,
                                     description="tokens per member's chunk; auto: as many as the member's prompt leaves")


@dataclass
class Round:
    """One question to the members and what came back (members by chunk index, 0-based)."""

    question: str
    answers: dict[int, str] = field(default_factory=dict)  # the non-refusals, after conflicts were resolved
    refusals: list[int] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    asked: int = 0  # members whose call was made

    def record(self) -> dict[str, Any]:
        return {"question": self.question, "answers": dict(sorted(self.answers.items())), "refusals": sorted(self.refusals),
                "conflicts": self.conflicts}


@register
class LongAgent(Strategy):
    name = "longagent"
    description = "LongAgent: a leader asks one member per chunk in rounds; conflicting members re-read both chunks"
    Options = LongAgentOptions

    async def solve(self, session: Session, task: Task):
        questions_only(self.name, task)
        team = Team(session, task, self.options)
        answer, ended = await team.work()
        session.citations = team.citations()
        return answer, {"chunks": len(team.chunks), "chunk_tokens": team.budget, "ended": ended,
                        "dialogue": [r.record() for r in team.rounds]}


class Team:
    """The leader, the members (one per chunk) and the dialogue of one run."""

    def __init__(self, session: Session, task: Task, options: LongAgentOptions) -> None:
        self.session, self.task, self.options = session, task, options
        self.turn_tokens = max(LEADER_TOKENS, session.window.answer_tokens(task))
        # A member reads the leader's question (one reply long) or, failing one, the question itself.
        self.question_tokens = max(self.turn_tokens, session.window.tokens(query_text(task)))
        reserve = options.member_tokens + self.question_tokens
        fits = session.window.text_budget(member_messages(session, "", ""), reserve, "member")
        self.budget = min(options.chunk_tokens or fits, fits)
        self.chunks = session.window.chunks(task, self.budget)
        self.rounds: list[Round] = []
        self.read = False  # whether any member has answered: only then is there something to answer from
        self.leader_calls = 0
        self.resolve_calls = 0
        # Checked before any call is made, so that a window too small fails at once.
        session.window.text_budget(resolve_messages(session, "", ["", ""]), reserve, "resolve")
        # A leader's turn may show its previous reply, asked for again: room for two replies.
        session.window.text_budget(self.leader_messages([], 0, 1, ""), 2 * self.turn_tokens, "leader")
        session.window.split(self.leader_messages([], 0, 0, "", final=True), task, "leader's answer")

    # -- the rounds -----------------------------------------------------------------------------
    async def work(self) -> tuple[str, str]:
        """The answer and how the rounds ended: "answer" (the leader answered), "cap", "malformed",
        "repeated" or "limit" (then the leader was asked for the answer)."""
        session = self.session
        session.answer_reserve = session.window.size  # a run limit still leaves the leader its answer
        session.plan("leader", self.options.rounds + 1)
        try:
            for number in range(1, self.options.rounds + 1):
                move, text = await self.turn(number)
                if move == "ANSWER":
                    return text, "answer"
                if move == "FINAL":
                    return await self.answer(), text
                await self.ask(text)
            ended = "cap"
        except LimitError as e:
            answer_at_limit(session, e, bool(self.read), f"the leader answered from the {len(self.rounds)} round(s) asked so far")
            ended = "limit"
        return await self.answer(), ended

    async def turn(self, number: int) -> tuple[str, str]:
        """The leader's move: ("ASK", question), ("ANSWER", answer) or ("FINAL", why the leader is
        to be asked for the answer). A reply not in the form is asked for once more."""
        first, previous, malformed = not self.rounds, "", "not in the ASK:/ANSWER: form"
        for _ in range(2):  # the reply, and once more with it shown
            render = partial(self.leader_messages, number=number, previous=previous)
            call = await self.leader_call(self.fitted(render, self.turn_tokens), self.turn_tokens)
            move = read_turn(call.output, asking=first)
            if move is None:
                previous = unfence(call.output).strip() or "(empty)"
                call.note = f"{malformed}; asked again"
                continue
            if move[0] == "ASK" and any(normalize_answer(move[1]) == normalize_answer(r.question) for r in self.rounds):
                call.note = "a question asked before: the leader is asked for the answer"
                return "FINAL", "repeated"
            if move[0] == "ANSWER":
                call.note = "the leader answered"
            return move
        if first:
            call.note = f"{malformed}; the members are asked the question itself"
            return "ASK", query_text(self.task)
        call.note = f"{malformed}; the leader is asked for the answer"
        return "FINAL", "malformed"

    async def ask(self, question: str) -> None:
        """Every member answers `question` from its chunk, concurrently; then conflicts are resolved."""
        session, members = self.session, self.options.member_tokens
        asked = Round(question)
        self.rounds.append(asked)
        session.plan("member", len(self.chunks))
        outcomes = await asyncio.gather(*(
            session.call("member", i, member_messages(session, chunk.text, question), members, span=chunk.span)
            for i, chunk in enumerate(self.chunks)
        ), return_exceptions=True)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Call):
                self.read, asked.asked = True, asked.asked + 1
                if (answer := reply_text(outcome.output)) is None:
                    asked.refusals.append(i)
                    outcome.note = "refusal: drops out"
                else:
                    asked.answers[i] = answer
        if not asked.asked:
            self.rounds.pop()  # no member was asked: nothing to show the leader
        raise_gathered(outcomes)  # a member refused by a run limit: the round stays as far as it got
        await self.resolve(asked)

    async def resolve(self, asked: Round) -> None:
        """Each conflicting pair (up to `max_conflicts`) re-read together; its answer replaces both."""
        pairs = conflicting(asked.answers)
        records: list[dict[str, Any]] = [{"members": list(pair), "answers": [asked.answers[i] for i in pair], "reread": n < self.options.max_conflicts,
                    "resolved": None} for n, pair in enumerate(pairs)]
        asked.conflicts = records
        reread = pairs[: self.options.max_conflicts]
        if not reread:
            return
        first, self.resolve_calls = self.resolve_calls, self.resolve_calls + len(reread)
        self.session.plan("resolve", self.resolve_calls)
        outcomes = await asyncio.gather(*(self.resolve_call(first + n, asked, pair) for n, pair in enumerate(reread)),
                                        return_exceptions=True)
        for pair, record, outcome in zip(reread, records[: len(reread)], outcomes, strict=True):
            if not isinstance(outcome, Call):
                record["reread"] = False
                continue
            answer = reply_text(outcome.output)
            record["resolved"] = answer
            for i in pair:
                if answer is None:  # read together, the two chunks say nothing: neither answer stands
                    asked.answers.pop(i, None)
                else:
                    asked.answers[i] = answer
            outcome.note = f"members {pair[0]} and {pair[1]}: " + ("no answer from both chunks" if answer is None else "resolved")
        raise_gathered(outcomes)

    async def resolve_call(self, index: int, asked: Round, pair: tuple[int, int]) -> Call:
        session, reserve = self.session, self.options.member_tokens
        texts = fit_pair(session, lambda shown: resolve_messages(session, asked.question, shown),
                         [self.chunks[i].text for i in pair], [asked.answers[i] for i in pair], reserve)
        return await session.call("resolve", index, resolve_messages(session, asked.question, texts), reserve)

    async def answer(self) -> str:
        """The leader's final answer from the dialogue (a `final` call: run limits keep room for it)."""
        render = partial(self.leader_messages, number=0, previous="", final=True)
        _, limit = self.session.window.split(render([], 0), self.task, "leader's answer")
        call = await self.leader_call(self.fitted(render, limit), limit, final=True)
        return _ANSWER_MARK.sub("", unfence(call.output).strip(), count=1)

    # -- prompts --------------------------------------------------------------------------------
    async def leader_call(self, messages: Messages, limit: int, final: bool = False) -> Call:
        index, self.leader_calls = self.leader_calls, self.leader_calls + 1
        return await self.session.call("leader", index, messages, limit, final=final)

    def leader_messages(self, views: list[dict[str, Any]], left_out: int, number: int, previous: str,
                        final: bool = False) -> Messages:
        return render(self.session, "longagent", "leader", self.task, rounds=views, left_out=left_out,
                      members=len(self.chunks), index=number, total=self.options.rounds, previous=previous, final=final)

    def fitted(self, render: Callable[[list[dict[str, Any]], int], Messages], reserve: int) -> Messages:
        return render(*fit_dialogue(self.session, render, self.rounds, reserve))

    def citations(self) -> list[Citation]:
        """Where each member's answer stands in its chunk, word for word, or the sentence it rests on."""
        found: dict[tuple[int, int], Citation] = {}
        for asked in self.rounds:
            for i, answer in sorted(asked.answers.items()):
                chunk = self.chunks[i]
                place = locate(answer, chunk.text) or support(answer, chunk.text, asked.question)
                if place is None or instruction_shaped(chunk.text[place[0] : place[1]]):
                    continue
                start, end = chunk.start + place[0], chunk.start + place[1]
                found.setdefault((start, end), Citation(self.task.document[start:end], start, end, i, line=answer))
        return sorted(found.values(), key=lambda c: c.start)


def member_messages(session: Session, chunk: str, question: str) -> Messages:
    return session.prompt("longagent", "member").render(chunk=chunk, question=question)


def resolve_messages(session: Session, question: str, texts: list[str]) -> Messages:
    return session.prompt("longagent", "resolve").render(texts=texts, question=question)


# -- reading replies ----------------------------------------------------------------------------
def read_turn(output: str, *, asking: bool = False) -> tuple[str, str] | None:
    """("ASK" or "ANSWER", its text) where the reply's first line is in that form; None otherwise
    (and for ANSWER where only asking is allowed: nothing has been asked yet)."""
    text = unfence(output).strip()
    match = _TURN.match(text.splitlines()[0]) if text else None
    if match is None or not match.group(2).strip():
        return None
    move = match.group(1).upper()
    return None if asking and move == "ANSWER" else (move, match.group(2).strip())


def reply_text(output: str) -> str | None:
    """A member's answer on one line, or None for a refusal (or a reply with no words)."""
    text = " ".join(unfence(output).split())
    return None if not normalize_answer(text) or is_refusal(text) else text


def conflicting(answers: dict[int, str]) -> list[tuple[int, int]]:
    """Pairs of members whose answers differ, each member in one pair at most: in chunk order, each
    member not yet paired with the next one that answered otherwise."""
    keys = {i: normalize_answer(answers[i]) for i in sorted(answers)}
    free, pairs = list(keys), []
    while free:
        i = free.pop(0)
        j = next((j for j in free if keys[j] != keys[i]), None)
        if j is not None:
            free.remove(j)
            pairs.append((i, j))
    return pairs


# -- fitting the window -------------------------------------------------------------------------
def views(rounds: list[Round]) -> list[dict[str, Any]]:
    """The rounds as the leader's prompt shows them: agreeing members' answers grouped (members
    1-based), the answers most members share first."""
    shown = []
    for number, asked in enumerate(rounds, start=1):
        groups: dict[str, dict[str, Any]] = {}
        for i, answer in sorted(asked.answers.items()):
            groups.setdefault(normalize_answer(answer), {"members": [], "answer": answer})["members"].append(i + 1)
        shown.append({"number": number, "question": asked.question, "silent": asked.asked - len(asked.answers),
                      "groups": sorted(groups.values(), key=lambda g: -len(g["members"])), "omitted": 0})
    return shown


def shortened(model: Model, view: dict[str, Any], tokens: int) -> dict[str, Any]:
    """The round with each answer cut to `tokens` tokens, marked where cut."""
    cut = lambda text: short.rstrip() + " ..." if (short := truncate_to_tokens(model, text, tokens)) != text else text  # noqa: E731
    return {**view, "groups": [{**g, "answer": cut(g["answer"])} for g in view["groups"]]}


def fit_dialogue(session: Session, render: Callable[[list[dict[str, Any]], int], Messages], rounds: list[Round],
                 reserve: int) -> tuple[list[dict[str, Any]], int]:
    """The rounds to show and how many were left out, so that `render(shown, left_out)` leaves
    `reserve` tokens: the rounds' answers shortened first, then the oldest rounds left out, then
    the last round's answers that the fewest members gave."""
    def fewer(shown: list[dict[str, Any]], left_out: int) -> dict[str, Any] | None:
        last = shown[-1]
        if not last["groups"]:
            return None
        return {**last, "groups": last["groups"][:-1], "omitted": last["omitted"] + len(last["groups"][-1]["members"])}

    return fit_history(session, render, views(rounds), reserve, shorten=lambda v: shortened(session.model, v, SHORT_TOKENS),
                       squeeze=fewer, what="longagent: the leader's prompt")


def fit_pair(session: Session, render: Callable[[list[str]], Messages], texts: list[str], answers: list[str],
             reserve: int) -> list[str]:
    """Two chunks for one prompt that leaves `reserve` tokens: whole where they fit, else each cut to
    half the room around its member's answer; checked on the rendered prompt."""
    if session.window.room(render(texts), reserve) >= 0:
        return texts
    share = session.window.room(render(["", ""]), reserve) // 2
    while share > 0:
        cut = [excerpt(session.model, text, answer, share) for text, answer in zip(texts, answers, strict=True)]
        if session.window.room(render(cut), reserve) >= 0:
            return cut
        share -= max(1, share // 8)
    raise ConfigError(f"longagent: two chunks do not fit a {session.window.size}-token window; use a larger --window")


def excerpt(model: Model, text: str, answer: str, tokens: int) -> str:
    """At most `tokens` tokens of `text`: around the first place it holds `answer` (which a member
    read there), else from its start."""
    at = text.lower().find(answer.lower().rstrip(". ")) if answer.strip(". ") else -1
    if at < 0:
        return truncate_to_tokens(model, text, tokens)
    before = truncate_to_tokens(model, text[:at], tokens // 2, keep="tail")
    return before + truncate_to_tokens(model, text[at:], tokens - model.count_tokens(before))
