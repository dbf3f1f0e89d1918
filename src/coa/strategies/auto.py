"""Auto: one of vanilla, rag and coa per question, chosen before reading from what costs no model call.

The rule, in order:
  1. the document fits the window beside vanilla's answer prompt: vanilla (one call reads it all);
  2. a question (qa) whose shape chains through an entity ("the person who keeps the key ...": a
     relative pronoun after a content word) and whose best BM25 passage (rag's own 300-word
     passages) beats the next by at most MAX_MARGIN: coa, since no one passage holds the answer and
     the chain reads every part in order; any other question: rag (one call on the best passages);
  3. kinds without tuning data, fixed: summaries read the whole text, so coa; code completion
     and multiple choice go to rag (the lines or passages that match the query, one call).
A pick outside the `candidates` option falls back to the next of rag, coa, vanilla in that rule's
order. The chosen strategy runs on the same session, so its calls, citations and warnings are the
run's; the settings add what was picked, why, and the features it was picked from."""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, field_validator
from pydantic_core import PydanticCustomError

from coa.grounding import STOPWORDS, content_words
from coa.session import Session
from coa.strategies.base import Strategy, get_strategy, register
from coa.strategies.options import Options
from coa.strategies.retrieval import PSEUDO_QUERY, RetrievalOptions, bm25_scores, word_passages
from coa.strategies.toolbox import answer_messages
from coa.task import Kind, Task, query_text

CANDIDATES = ("vanilla", "rag", "coa")
# The largest margin of the best BM25 passage's score over the next one's at which a chained
# question goes to coa. Tuned by `.venv/bin/python benchmarks/auto_tune.py` (stored rows of multihop,
# niah and hotpotqa at window 1024, seed 0; no model runs), which prints the value to set here.
MAX_MARGIN = 1.025
# Whether rule 2 asks for a relative clause at all (False: the margin alone decides). Tuned by the same command.
NEEDS_CLAUSE = True

_RELATIVE = {"who", "whom", "whose", "which", "that"}
_WORD = re.compile(r"[\w'-]+")
# Each pick's fallbacks where it is not among the candidates.
_ORDER = {"vanilla": ("vanilla", "rag", "coa"), "rag": ("rag", "coa", "vanilla"), "coa": ("coa", "rag", "vanilla")}


class AutoOptions(Options):
    candidates: str = Field(",".join(CANDIDATES), description="the strategies auto may pick, comma-separated "
                            f"(of {', '.join(CANDIDATES)})")

    @field_validator("candidates")
    @classmethod
    def _known(cls, value: str) -> str:
        parse_candidates(value)
        return value


@register
class Auto(Strategy):
    name = "auto"
    description = "Picks vanilla, rag or coa per question from the document's length, BM25 and the question's shape"
    Options = AutoOptions
    prompt_sets = ("coa",)  # besides the shared prompts vanilla and rag read

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.candidates = parse_candidates(self.options.candidates)

    async def solve_many(self, runs: list[tuple[Session, Task]]) -> list[tuple[str, dict[str, Any]]]:
        """Each run's pick; runs with the same pick go to one instance of it together (coa shares a document's pass)."""
        picks = [pick(session, task, self.candidates) for session, task in runs]
        outcomes: list[tuple[str, dict[str, Any]] | None] = [None] * len(runs)
        for name in dict.fromkeys(p["picked"] for p in picks):
            chosen = get_strategy(name)(self.model, self.config, self.observer)
            mine = [i for i, p in enumerate(picks) if p["picked"] == name]
            done = await chosen.solve_many([runs[i] for i in mine])
            for i, (answer, settings) in zip(mine, done, strict=True):
                outcomes[i] = (answer, merged(picks[i], {**chosen.options.model_dump(), **settings}))
        return [outcome for outcome in outcomes if outcome is not None]


