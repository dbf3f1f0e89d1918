"""Reading answers: normalisation, option letters, refusals, votes."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from coa.task import LETTERS, Kind

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)

# Sentences that only say the text does not help. Workers write these when their
# chunk is irrelevant; passed on as a CU they erase the evidence found so far
# (the paper's "chain collapse", appendix F.4).
_REFUSAL = re.compile(
    r"""
    \b(?:not|never|nowhere)\s+(?:\w+\s+){0,3}?(?:mentioned|stated|specified|provided|given|found|available|
        discussed|addressed|included|present|described|known|clear|answered|determined|explained|indicated)\b
    | \bno\s+(?:\w+\s+){0,2}?(?:information|mention|evidence|details?|reference|answer|relevant|data|context|indication)\b
    | \b(?:does|do|did|can|could)\s*(?:not|n't)\s+(?:\w+\s+){0,2}?(?:mention|contain|provide|say|specify|include|
        state|answer|know|determine|find|tell|address|discuss|give)\b
    | \b(?:cannot|can't|unable\s+to)\s+(?:\w+\s+){0,2}?(?:determine|answer|find|tell|say|know|identify|be\s+determined)\b
    | \bi\s+(?:do\s+not|don't)\s+know\b
    | \bnothing\s+(?:\w+\s+){0,2}?(?:relevant|about|related|mentioned|useful)\b
    | ^\W*(?:none|unknown|n/a|irrelevant|not\s+relevant)\W*$
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


def is_refusal(text: str) -> bool:
    """True when every sentence of `text` only says that nothing relevant was found."""
    from coa.chunking import sentences

    parts = [s for s in sentences(text) if s.strip()] if text.strip() else []
    return all(_REFUSAL.search(s) for s in parts)


def vote_key(kind: Kind, answer: str, choices: int) -> str:
    """What two answers must share to count as the same vote."""
    if kind is Kind.MCQ:
        return choice_letter(answer, choices) or normalize_answer(answer)
    if kind is Kind.CODE:
        return " ".join(answer.split())
    return normalize_answer(answer)


def majority(answers: Sequence[str], keys: Sequence[str], weights: Sequence[float] | None = None) -> str:
    """The answer whose key has the most (weighted) votes; ties go to the earliest answer."""
    if not answers:
        return ""
    totals: Counter[str] = Counter()
    for key, weight in zip(keys, weights or [1.0] * len(keys)):
        totals[key] += weight
    best = max(totals.values())
    return next(a for a, k in zip(answers, keys) if totals[k] == best)
