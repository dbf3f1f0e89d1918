"""Helpers for building long inputs from real text."""

from __future__ import annotations

import re
from collections.abc import Callable
from itertools import accumulate

from coa.chunking import sentences


def take_tokens(text: str, tokens: int, count: Callable[[str], int], *, keep: str = "head") -> str:
    """The longest prefix (or suffix) of `text` within `tokens` tokens, by binary search on characters."""
    span = tokens * 12  # no token of prose is longer than a dozen characters
    text = text[:span] if keep == "head" else text[-span:]
    if count(text) <= tokens:
        return text
    lo, hi = 0, len(text)
    part = (lambda n: text[:n]) if keep == "head" else (lambda n: text[len(text) - n :])
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(part(mid)) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return part(lo)


def sentence_boundary(text: str, fraction: float) -> int:
    """The sentence or paragraph start (or an end of the text) nearest to `fraction` of the way through.
    Not any line start: hard-wrapped text (the essays) breaks lines inside sentences."""
    target = fraction * len(text)
    paragraphs = [m.end() for m in re.finditer(r"\n\s*\n", text)]
    starts = {0, len(text), *accumulate(map(len, sentences(text))), *paragraphs}
    return min(starts, key=lambda s: abs(s - target))


def insert(text: str, position: int, piece: str) -> str:
    """`piece` as a sentence of its own at `position`."""
    before, after = text[:position].rstrip(), text[position:].lstrip()
    return " ".join(part for part in (before, piece, after) if part)
