"""The multihop dataset: two facts far apart, distractors of both, and nothing for retrieval by the
question alone to single out the second fact."""

import re
import shutil
from pathlib import Path

import pytest

from coa.chunking import sentences
from coa.errors import ConfigError
from coa.eval.datasets import load
from coa.eval.metrics import score
from coa.models.scripted import ScriptedModel
from coa.strategies.retrieval import bm25_scores
from coa.task import Kind
from conftest import EXAMPLE_PLAY, data_dir

count = ScriptedModel().count_tokens
KEY = re.compile(r"The key to the (\w+) room is kept by (\w+)\.")
LOCKER = re.compile(r"(\w+)'s locker number is (\d{7})\.")
FACT = re.compile(r"(The key to the \w+ room is kept by \w+\.|\w+'s locker number is \d{7}\.)")
OPTIONS = {"haystack": "books", "lengths": "1500,3000", "count": "3"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    (root / "books").mkdir()
    shutil.copy(EXAMPLE_PLAY, root / "books" / "macbeth.txt")
    return root


def examples(data, seed=0, **options):
    return load("multihop", data_dir=data, options={**OPTIONS, **options}, seed=seed, count_tokens=count)


@pytest.fixture(scope="module")
def items(data):
    return examples(data)


def hops(example) -> tuple[str, str]:
    """The example's true hop-1 and hop-2 sentences, found through the question's colour."""
    colour = example.task.query.split("key to the ")[1].split(" room")[0]
    [person] = [p for c, p in KEY.findall(example.task.document) if c == colour]
    return (f"The key to the {colour} room is kept by {person}.",
            f"{person}'s locker number is {example.references[0]}.")


def test_examples_are_seeded_deterministic_and_distinct(data, items):
    assert [e.id for e in items] == [f"multihop-{n}-{k}" for n in (1500, 3000) for k in range(3)]
    assert [e.task.document for e in examples(data)] == [e.task.document for e in items]
    assert [e.task.document for e in examples(data, seed=1)] != [e.task.document for e in items]
    assert len({e.task.document for e in items}) == len(items)
    for e in items:
        assert e.task.kind is Kind.QA and e.metric == "needle"
        assert score(e.metric, f"It is {e.references[0]}.", e.references) == 1.0


def test_documents_have_the_asked_length(items):
    for e in items:
        assert abs(count(e.task.document) - e.meta["length"]) <= 0.05 * e.meta["length"]
        assert e.meta["tokens"] == count(e.task.document)


def test_each_hop_is_there_once_hop_1_in_the_first_half_and_hop_2_in_the_second(items):
    for e in items:
        document = e.task.document
        first, second = hops(e)
        assert document.count(first) == 1 and document.count(second) == 1
        at = [document.index(first) / len(document), document.index(second) / len(document)]
        assert at == e.meta["positions"]
        assert at[0] < 0.5 < at[1]


def test_the_answer_is_unique_and_every_keeper_has_a_locker(items):
    for e in items:
        document, answer = e.task.document, e.references[0]
        keys, lockers = KEY.findall(document), LOCKER.findall(document)
        assert len(keys) == len(lockers) == e.meta["distractors"] + 1 == 7
        assert document.count(answer) == 1
        numbers = [number for _, number in lockers]
        assert len(set(numbers)) == len(numbers)  # every distractor's number differs from the answer
        # The distractor keepers have lockers too: only hop 1 tells which locker is asked for.
        assert sorted(p for _, p in keys) == sorted(p for p, _ in lockers)
        assert len({c for c, _ in keys}) == len(keys)


def passages(document: str) -> list[str]:
    """The document's sentences, each fact one of its own (a fact may be set mid-sentence)."""
    parts = FACT.split(document)  # text, fact, text, ...
    pieces = [s for i, part in enumerate(parts) for s in ([part] if i % 2 else sentences(part))]
    return [piece.strip() for piece in pieces if piece.strip()]


def test_bm25_on_the_question_finds_hop_1_but_cannot_single_out_hop_2(items):
    for e in items:
        pieces = passages(e.task.document)
        scores = dict(zip(pieces, bm25_scores(pieces, e.task.query), strict=True))
        first, second = hops(e)
        others = [scores[piece] for piece in pieces if LOCKER.fullmatch(piece) and piece != second]
        assert len(others) == e.meta["distractors"]
        assert scores[second] <= max(others)  # not ranked above every distractor: in fact all tie
        assert all(value == pytest.approx(scores[second]) for value in others)
        assert scores[first] == max(scores.values())  # while hop 1, which names the colour, comes first


def test_distractors_option_and_refusals(data):
    [lone] = examples(data, lengths="1500", count="1", distractors="0")
    assert len(KEY.findall(lone.task.document)) == len(LOCKER.findall(lone.task.document)) == 1
    with pytest.raises(ConfigError, match="distractors"):
        examples(data, distractors="12")
    with pytest.raises(ConfigError, match="no room"):
        examples(data, lengths="20")


def test_the_defaults_over_the_real_essays():
    if not (data_dir() / "haystack").is_dir():
        pytest.skip(f"real data not found at {data_dir()} (set COA_DATA_DIR)")
    items = load("multihop", data_dir=data_dir(), options={}, seed=0, count_tokens=count)
    assert len(items) == 10 and {e.meta["length"] for e in items} == {4000, 8000}
    for e in items:
        first, second = hops(e)
        assert e.task.document.count(first) == e.task.document.count(second) == e.task.document.count(e.references[0]) == 1
        assert abs(count(e.task.document) - e.meta["length"]) <= 0.05 * e.meta["length"]
