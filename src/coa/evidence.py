"""The evidence CU: workers say what their chunk adds, the framework keeps it.

A worker that rewrites the CU spends decode time on every line it echoes, and a small model
drops, paraphrases or invents lines as it goes (the chain then loses what an earlier worker
found). Here a worker sees its chunk and the evidence found so far and writes only what its chunk
adds: sentences copied from it, or a fact it states in one short sentence ("none" when nothing
helps). Each sentence is grounded in the chunk: a copy brings in the whole document sentences it
came from, in the document's words; a restatement joins as written, cited at the sentence it
rests on, which must hold the question's subject; anything else is dropped. The chunk's
sentences that plainly bear on the question join too, by their words. The CU is kept by the
framework, so a line is never lost to a rewrite and never echoes the prompt. Only a full CU
drops lines, the least related to the question first.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Collection, Sequence
from functools import lru_cache

from rapidfuzz import fuzz

from coa.answers import is_refusal
from coa.chunking import sentences
from coa.grounding import content_words, instruction_shaped, near_copy, support, verbatim
from coa.task import Citation

MAX_UNIT_CHARS = 600  # a longer sentence (a transcript turn, a run-on line) is split at line breaks or spaces
MIN_UNIT_CHARS = 24  # a shorter one (a speaker's name, a stage direction) joins the sentence after it
MAX_MATCHED = 2  # sentences a chunk gives by their words, of each kind (question words, bridges)
# A word in more sentences of the document than this (or this share of them) is too common to name the
# question's subject or to link two facts.
MAX_BRIDGE_SENTENCES = 3
COMMON_SHARE = 0.02
REPLY_TOKENS = 96  # a worker's reply: a few sentences, or "none"
MAX_HOPS = 3  # links from the question's subject that the manager's evidence follows (see `connected`)


def units(document: str, start: int, end: int) -> list[tuple[int, int]]:
    """The sentences of `document[start:end]` as document offsets, without surrounding whitespace;
    long ones split so that one line of evidence stays short."""
    found, cursor = [], start
    for sentence in sentences(document[start:end]):
        a, b = cursor, cursor + len(sentence)
        cursor = b
        a += len(sentence) - len(sentence.lstrip())
        b -= len(sentence) - len(sentence.rstrip())
        found += _pieces(document, a, b)
    merged: list[tuple[int, int]] = []
    for span in found:  # "DUNCAN." and the line it introduces are one unit of evidence
        if merged and merged[-1][1] - merged[-1][0] < MIN_UNIT_CHARS:
            merged[-1] = (merged[-1][0], span[1])
        else:
            merged.append(span)
    return merged


def _pieces(document: str, start: int, end: int) -> list[tuple[int, int]]:
    if end <= start:
        return []
    if end - start <= MAX_UNIT_CHARS:
        return [(start, end)]
    limit = start + MAX_UNIT_CHARS
    cut = max(document.rfind("\n", start + 1, limit), document.rfind(" ", start + 1, limit))
    cut = cut if cut > start else limit
    head_end = cut
    while head_end > start and document[head_end - 1].isspace():
        head_end -= 1
    rest = cut
    while rest < end and document[rest].isspace():
        rest += 1
    return [(start, head_end), *_pieces(document, rest, end)]


def line(document: str, span: tuple[int, int]) -> str:
    """A sentence as prompts show it: on one line, its spacing collapsed."""
    return " ".join(document[span[0] : span[1]].split())


def gather(output: str, document: str, start: int, end: int, question: str, worker: int,
           known: Sequence[Citation]) -> tuple[list[Citation], int]:
    """The evidence a worker's output adds from its chunk `document[start:end]`, and how many of its
    sentences were dropped as found in neither the chunk nor its question-bearing sentences."""
    chunk = document[start:end]
    spans = units(document, start, end)
    subject = subject_words(document, question)
    spans_seen = {(c.start, c.end) for c in known if c.line == line(document, (c.start, c.end))}
    lines_seen = {_normal(c.line) for c in known}
    added: list[Citation] = []
    dropped = 0
    for sentence in sentences(output):
        text = sentence.strip()
        if not text or is_refusal(text) or instruction_shaped(text):
            continue
        place = verbatim(text, chunk) or near_place(_collapse(text), chunk)
        if place is not None:  # a copy: the whole sentences it came from, in the document's words
            found = covering(document, spans, start + place[0], start + place[1], worker)
        elif (held := content_words(text) & subject) and (rest := support(text, chunk, question, held)) is not None:
            # A restatement joins as written ("King Duncan gives Macbeth the title Thane of Cawdor."), cited at
            # the sentence it rests on, where that sentence holds the question's subject as the claim does
            # (the words of the question the document seldom uses: "title", "crimson").
            found = [Citation(chunk[rest[0] : rest[1]], start + rest[0], start + rest[1], worker, line=_collapse(text))]
        elif (rest := support(text, chunk, question)) is not None:
            # Resting on a sentence without that subject ("Siobhan's locker number is 3583328." for "the
            # locker number of the person who keeps the key to the crimson room"), the claim would pin a
            # distractor's fact on the question's subject: the sentence joins instead, as it is.
            found = covering(document, spans, start + rest[0], start + rest[1], worker)
        else:
            dropped += 1
            continue
        for c in found:
            if (c.start, c.end) in spans_seen or _normal(c.line) in lines_seen:
                continue
            spans_seen.add((c.start, c.end))
            lines_seen.add(_normal(c.line))
            added.append(c)
    return added, dropped


def covering(document: str, spans: Sequence[tuple[int, int]], start: int, end: int, worker: int) -> list[Citation]:
    """Citations of the sentences that `document[start:end]` covers, never of one shaped as an
    instruction to the model. A fuzzy alignment may reach a word or two into a neighbour: a sentence
    counts where the stretch holds half of it or three of its words."""
    found = []
    for a, b in spans:
        overlap = document[max(a, start) : min(b, end)]
        covered = len(overlap.strip()) * 2 >= b - a or len(re.findall(r"\w+", overlap)) >= 3
        if covered and not instruction_shaped(document[a:b]):
            found.append(citation(document, (a, b), worker))
    return found


def near_place(text: str, chunk: str) -> tuple[int, int] | None:
    """Where a long near copy of `text` (changed punctuation, a few letters) lies in `chunk`."""
    if not near_copy(text.lower(), chunk.lower()):
        return None
    match = fuzz.partial_ratio_alignment(text.lower(), chunk.lower())
    return (match.dest_start, match.dest_end) if match else None


def _normal(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def _collapse(text: str) -> str:
    return " ".join(text.split())


def citation(document: str, span: tuple[int, int], worker: int) -> Citation:
    return Citation(document[span[0] : span[1]], span[0], span[1], worker, line=line(document, span))


def render(evidence: Sequence[Citation]) -> str:
    return "\n".join(c.line for c in evidence)


def relevance(question: str) -> Callable[[str], int]:
    """How much a line is about the question: the content words it shares with it."""
    asked = content_words(question)
    return lambda text: len(content_words(text) & asked)


def related(document: str, start: int, end: int, question: str, known: Sequence[Citation], worker: int,
            ) -> list[Citation]:
    """The sentences of the chunk `document[start:end]` that plainly bear on the question, whatever
    the worker wrote: those holding a third of its content words, one of them a word the document
    seldom uses (the question's own subject: "crimson", not "room"), and those that name what the
    evidence found so far names beyond the question (a bridge: the person of a first hop) together
    with a word of the question (the second hop); at most MAX_MATCHED of each, the best first. A
    small reader often answers instead of copying, or copies the wrong line; these lines are found
    by their words, as the manager will read them."""
    asked = content_words(question)
    need = enough(asked)
    common = common_words(document)
    rare = subject_words(document, question)
    # A bridge names one thing: a word that few sentences use ("Kwame", not "kept"), in evidence about
    # the question's subject (the first hop).
    about = [words for c in known if (words := content_words(c.line)) & rare] if rare else []
    bridges = set().union(*about) - asked - common
    matched, bridged = [], []
    for span in units(document, start, end):
        words = content_words(line(document, span))
        shared = len(words & asked)
        if not shared or instruction_shaped(document[span[0] : span[1]]):
            continue
        if shared >= need and words & rare:
            matched.append(((len(words & rare), shared), span))
        elif words & bridges:
            bridged.append(((len(words & bridges), shared), span))
    best = [span for group in (matched, bridged)
            for _, span in sorted(group, key=lambda x: x[0], reverse=True)[:MAX_MATCHED]]
    return [citation(document, span, worker) for span in sorted(best)]


def enough(asked: Collection[str]) -> int:
    """How many of the question's content words a sentence must hold to bear on it plainly: a third, from 2 to 4."""
    return max(2, min(4, (len(asked) + 2) // 3))


def subject_words(document: str, question: str) -> set[str]:
    """The question's content words that the document seldom uses: what it is about ("crimson", "title"),
    not the words every sentence of its kind holds ("room", "king")."""
    return content_words(question) - common_words(document)


@lru_cache(maxsize=4)
def common_words(document: str) -> frozenset[str]:
    """The content words that more than MAX_BRIDGE_SENTENCES sentences of the document hold, or more
    than COMMON_SHARE of them in a long one."""
    spans = units(document, 0, len(document))
    counts = Counter(w for span in spans for w in content_words(line(document, span)))
    most = max(MAX_BRIDGE_SENTENCES, int(COMMON_SHARE * len(spans)))
    return frozenset(w for w, n in counts.items() if n > most)


def connected(evidence: Sequence[Citation], document: str, question: str, hops: int = MAX_HOPS) -> list[Citation]:
    """The evidence about the question's subject (lines holding a word of it the document seldom
    uses: "crimson", and the lines holding the most of the question's words, where those are enough
    to bear on it plainly: "science fantasy series of young adult books" in a document of such
    series) and the lines linked to those through what they name beyond the question (the person of
    a first hop, then that person's locker), up to `hops` links; all of it where no line holds the
    subject. A small manager answers from the first line that looks like an answer ("Nadia's locker
    number is ..."), so the lines that merely share the question's common words go."""
    asked = content_words(question)
    common = common_words(document)
    rare = asked - common
    words = [content_words(c.line) for c in evidence]
    kept = {i for i, w in enumerate(words) if w & rare}
    if not kept:
        return list(evidence)
    best = max(len(w & asked) for w in words)
    kept |= {i for i, w in enumerate(words) if len(w & asked) == best >= enough(asked)}
    for _ in range(hops):
        bridges = set().union(*(words[i] for i in kept)) - asked - common
        more = {i for i, w in enumerate(words) if i not in kept and w & bridges}
        if not more:
            break
        kept |= more
    return [c for i, c in enumerate(evidence) if i in kept]


def fit(evidence: list[Citation], limit: int, count: Callable[[str], int], question: str,
        chosen: Collection[tuple[int, int]] = (), subject: Collection[str] = ()) -> tuple[list[Citation], int]:
    """The evidence within `limit` tokens, in document order, and how many lines were dropped: the
    least related first, the oldest first among equals. A line ranks by the question's words it
    holds and by the words it shares with another line beyond the question: the two hops of a
    two-hop question hold each other up ("The key ... is kept by Kwame." / "Kwame's locker ...").
    The question's `subject` words (see `subject_words`) count twice. Lines a worker chose (`chosen`,
    their spans) go after every line found only by its words."""
    asked = content_words(question)
    kept = sorted(evidence, key=lambda c: c.start)
    words = {id(c): content_words(c.line) for c in kept}

    def rank(c: Citation) -> tuple[int, int, int]:
        # Only a line about the question holds another up: filler lines share words among themselves.
        others = set().union(*(words[id(o)] for o in kept if o is not c and words[id(o)] & asked)) - asked
        mine = words[id(c)]
        return ((c.start, c.end) in chosen, len(mine & asked) + len(mine & set(subject)) + len(mine & others), c.worker)

    dropped = 0
    while kept and count(render(kept)) > limit:
        kept.remove(min(kept, key=rank))
        dropped += 1
    return kept, dropped


def shrink(lines: list[str], question: str, share: float = 0.75) -> list[str]:
    """`lines` without the least related to the question (the earliest among equals) until about
    `share` of their characters are left: what is cut when a server refuses a prompt as too long."""
    score = relevance(question)
    kept = list(lines)
    target = share * sum(len(x) for x in lines)
    while len(kept) > 1 and sum(len(x) for x in kept) > target:
        kept.remove(min(kept, key=score))
    if len(kept) == 1 and len(kept[0]) > target:  # one long line: cut its end
        kept = [kept[0][: max(1, int(target))]]
    return kept
