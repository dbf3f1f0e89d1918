"""Needle in a haystack over real text (RULER's form): a lengths x depths grid, one needle
or several keyed needles of which one is asked for. Seeded and deterministic."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

from coa.errors import ConfigError, InputError
from coa.eval.datasets import Example, Source, dataset, numbers
from coa.eval.datasets.text import insert, sentence_boundary, take_tokens
from coa.task import Kind, Task

NEEDLE = "One of the special magic numbers for {key} is: {value}."
QUESTION = "What is the special magic number for {key} mentioned in the provided text?"
_ADJECTIVES = "amber brave calm dusty eager fancy gentle hollow icy jolly keen lively misty noble olive proud quiet rustic silent tidy".split()
_NOUNS = "anchor basket candle dragon engine falcon garden harbor island jacket kettle lantern meadow needle orchard pepper quartz river saddle tunnel".split()
_KEYS = [f"{a}-{n}" for a in _ADJECTIVES for n in _NOUNS]


def background(source: Source) -> str:
    kind = source.option("haystack", "essays", valid=lambda v: v in ("essays", "books"), expected="essays or books")
    if kind == "books":
        books = sorted((source.data_dir / "books").glob("*.txt"))
        if not books:
            raise InputError(f"{source.data_dir / 'books'}: no .txt books (point --data-dir or COA_DATA_DIR at the data)")
        return "\n\n".join(p.read_text(encoding="utf-8") for p in books)
    return source.file("haystack", "paul_graham_essays.txt").read_text(encoding="utf-8")


def haystack(text: str, tokens: int, rng: random.Random, count: Callable[[str], int]) -> str:
    """`tokens` tokens of `text` from a seeded paragraph start in its first half, wrapping round
    to the beginning where the text runs out."""
    start = text.find("\n\n", rng.randrange(len(text) // 2)) + 2
    return take_tokens(text[start:] + "\n\n" + text[:start], tokens, count)


@dataset("niah", "needle in a haystack: lengths x depths grid over essays or books, single or multi-key")
def niah(source: Source) -> Iterator[Example]:
    lengths = source.option("lengths", [1000, 2000, 4000, 8000, 16000], numbers(int), valid=lambda v: min(v) > 0,
                            expected="comma-separated token counts above 0")
    depths = source.option("depths", [0.0, 0.25, 0.5, 0.75, 1.0], numbers(float), valid=lambda v: all(0 <= d <= 1 for d in v),
                           expected="comma-separated fractions from 0 to 1")
    variant = source.option("variant", "single", valid=lambda v: v in ("single", "multikey"), expected="single or multikey")
    keys = 1
    if variant == "multikey":
        keys = source.option("keys", 4, int, valid=lambda v: 1 <= v <= len(_KEYS), expected=f"1 to {len(_KEYS)}")
    per_cell = source.option("per_cell", 1, int, valid=lambda v: v >= 1, expected="1 or more")
    text = background(source)
    count = source.count_tokens
    for length in lengths:
        for depth in depths:
            for k in range(per_cell):
                id = f"{variant}-{length}-{depth:g}-{k}"
                rng = random.Random(f"{source.seed}/{id}")
                names = rng.sample(_KEYS, keys)
                needles = [NEEDLE.format(key=name, value=rng.randrange(1_000_000, 10_000_000)) for name in names]
                room = length - sum(count(n) + 1 for n in needles)
                if room <= 0:
                    raise ConfigError(f"niah length {length} leaves no room for text around {keys} needle(s) of "
                                      f"{length - room} tokens; use larger lengths")
                hay = haystack(text, room, rng, count)
                # Distractor needles first, at random depths; the asked one last, where the grid says.
                for needle in needles[1:]:
                    hay = insert(hay, sentence_boundary(hay, rng.random()), needle)
                at = sentence_boundary(hay, depth)
                document = insert(hay, at, needles[0])
                value = needles[0].rsplit(" ", 1)[1].rstrip(".")
                yield Example(
                    id=id,
                    task=Task(document, QUESTION.format(key=names[0]), Kind.QA),
                    references=[value],
                    metric="needle",
                    meta={"length": length, "depth": depth, "position": document.index(needles[0]) / len(document),
                          "tokens": count(document), "keys": keys},
                )