def parse_candidates(text: str) -> tuple[str, ...]:
    """The names in `text`; a schema error (one line, as the option's) for an unknown one or none."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown or not names:
        # a custom error: pydantic shows its message as given (the braces of names are not a template)
        raise PydanticCustomError("candidates", "{given}; choose from {choices}",
                                  {"given": ", ".join(unknown) or "none given", "choices": ", ".join(CANDIDATES)})
    return names


def merged(choice: dict[str, Any], settings: dict[str, Any]) -> dict[str, Any]:
    """The picked strategy's settings beside the choice; nested where a name would clash."""
    if settings.keys() & {*choice, "candidates"}:
        return {**choice, "picked_settings": settings}
    return {**settings, **choice}


def pick(session: Session, task: Task, candidates: tuple[str, ...] = CANDIDATES) -> dict[str, Any]:
    """{"picked", "why", "features"}: the rule's choice among `candidates`, before any call."""
    found = features(session, task)
    rule, why = decide(found)
    name = next(n for n in _ORDER[rule] if n in candidates)
    if name != rule:
        why += f"; {rule} is not among the candidates ({', '.join(candidates)}), so {name}"
    return {"picked": name, "why": why, "features": found}


def features(session: Session, task: Task) -> dict[str, Any]:
    """What the rule reads: vanilla's room beside the document's length, and for a document that
    does not fit, BM25 over rag's passages and the question's shape."""
    room, _ = session.window.split(answer_messages(session, task, ""), task, "vanilla")
    tokens = session.window.tokens(task.document)
    found: dict[str, Any] = {"kind": str(task.kind), "document_tokens": tokens, "room": room,
                             "window_ratio": round(tokens / session.window.size, 2)}
    if tokens <= room:
        return found
    query = task.query or (query_text(task) if task.kind is Kind.CODE else PSEUDO_QUERY)
    scores = sorted(bm25_scores(word_passages(task.document, RetrievalOptions().chunk_words), query), reverse=True)
    top, second = scores[0], scores[1] if len(scores) > 1 else 0.0
    mean = sum(scores) / len(scores)
    return {**found, "bm25_top": round(top, 3), "bm25_margin": round(top - second, 3),
            "bm25_top_mean": round(top / mean, 3) if mean > 0 else 0.0,
            "relative_clause": relative_clause(task.query or ""), "content_words": len(content_words(task.query or ""))}


def relative_clause(question: str) -> bool:
    """Whether a relative pronoun follows a content word ("the person who", "a group that"): the
    question reaches its answer through an entity it only describes."""
    words = _WORD.findall(question.lower())
    return any(w in _RELATIVE and words[i - 1] not in STOPWORDS for i, w in enumerate(words) if i > 0)


def decide(found: dict[str, Any], max_margin: float = MAX_MARGIN, needs_clause: bool = NEEDS_CLAUSE) -> tuple[str, str]:
    """(strategy, one sentence why) from `features`, under the rule's thresholds (its constants,
    unless a tuning tries others)."""
    if found["document_tokens"] <= found["room"]:
        return "vanilla", f"the document's {found['document_tokens']:,} tokens fit the {found['room']:,} vanilla leaves"
    too_long = f"the document's {found['document_tokens']:,} tokens exceed the {found['room']:,} vanilla leaves"
    kind = found["kind"]
    if kind == Kind.SUMMARIZE:
        return "coa", f"{too_long}, and a summary needs all of it"
    if kind != Kind.QA:
        return "rag", f"{too_long}; a {kind} task goes to rag (fixed rule)"
    clause, margin = found["relative_clause"], found["bm25_margin"]
    shape = "has a relative clause" if clause else "has no relative clause"
    if (clause or not needs_clause) and margin <= max_margin:
        return "coa", (f"{too_long}; the question {shape} and the best BM25 passage leads the next by only "
                       f"{margin:.2f} (at most {max_margin:g}), so no one passage is likely to hold the answer")
    if not clause and needs_clause:
        return "rag", f"{too_long}; the question {shape} (BM25 margin {margin:.2f}), so the best passages should do"
    return "rag", (f"{too_long}; the best BM25 passage leads the next by {margin:.2f} (over {max_margin:g}), "
                   "so it likely holds the answer")
