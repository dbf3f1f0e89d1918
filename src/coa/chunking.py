"""Token-budgeted splitting of a document into consecutive chunks (the paper's Algorithm 2).

Text is cut into sentences (prose) or lines (code), then chunks are filled
greedily while they fit the budget. A unit longer than the budget is cut into
the longest pieces that fit, at a whitespace where there is one. Chunks are
slices of the document: joined in order they give the document back exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import cache

Counter = Callable[[str], int]
BLOCK_CHARS = 20_000  # the longest text given to the sentence splitter at once


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # character offsets in the document
    end: int
    tokens: int
    first_token: int = 0  # tokens of the document before this chunk (by the chunks' own counts)

    @property
    def span(self) -> tuple[int, int]:
        return self.first_token, self.first_token + self.tokens

    def split(self, budget: int, count: Counter, *, lines: bool = False) -> list[Chunk]:
        """This chunk cut into chunks of at most `budget` tokens, with offsets in the document."""
        return [
            replace(part, start=part.start + self.start, end=part.end + self.start, first_token=part.first_token + self.first_token)
            for part in chunk_text(self.text, budget, count, lines=lines)
        ]


def chunk_text(text: str, budget: int, count: Counter, *, lines: bool = False) -> list[Chunk]:
    """Split `text` into chunks of at most `budget` tokens each, as counted by `count`."""
    if budget < 1:
        raise ValueError("budget must be positive")
    units = list(_fitting_units(text, budget, count, lines))
    chunks: list[Chunk] = []
    first = first_token = 0
    while first < len(units):
        last, summed = first, units[first][2]
        while last + 1 < len(units) and summed + units[last + 1][2] <= budget:
            last += 1
            summed += units[last][2]
        # Joined units can count a few tokens more than their sum: give back units until it fits.
        while True:
            start, end = units[first][0], units[last][1]
            tokens = count(text[start:end])
            if tokens <= budget or last == first:
                break
            last -= 1
        chunks.append(Chunk(text[start:end], start, end, tokens, first_token))
        first_token += tokens
        first = last + 1
    return chunks


def _fitting_units(text: str, budget: int, count: Counter, lines: bool) -> Iterator[tuple[int, int, int]]:
    """(start, end, tokens) of each sentence or line, long ones cut to fit the budget."""
    for start, end in _units(text, lines):
        tokens = count(text[start:end])
        while tokens > budget and end - start > 1:
            cut = _cut(text, start, end, budget, count)
            yield start, cut, count(text[start:cut])
            start = cut
            tokens = count(text[start:end])
        yield start, end, tokens


def _cut(text: str, start: int, end: int, budget: int, count: Counter) -> int:
    """The end of the longest prefix of text[start:end] within budget, moved back to a whitespace if any."""
    lo, hi = start + 1, end - 1  # always cut somewhere strictly inside
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[start:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    space = max(text.rfind(" ", start, lo), text.rfind("\n", start, lo))
    return space + 1 if space > start + (lo - start) // 2 else lo


def sentences(text: str) -> list[str]:
    """The sentences of `text`, each with the whitespace that follows it."""
    return [text[a:b] for a, b in _units(text, lines=False)]


def _units(text: str, lines: bool) -> Iterator[tuple[int, int]]:
    """Spans that tile the text: each unit runs from its sentence's (or line's) start to the next one's."""
    if lines:
        starts = [0]
        for line in text.splitlines(keepends=True)[:-1]:
            starts.append(starts[-1] + len(line))
    else:
        splitter = _sentence_splitter()
        found = {a + s for a, b in _blocks(text) for s, _ in splitter.span_tokenize(text[a:b])}
        starts = [0] + sorted(s for s in found if s > 0)
    for a, b in zip(starts, starts[1:] + [len(text)], strict=False):
        if b > a:
            yield a, b


def _blocks(text: str) -> Iterator[tuple[int, int]]:
    """Spans that tile the text, each at most BLOCK_CHARS long, ending at a paragraph break
    where there is one, else at a line break, else after a space.

    Punkt runs on one block at a time: its regular expressions run under a wall-clock
    limit (NLTK's guard against pathological input), which a whole book can exceed on a
    busy machine; on blocks the work is linear in the text and each call short.
    """
    start = 0
    while len(text) - start > BLOCK_CHARS:
        limit = start + BLOCK_CHARS
        for separator in ("\n\n", "\n", " "):
            cut = text.rfind(separator, start, limit)
            if cut > start:
                cut += len(separator)
                break
        else:
            cut = limit
        yield start, cut
        start = cut
    yield start, len(text)


@cache
def _sentence_splitter():
    # Punkt with its default parameters needs no downloaded data and returns character spans.
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer()
