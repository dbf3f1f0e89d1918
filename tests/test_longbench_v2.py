"""longbench2:PATH: LongBench v2's rows (written here in its published layout), and its answer phrase."""

import json
import sqlite3

import pytest

from coa.errors import InputError
from coa.eval.datasets import load
from coa.eval.metrics import answer_phrase, score
from coa.models.scripted import ScriptedModel
from coa.task import Kind
from conftest import run_cli

ROWS = [
    {"_id": "66f36490821e116aacb2cc22", "domain": "Single-Document QA", "sub_domain": "Literary", "difficulty": "easy",
     "length": "short", "question": "Which town does the ferry leave from?",
     "choice_A": "Harlow", "choice_B": "Pennick", "choice_C": "Castell", "choice_D": "Orme",
     "answer": "B", "context": "The ferry to the islands leaves from Pennick every morning at six. " * 10},
    {"_id": "66f36490821e116aacb2cc23", "domain": "Long-dialogue History Understanding", "sub_domain": "Agent history QA",
     "difficulty": "hard", "length": "medium", "question": "What did the user ask for second?",
     "choice_A": "A map", "choice_B": "A ticket", "choice_C": "A timetable", "choice_D": "A refund",
     "answer": "C", "context": "User: I need a map. Assistant: Here it is. User: Now a timetable, please. " * 10},
]


def examples(path):
    return load(f"longbench2:{path}", data_dir=None, options={}, seed=0, count_tokens=ScriptedModel().count_tokens)


@pytest.mark.parametrize("form", ["json", "jsonl"])
def test_rows_load_as_four_choice_questions(tmp_path, form):
    path = tmp_path / f"data.{form}"
    path.write_text(json.dumps(ROWS) if form == "json" else "".join(json.dumps(r) + "\n" for r in ROWS))
    first, second = examples(path)
    assert (first.id, second.id) == ("66f36490821e116aacb2cc22", "66f36490821e116aacb2cc23")
    assert first.task.kind is Kind.MCQ and first.task.query == "Which town does the ferry leave from?"
    assert first.task.choices == ("Harlow", "Pennick", "Castell", "Orme")
    assert "The correct answer is (X)" in first.task.requirement
    assert (first.references, second.references) == (["B"], ["C"])
    assert first.metric == second.metric == "answer_phrase"
    assert second.meta == {"domain": "Long-dialogue History Understanding", "sub_domain": "Agent history QA",
                           "difficulty": "hard", "length": "medium"}


@pytest.mark.parametrize(("reply", "letter"), [
    ("The correct answer is (B)", "B"),
    ("Pennick is named twice. The correct answer is (B).", "B"),
    ("The correct answer is B", "B"),
    ("**The correct answer is (B)**", "B"),  # markdown bold, as its authors strip it
    ("The correct answer is (C), not B", "C"),
    ("B", None),  # no phrase: no answer
    ("(B) Pennick", None),
    ("the correct answer is (B)", None),  # the authors' patterns are case-sensitive
])
def test_the_letter_comes_from_the_answer_phrase(reply, letter):
    assert answer_phrase(reply) == letter
    assert score("answer_phrase", reply, ["B"]) == float(letter == "B")


@pytest.mark.parametrize(("change", "message"), [
    ({"choice_C": None}, "item 1: no 'choice_C' field"),
    ({"answer": "E"}, "item 1: 'answer' must be one of the letters A, B, C, D, not 'E'"),
    ({"context": 17}, "item 1: 'context' must be a text, not a number"),
    ({"question": ""}, "item 1: no 'question' field"),
])
def test_bad_rows_are_one_line(tmp_path, change, message):
    path = tmp_path / "data.json"
    path.write_text(json.dumps([{k: v for k, v in {**ROWS[0], **change}.items() if v is not None}]))
    with pytest.raises(InputError, match=f"^{path} {message}"):
        examples(path)
    with pytest.raises(InputError, match="no such JSON or JSONL file"):
        examples(tmp_path / "missing.json")


def test_cli_evaluates_a_file(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    result = run_cli("eval", "--dataset", f"longbench2:{path}", "--strategies", "vanilla", "--model", "scripted",
                     "--window", "2048", "--out", tmp_path / "run")
    assert result.returncode == 0, result.stderr.decode()
    with sqlite3.connect(tmp_path / "run" / "results.sqlite") as db:
        rows = dict(db.execute("SELECT example, metric FROM results"))
    assert rows == {"66f36490821e116aacb2cc22": "answer_phrase", "66f36490821e116aacb2cc23": "answer_phrase"}
