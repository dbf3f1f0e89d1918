"""Token-budgeted splitting of a document into consecutive chunks (the paper's Algorithm 2).

The document is tokenized once into a `TokenIndex` (where each token starts). A chunk takes as
many tokens as the budget allows and ends at the last sentence (prose) or line (code) boundary
among them, which is what greedily packing whole sentences gives; a sentence longer than the
budget is cut at a whitespace where there is one. Chunks are slices of the document: joined in
order they give the document back exactly.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np

Counter = Callable[[str], int]
Offsets = Callable[[str], Sequence[int] | np.ndarray]  # where each token of a text starts, in characters
BLOCK_CHARS = 20_000  # the longest text given to the sentence splitter at once
COUNT_BLOCK_CHARS = 4_000  # without offsets, tokens are counted per block of this size
SEARCH_CHARS = 1_000  # a chunk's end is looked for first in this many characters before the budget's end
LOOKAHEAD_CHARS = 200  # the splitter sees this much past a candidate end, to judge a period


@dataclass(frozen=True)
class Chunk:
    text: str
    start: int  # character offsets in the document
    end: int
    tokens: int
    first_token: int = 0  # tokens of the document before this chunk

    @property
    def span(self) -> tuple[int, int]:
        return self.first_token, self.first_token + self.tokens


@dataclass(frozen=True)
class TokenIndex:
    """Where each token of a text starts, from one pass of the tokenizer over the whole text.

    `exact` is False where the positions are spread evenly over blocks whose tokens were
    counted (a tokenizer that gives no offsets): chunk sizes are then checked by counting.
    """

    starts: np.ndarray  # character offset of each token, non-decreasing
    length: int  # characters in the text
    exact: bool = True

    @property
    def tokens(self) -> int:
        return len(self.starts)

    def count(self, start: int, end: int) -> int:
        """Tokens that start in text[start:end]."""
        return int(np.searchsorted(self.starts, end) - np.searchsorted(self.starts, start))

    def reach(self, start: int, tokens: int) -> int:
        """The furthest end such that text[start:end] holds at most `tokens` tokens."""
        k = int(np.searchsorted(self.starts, start)) + tokens
        return self.length if k >= len(self.starts) else int(self.starts[k])


def token_index(text: str, count: Counter, offsets: Offsets | None = None) -> TokenIndex:
    """The index of `text`: from the tokenizer's offsets where it gives them, else from counts
    of blocks of text (a few thousand characters each, not every sentence: with a server
    tokenizer each count is a request)."""
    if offsets is not None:
        try:
            return TokenIndex(np.asarray(offsets(text), dtype=np.int64), len(text))
        except NotImplementedError:
            pass
    starts = []
    for a, b in blocks(text, COUNT_BLOCK_CHARS):
        n = count(text[a:b])
        starts.append(a + (np.arange(n, dtype=np.int64) * (b - a)) // max(n, 1))
    return TokenIndex(np.concatenate(starts) if starts else np.zeros(0, np.int64), len(text), exact=False)


class IndexCache:
    """The index of the last text asked for: a run tokenizes its document once, however many
    times it cuts it (re-splits, several questions over one document)."""

    def __init__(self, count: Counter, offsets: Offsets | None = None) -> None:
        self.count, self.offsets = count, offsets
        self._last: tuple[str, TokenIndex] | None = None

    def get(self, text: str) -> TokenIndex:
        if self._last is None or self._last[0] is not text:
            self._last = (text, token_index(text, self.count, self.offsets))
        return self._last[1]


def chunk_text(
    text: str, budget: int, index: TokenIndex, *, lines: bool = False, count: Counter | None = None,
    start: int = 0, end: int | None = None,
) -> list[Chunk]:
    """text[start:end] split into chunks of at most `budget` tokens each. Where the index is not
    exact, `count` measures each chunk and a chunk over budget is made shorter."""
    if budget < 1:
        raise ValueError("budget must be positive")
    end = len(text) if end is None else end
    check = count if count is not None and not index.exact else None
    chunks: list[Chunk] = []
    position = start
    while position < end:
        limit = min(end, max(index.reach(position, budget), position + 1))
        while True:
            cut = end if limit == end else _boundary(text, position, limit, end, lines)
            tokens = index.count(position, cut) if check is None else check(text[position:cut])
            if tokens <= budget or cut - position <= 1:
                break
            # Measured over budget (the index was an estimate): aim as much shorter as it was over.
            limit = position + max(1, min(cut - position - 1, (cut - position) * budget // tokens))
        chunks.append(Chunk(text[position:cut], position, cut, tokens, index.count(0, position)))
        position = cut
    return chunks


def _boundary(text: str, start: int, limit: int, end: int, lines: bool) -> int:
    """The end of a chunk that starts at `start` and may reach `limit`: the last sentence (or line)
    start in (start, limit], else after the last whitespace in the second half, else `limit`."""
    if lines:
        newline = text.rfind("\n", start, limit)
        if newline >= start:
            return newline + 1
    else:
        width = SEARCH_CHARS
        while True:  # near the limit first: the splitter's work stays proportional to the chunks
            window = max(start, limit - width)
            found = [s for s in _sentence_starts(text, window, min(end, limit + LOOKAHEAD_CHARS)) if window < s <= limit]
            if found:
                return found[-1]
            if window == start:
                break
            width *= 4
    space = max(text.rfind(" ", start, limit), text.rfind("\n", start, limit))
    return space + 1 if space > start + (limit - start) // 2 else limit


# One thread splits at a time. The work is pure Python, so threads gain nothing by overlapping,
# and Punkt's wall-clock guard (below) would count the time other threads hold the interpreter:
# under `coa serve`'s concurrent runs that tripled the CPU time and put the guard at risk.
_SPLITTING = threading.Lock()


def _sentence_starts(text: str, start: int, end: int) -> list[int]:
    with _SPLITTING:
        return [start + s for s, _ in _sentence_splitter().span_tokenize(text[start:end])]


PARAGRAPH = re.compile(r"\n[^\S\n]*\n\s*(?=\S)")  # a blank line: no sentence runs across it


def sentences(text: str) -> list[str]:
    """The sentences of `text`, each with the whitespace that follows it. A paragraph always starts
    one: Punkt reads across line breaks, so a paragraph that ends without a full stop (a heading, a
    title, "Ed Wood Sr.") would otherwise run into the next."""
    found = {s for a, b in blocks(text, BLOCK_CHARS) for s in _sentence_starts(text, a, b)}
    starts = [0] + sorted(s for s in found | {m.end() for m in PARAGRAPH.finditer(text)} if s > 0)
    return [text[a:b] for a, b in zip(starts, starts[1:] + [len(text)], strict=False) if b > a]


def blocks(text: str, size: int) -> Iterator[tuple[int, int]]:
    """Spans that tile the text, each at most `size` characters long, ending at a paragraph break
    where there is one, else at a line break, else after a space.

    Punkt runs on one block at a time: its regular expressions run under a wall-clock
    limit (NLTK's guard against pathological input), which a whole book can exceed on a
    busy machine; on blocks the work is linear in the text and each call short.
    """
    start = 0
    while len(text) - start > size:
        limit = start + size
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


# Abbreviations that stand before a name or a number, never at a sentence's end in practice: Punkt,
# untrained, ends a sentence at "Jr." or "Dr.", which cuts "Edward Davis Wood Jr. (1924-1978) was an
# American filmmaker" from its subject. Ambiguous ones ("no.", "co.", "etc.") are left to Punkt.
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "jr", "sr", "st", "prof", "gen", "col", "lt", "sgt", "capt",
                           "gov", "sen", "rev", "mt", "ft", "vs", "u.s", "e.g", "i.e"})


@cache
def _sentence_splitter():
    # Punkt with its default parameters needs no downloaded data and returns character spans.
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    parameters = PunktParameters()
    parameters.abbrev_types = set(ABBREVIATIONS)
    return PunktSentenceTokenizer(parameters)
