"""The document apart from the question, for one lm-eval request.

lm-eval hands a model one prompt; a coa strategy needs the long document and the question
apart. They are taken from the request's doc (`Instance.doc`, the dataset row the prompt was
rendered from), by rules per task family, chosen by the task's name:

- LongBench (`longbench_*`): `context` / `input` (lm-eval's copy of the data names it `question`);
- RULER (`niah_*`, `ruler_*`): `input`, split at the template's question line (`Question: ...`,
  or NIAH's `What is/are all the special magic ...`), the answer prefix cut off;
- BABILong (`babilong*`): `input` / `question`;
- InfiniteBench (`infinitebench_*`): `context` / `input`;
- SCROLLS (`scrolls_*`): `text` / `question` (or the raw `input`, whose first paragraph is the question).

Where the family has no question (a summary, a count), the question is what the prompt says
besides the document: its instruction. A task of no known family, or whose doc lacks the
family's fields, gets the generic rule: the longest doc field found verbatim in the prompt is the
document, and the rest of the prompt the question. When no rule applies the prompt itself is the
document and its last non-empty line the question (`rule == "last-line"`; the caller warns once
per task).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Split:
    document: str
    question: str
    rule: str  # the family whose rule applied, "generic" or "last-line"
    instructed: bool = False  # the row had no question: the question is the prompt's instruction


MIN_DOCUMENT_CHARS = 1  # a doc field shorter than this is no document


def split_request(prompt: str, doc: Mapping[str, Any] | None, task: str | None) -> Split:
    """The document and question of a request whose rendered prompt is `prompt`."""
    doc = doc if isinstance(doc, Mapping) else {}
    family = family_of(task or "")
    if family is not None:
        found = FAMILIES[family](doc)
        if found is not None and found[0].strip():
            document, question = found
            if question.strip():
                return Split(document, question.strip(), family)
            return Split(document, instruction(prompt, document), family, instructed=True)
    found_generic = generic(prompt, doc)
    if found_generic is not None:
        return found_generic
    return last_line(prompt)


def family_of(task: str) -> str | None:
    name = task.lower()
    if "longbench" in name:
        return "longbench"
    if name.startswith(("niah", "ruler")) or "_ruler" in name or "_niah" in name:
        return "ruler"
    if "babilong" in name:
        return "babilong"
    if "infinitebench" in name:
        return "infinitebench"
    if "scrolls" in name:
        return "scrolls"
    return None


def _text(doc: Mapping[str, Any], *keys: str) -> str | None:
    for key in keys:
        value = doc.get(key)
        if isinstance(value, str):
            return value
    return None


def longbench(doc: Mapping[str, Any]) -> tuple[str, str] | None:
    context = _text(doc, "context")
    return None if context is None else (context, _text(doc, "input", "question") or "")


def babilong(doc: Mapping[str, Any]) -> tuple[str, str] | None:
    text, question = _text(doc, "input"), _text(doc, "question")
    return None if text is None or question is None else (text.strip(), question)


def infinitebench(doc: Mapping[str, Any]) -> tuple[str, str] | None:
    context = _text(doc, "context")
    return None if context is None else (context, _text(doc, "input") or "")


def scrolls(doc: Mapping[str, Any]) -> tuple[str, str] | None:
    text, question = _text(doc, "text"), _text(doc, "question")
    if text is not None:
        return text, question or ""
    raw = _text(doc, "input")  # the published row, before lm-eval's _process_doc: question, blank line, text
    if raw is None:
        return None
    cut = raw.find("\n\n")
    return (raw, "") if cut < 0 else (raw[cut + 2:], raw[:cut])


# The question sentence of each RULER template (niah, qa, vt, cwe, fwe), and the answer prefix
# that some templates append to it.
RULER_QUESTION = re.compile(r"(?:^|\n| )(Question: |What (?:are all|is) the special magic )")
RULER_ANSWER = re.compile(r"\s*Answer:.*$", re.DOTALL)


def ruler(doc: Mapping[str, Any]) -> tuple[str, str] | None:
    text = _text(doc, "input")
    if text is None:
        return None
    starts = list(RULER_QUESTION.finditer(text))
    if not starts:
        return None
    last = starts[-1]
    question = text[last.start(1):]
    if question.startswith("Question: "):
        question = question[len("Question: "):]
    question = RULER_ANSWER.sub("", question)
    return text[:last.start()].rstrip(), question


FAMILIES: dict[str, Callable[[Mapping[str, Any]], tuple[str, str] | None]] = {
    "longbench": longbench, "ruler": ruler, "babilong": babilong, "infinitebench": infinitebench, "scrolls": scrolls,
}


def instruction(prompt: str, document: str) -> str:
    """What the prompt says besides the document (the whole prompt where it does not hold it)."""
    before, found, after = prompt.partition(document) if document else (prompt, "", "")
    return "\n".join(p.strip() for p in (before, after) if p.strip()) if found else prompt.strip()


def generic(prompt: str, doc: Mapping[str, Any]) -> Split | None:
    """The longest doc field found verbatim in the prompt is the document."""
    fields = [v for v in doc.values() if isinstance(v, str) and len(v.strip()) >= MIN_DOCUMENT_CHARS and v in prompt]
    if not fields:
        return None
    document = max(fields, key=len)
    question = instruction(prompt, document)
    if not question or question == prompt.strip():
        return None
    return Split(document, question, "generic", instructed=True)


def last_line(prompt: str) -> Split:
    lines = [line.strip() for line in prompt.splitlines() if line.strip()]
    return Split(prompt, lines[-1] if lines else "", "last-line")
