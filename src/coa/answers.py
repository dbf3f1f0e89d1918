"""Reading answers: normalisation, option letters, refusals, votes."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from coa.fence import unfence
from coa.task import LETTERS, Kind

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

# Sentences that only say the text does not help. Workers write these when their
# chunk is irrelevant; passed on as a CU they erase the evidence found so far
# (the paper's "chain collapse", appendix F.4). A negation about the story ("Macbeth
# does not mention the murder to his wife.", "There is no evidence of the murder, says
# Macbeth.") is evidence, not a refusal: each form below must be about the text, the
# writer's own knowledge, or stand alone.
_TEXT = r"""(?:text|passage|document|context|chunk|excerpt|section|part|source|article|story|summary|
    transcript|paragraph|material|content|information|input)"""
_TEXT_REF = rf"""(?:\b(?:in|from|within|by|on)\s+(?:the\s+|this\s+|that\s+|any\s+|given\s+|provided\s+|current\s+|
    previous\s+)*(?:{_TEXT}|it|this)\b|\bhere\b|\banywhere\b)"""
_META = r"(?:information|mention|details?|data|reference|answer|indication|context|clues?|facts?)"
_REFUSAL = re.compile(
    rf"""
    # the text, or "it", does not say
      (?:\b{_TEXT}\s+(?:\w+\s+){{0,2}}?|\b(?:it|this|that)\s+)(?:does|do|did|can|could|will)\s*(?:not|n't)\s+(?:\w+\s+){{0,2}}?
        (?:mention|contain|provide|say|specify|include|state|answer|tell|address|discuss|give|offer|reveal|cover|
        describe|explain|indicate|have)\b
    # "no information/details/mention ..." (meta nouns), or any "no ..." said of the text
    | \bno\s+(?:\w+\s+){{0,2}}?{_META}\b
    | \bno\s+(?:\w+\s+){{0,3}}?(?:evidence|relevant|mention)\b.*{_TEXT_REF}
    # "... is not mentioned", at the end of the sentence or said of the text
    | \bnot\s+(?:\w+\s+){{0,2}}?(?:mentioned|stated|specified|provided|given|discussed|addressed|described|
        indicated|explained|answered|included)(?:\W*$|\s+(?:\w+\s+){{0,3}}?{_TEXT_REF})
    | \bnot\s+(?:\w+\s+){{0,2}}?(?:found|known|clear|available|present|determined)\s+(?:\w+\s+){{0,3}}?{_TEXT_REF}
    | \b(?:cannot|can't|can\s+not)\s+be\s+(?:determined|answered|found|known|identified|inferred)\b
    # the writer does not know
    | \bi\s+(?:do\s+not|don't|cannot|can't|am\s+unable\s+to|am\s+not\s+able\s+to)\s+(?:\w+\s+){{0,2}}?
        (?:know|determine|answer|find|tell|say|identify)\b
    | \bunable\s+to\s+(?:\w+\s+){{0,2}}?(?:determine|answer|find|tell|identify)\b
    | \bnothing\s+(?:\w+\s+){{0,2}}?(?:relevant|useful|related|mentioned|about)\b
    # a sentence of one verdict word
    | ^\W*(?:none|unknown|n/?a|irrelevant|not\s+relevant|nothing|no\s+answer)\W*$
    """,
    re.IGNORECASE | re.VERBOSE,
)


def normalize_answer(text: str) -> str:
    """Lower case, no punctuation, articles or extra spaces (SQuAD / LongBench normalisation)."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def choice_letter(text: str, choices: int) -> str | None:
    """The option letter an answer picks ("B", "(B)", "B. Paris", "Answer: B"), if any."""
    valid = LETTERS[:choices]
    match = re.search(rf"(?<![A-Za-z])([{valid}])(?![a-z])", text.strip()[:200])
    return match.group(1) if match else None


def letter_list(text: str, choices: int) -> str | None:
    """The letters, in order and once each, of an answer that is nothing but option letters
    ("AC", "A, C", "(A) and (C)"); None for any other answer."""
    text = text.strip()
    body = re.sub(r"(?i)^\W*(?:the\s+)?(?:correct\s+)?(?:answers?|options?)(?:\s+(?:is|are))?\s*:?", "", text)
    letters = re.sub(r"\band\b|[\s,;/&+()\[\].]", "", body)
    if not letters or len(letters) > choices or not set(letters) <= set(LETTERS[:choices]):
        return None
    return "".join(sorted(set(letters)))


def choice_letters(text: str, choices: int) -> str:
    """Every option letter an answer picks, sorted: "A, C" and "AC" give "AC", and so does an
    answer that lists the options ("A. the first\nC. the third"); else the one `choice_letter` finds."""
    listed = letter_list(text, choices)
    if listed:
        return listed
    valid = LETTERS[:choices]
    labelled = re.findall(rf"(?<![A-Za-z])\(?([{valid}])[.)](?=\s|$)", text.strip())
    return "".join(sorted(set(labelled))) or choice_letter(text, choices) or ""


def picked_letters(text: str, choices: int) -> str:
    """The letters an answer picks as strategies read it: all of a bare letter list ("AC", "A, C"),
    else the one `choice_letter` finds, else none ("")."""
    return letter_list(text, choices) or choice_letter(text, choices) or ""


def is_refusal(text: str) -> bool:
    """True when every sentence of `text` only says that nothing relevant was found."""
    from coa.chunking import sentences

    parts = [s for s in sentences(text) if s.strip()] if text.strip() else []
    return all(_REFUSAL.search(s) for s in parts)


def vote_key(kind: Kind, answer: str, choices: int) -> str:
    """What two answers must share to count as the same vote."""
    if kind is Kind.MCQ:  # "AC" and "A" are different votes where several options may be right
        return picked_letters(answer, choices) or normalize_answer(answer)
    if kind is Kind.CODE:
        return " ".join(answer.split())
    return normalize_answer(answer)


def majority(answers: Sequence[str], keys: Sequence[str], weights: Sequence[float] | None = None) -> str:
    """The answer whose key has the most (weighted) votes; ties go to the earliest answer."""
    if not answers:
        return ""
    totals: dict[str, float] = {}
    for key, weight in zip(keys, weights or [1.0] * len(keys), strict=False):
        totals[key] = totals.get(key, 0.0) + weight
    best = max(totals.values())
    return next(a for a, k in zip(answers, keys, strict=False) if totals[k] == best)


def clean_answer(kind: Kind, text: str) -> str:
    """The answer as a user wants it: trimmed, without echoed fence tags; for code, the first line of code."""
    text = unfence(text)
    if kind is Kind.CODE:  # indentation is part of the line
        lines = [line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("```")]
        return lines[0] if lines else ""
    text = text.strip()
    return once(text) if kind is Kind.QA else text


def once(text: str) -> str:
    """A short answer that is one phrase twice over ("Eenasul Fateh Eenasul Fateh", copied from a passage's
    title and the sentence under it that opens with the same name) said once."""
    words = text.split()
    half = len(words) // 2
    if 0 < half <= 8 and len(words) % 2 == 0 and words[:half] == words[half:]:
        return " ".join(words[:half])
    return text
