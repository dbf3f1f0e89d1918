"""Two-hop questions over real text: the answer joins two facts placed far apart, so a reader has
to carry the first fact to the second. Seeded and deterministic.

Hop 1, in the first half, names a bridge person ("The key to the red room is kept by Dagny."); hop 2,
in the second half, gives that person's number ("Dagny's locker number is 4830127."). The question
names only the colour. Distractors of both hops tell other colours' keepers and those people's
lockers. Every locker sentence has the same shape and length, and shares with the question
"locker number" and nothing else (the person is not in the question), so ranking sentences or
passages by the question (BM25) ties the true hop-2 sentence with every distractor: retrieval
finds hop 1 but reaches hop 2 only by chance, while a reader that passes hop 1's person on finds it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from coa.errors import ConfigError
from coa.eval.datasets import Example, Source, dataset, numbers
from coa.eval.datasets.niah import background, haystack
from coa.eval.datasets.text import insert, sentence_boundary
from coa.task import Kind, Task

HOP1 = "The key to the {colour} room is kept by {person}."
HOP2 = "{person}'s locker number is {number}."
QUESTION = "What is the locker number of the person who keeps the key to the {colour} room?"
# Names are single words that the essays and plays never use (so a tokenizer or BM25 sees one
# term each, and no background sentence mentions them); none ends in "s", for a plain possessive.
_PEOPLE = ("Abebe Bronwyn Caoimhe Dagny Eero Farida Gunnhild Hamza Isolde Jovana Kwame Leilani Mihail Nadia "
           "Oluwaseun Priya Quillon Rosalind Siobhan Tariq Ulrika Valeria Wanjiru Xiomara").split()
_COLOURS = "red blue green yellow orange purple pink violet crimson teal silver grey".split()
HOP1_DEPTHS = (0.05, 0.45)  # where hop 1 may go; hop 2 goes in the second half, so the two lie far apart
HOP2_DEPTHS = (0.55, 0.95)


@dataset("multihop", "two hops far apart: the key-keeper of a colour's room (first half), then that person's "
                     "locker number (second half), with distractors=N of each hop; count=N per length in lengths, "
                     "over essays or books (needle)")
def multihop(source: Source) -> Iterator[Example]:
    lengths = source.option("lengths", [4000, 8000], numbers(int), valid=lambda v: min(v) > 0,
                            expected="comma-separated token counts above 0")
    per_length = source.option("count", 5, int, valid=lambda v: v >= 1, expected="1 or more")
    distractors = source.option("distractors", 6, int, valid=lambda v: 0 <= v < len(_COLOURS),
                                expected=f"0 to {len(_COLOURS) - 1}")
    text = background(source)
    for length in lengths:
        for k in range(per_length):
            yield example(text, length, k, distractors, source.seed, source.count_tokens)


def example(text: str, length: int, k: int, distractors: int, seed: int, count: Callable[[str], int]) -> Example:
    """The `k`th example of `length` tokens; person and colour 0 are the asked ones."""
    id = f"multihop-{length}-{k}"
    rng = random.Random(f"{seed}/{id}")
    colours, people = rng.sample(_COLOURS, distractors + 1), rng.sample(_PEOPLE, distractors + 1)
    keys = [HOP1.format(colour=c, person=p) for c, p in zip(colours, people, strict=True)]
    room = length - sum(count(s) + 1 for s in keys) - len(people) * (count(HOP2.format(person=people[0], number=1234567)) + 1)
    if room <= 0:
        raise ConfigError(f"multihop length {length} leaves no room for text around {2 * len(people)} facts; "
                          "use larger lengths")
    hay = haystack(text, room, rng, count)
    values = _numbers(rng, len(people), hay)
    lockers = [HOP2.format(person=p, number=v) for p, v in zip(people, values, strict=True)]
    # Distractors first, anywhere; then the two true hops at their drawn depths, hop 2 first so
    # that inserting hop 1 before it leaves it in the second half.
    for fact in rng.sample(keys[1:] + lockers[1:], 2 * distractors):
        hay = insert(hay, sentence_boundary(hay, rng.random()), fact)
    depths = [rng.uniform(*HOP1_DEPTHS), rng.uniform(*HOP2_DEPTHS)]
    hay = insert(hay, sentence_boundary(hay, depths[1]), lockers[0])
    document = insert(hay, sentence_boundary(hay, depths[0]), keys[0])
    return Example(
        id=id,
        task=Task(document, QUESTION.format(colour=colours[0]), Kind.QA),
        references=[values[0]],
        metric="needle",
        meta={"length": length, "depths": depths, "tokens": count(document), "distractors": distractors,
              "positions": [document.index(keys[0]) / len(document), document.index(lockers[0]) / len(document)]},
    )


def _numbers(rng: random.Random, n: int, hay: str) -> list[str]:
    """`n` distinct 7-digit numbers, none of them already in the background text."""
    chosen: list[str] = []
    while len(chosen) < n:
        value = str(rng.randrange(1_000_000, 10_000_000))
        if value not in chosen and value not in hay:
            chosen.append(value)
    return chosen
