"""L-Eval's other exam layouts (tpo, coursera, sci_fi) and rows left to a judge, read alike by
leval:TASK and hf:'s L-Eval layout. The rows are written here in L-Eval's layout."""

import importlib.util
import json

import pytest

from coa.answers import choice_letters, picked_letters, vote_key
from coa.errors import InputError
from coa.eval.datasets import load
from coa.eval.datasets.leval import split_options
from coa.eval.datasets.leval_rows import SEVERAL_REQUIREMENT, TRUE_FALSE_REQUIREMENT
from coa.eval.metrics import score, true_false_parts
from coa.models.scripted import ScriptedModel
from coa.task import Kind

needs_datasets = pytest.mark.skipif(importlib.util.find_spec("datasets") is None,
                                    reason="the datasets library is not installed (pip install 'chainofagents[hf]')")

LECTURE = "Professor: Today we look at how geologists read the layers of rock in a canyon wall. " * 6
COURSE = "In this lesson we compare sorting methods: merge sort splits the list, insertion sort grows a sorted prefix. " * 6
STORY = "Captain Ilse Varga flew the Meridian past the speed of light to reach the colony on Tethys. " * 6

TPO = [{
    "input": LECTURE,
    "instructions": ["What is the lecture mainly about?\nA. to study the layers of rock\nB. to date a fossil\n"
                     "C. to map a river\nD. to measure a glacier",
                     "Why does the professor mention the canyon wall?\nA. It is dangerous\nB. It shows the layers in order\n"
                     "C. It was formed by wind\nD. It is the oldest rock on Earth"],
    "outputs": ["A", "B"],
    "source": "tpo", "evaluation": "exam",
}]
COURSERA = [{
    "input": COURSE,
    "instructions": ["Which of these sorting methods are named in the lesson?\nA. merge sort\nB. bubble sort\n"
                     "C. insertion sort\nD. radix sort",
                     "What does insertion sort grow?\nA) a sorted prefix\nB) a heap\nC) a tree\n   of buckets\nD) a stack"],
    "outputs": ["AC", "A"],
    "source": "coursera", "evaluation": "exam",
}]
SCI_FI = [{
    "input": STORY,
    "instructions": ["Did the Meridian travel faster than light? Answer this question with True or False. "
                     "[fact: Can a ship travel faster than light?]"],
    "outputs": ["True [fact: False]"],
    "source": "sci_fi", "evaluation": "exam",
}]
MIXED = [  # a summary file in which L-Eval leaves some rows to a judge
    {"input": LECTURE, "instructions": ["Summarize the lecture."], "outputs": ["Rock layers record time."],
     "source": "mixed", "evaluation": "LLM"},
    {"input": COURSE, "instructions": ["Summarize the lesson.", "Which sort splits the list?"],
     "outputs": ["Two sorting methods compared.", "merge sort"], "source": "mixed", "evaluation": "rouge"},
    {"input": STORY, "instructions": ["What did you think of the story?"], "outputs": ["Exciting."],
     "source": "mixed", "evaluation": "human"},
]
FILES = {"tpo": TPO, "coursera": COURSERA, "sci_fi": SCI_FI, "mixed": MIXED}


@pytest.fixture()
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    (tmp_path / "leval").mkdir()
    for name, rows in FILES.items():
        (tmp_path / "leval" / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return tmp_path


def examples(name, data, **options):
    return load(name, data_dir=data, options={k: str(v) for k, v in options.items()}, seed=0,
                count_tokens=ScriptedModel().count_tokens)


def test_tpo_options_on_lines_are_multiple_choice(data):
    first, second = examples("leval:tpo", data)
    assert (first.id, second.id) == ("tpo-0-0", "tpo-0-1")
    assert first.task.kind is Kind.MCQ and first.task.query == "What is the lecture mainly about?"
    assert first.task.choices == ("to study the layers of rock", "to date a fossil", "to map a river", "to measure a glacier")
    assert first.metric == second.metric == "choice" and first.task.requirement is None
    assert score("choice", "A. to study the layers of rock", first.references, choices=4) == 1.0
    assert score("choice", "B. to date a fossil", first.references, choices=4) == 0.0
    assert score("choice", "B", second.references, choices=4) == 1.0


def test_coursera_is_scored_by_its_set_of_letters(data):
    several, one = examples("leval:coursera", data)
    assert several.task.kind is one.task.kind is Kind.MCQ
    assert several.task.choices == ("merge sort", "bubble sort", "insertion sort", "radix sort")
    assert one.task.query == "What does insertion sort grow?"
    assert one.task.choices == ("a sorted prefix", "a heap", "a tree of buckets", "a stack")  # "A)" lines, one wrapped
    assert several.metric == one.metric == "choice_set"
    assert several.task.requirement == one.task.requirement == SEVERAL_REQUIREMENT  # one right option is not given away
    refs = several.references
    assert refs == ["AC"]
    for right in ("A, C", "AC", "C and A", "Answer: (A) (C)", "A. merge sort\nC. insertion sort"):
        assert score("choice_set", right, refs, choices=4) == 1.0, right
    assert score("choice_set", "A", refs, choices=4) == 0.25  # a proper subset
    assert score("choice_set", "C. insertion sort", refs, choices=4) == 0.25
    for wrong in ("A, B", "ABCD", "B", "D. radix sort", "none of them", ""):
        assert score("choice_set", wrong, refs, choices=4) == 0.0, wrong
    assert score("choice_set", "A", one.references, choices=4) == 1.0
    assert score("choice_set", "A, B", one.references, choices=4) == 0.0  # more than the reference


def test_sci_fi_scores_both_verdicts(data):
    [example] = examples("leval:sci_fi", data)
    assert example.task.kind is Kind.QA and example.metric == "true_false"
    assert example.task.query == SCI_FI[0]["instructions"][0]
    assert example.task.requirement == TRUE_FALSE_REQUIREMENT and "[fact: True]" in TRUE_FALSE_REQUIREMENT
    refs = example.references
    assert true_false_parts(refs[0]) == ["true", "false"]
    assert score("true_false", "True [fact: False]", refs) == 1.0
    assert score("true_false", "true. [fact: false, no real ship can]", refs) == 1.0
    assert score("true_false", "True, False", refs) == 1.0  # without the tag: the second verdict is the fact
    assert score("true_false", "True [fact: True]", refs) == 0.5
    assert score("true_false", "False [fact: True]", refs) == 0.0
    assert score("true_false", "I cannot tell", refs) == 0.0
    assert score("true_false", "False", ["False"]) == 1.0  # a reference without the tag has one verdict


def test_rows_left_to_a_judge_are_skipped_and_counted(data, capsys):
    found = examples("leval:mixed", data)
    assert [(e.id, e.metric) for e in found] == [("mixed-1-0", "rouge"), ("mixed-1-1", "rouge")]  # ids keep the row's place
    err = capsys.readouterr().err
    assert err.splitlines() == [f"warning: {data / 'leval' / 'mixed.jsonl'}: skipped 2 questions left to a judge "
                                "(evaluation LLM 1, human 1); --opt metric=... scores them"]
    judged = examples("leval:mixed", data, metric="qa_f1")
    assert [(e.id, e.metric) for e in judged] == [("mixed-0-0", "qa_f1"), ("mixed-1-0", "qa_f1"), ("mixed-1-1", "qa_f1"),
                                                  ("mixed-2-0", "qa_f1")]
    assert capsys.readouterr().err == ""


def test_a_file_left_wholly_to_a_judge_needs_a_metric(data):
    (data / "leval" / "judged.jsonl").write_text(json.dumps(MIXED[2]) + "\n")
    with pytest.raises(InputError, match=r"evaluation 'human' has no automatic metric.*--opt metric="):
        examples("leval:judged", data)
    [example] = examples("leval:judged", data, metric="rouge")
    assert (example.task.kind, example.metric) == (Kind.SUMMARIZE, "rouge")


@needs_datasets
@pytest.mark.parametrize("name", sorted(FILES))
def test_leval_and_hf_give_the_same_examples(data, name, capsys):
    own = examples(f"leval:{name}", data)
    hub = examples(f"hf:{data / 'leval' / f'{name}.jsonl'}", data)
    assert len(own) == len(hub) > 0
    for a, b in zip(own, hub, strict=True):
        assert a.id == f"{name}-{b.id}"
        assert (a.task, a.references, a.metric) == (b.task, b.references, b.metric)
        assert a.meta == {k: v for k, v in b.meta.items() if k != "evaluation"}
    if name == "mixed":  # each loader says what it skipped
        assert [line.split(": skipped ")[1] for line in capsys.readouterr().err.splitlines()] == [
            "2 questions left to a judge (evaluation LLM 1, human 1); --opt metric=... scores them"] * 2


def test_option_layouts():
    assert split_options("Q?\n\n (A) one\n (B) two") == ("Q?", ["one", "two"])
    assert split_options("Q?\nA. one\nB. two\nC. three") == ("Q?", ["one", "two", "three"])
    assert split_options("Q?\nA) one\nB) two") == ("Q?", ["one", "two"])
    assert split_options("A. Lincoln spoke first.\nB. Douglas replied.") == ("A. Lincoln spoke first.\nB. Douglas replied.", [])
    assert split_options("Who spoke?\nA. Lincoln spoke first.") == ("Who spoke?\nA. Lincoln spoke first.", [])
    assert split_options("Q?\nA. one\nC. three") == ("Q?\nA. one\nC. three", [])  # not in order: no options


def test_several_letters_are_not_cut_to_one():
    assert picked_letters("A, C", 4) == "AC" and picked_letters("B. Paris", 4) == "B" and picked_letters("Paris", 4) == ""
    assert choice_letters("A. merge sort\nC. insertion sort", 4) == "AC"
    assert vote_key(Kind.MCQ, "A, C", 4) == vote_key(Kind.MCQ, "AC", 4) == "AC" != vote_key(Kind.MCQ, "A", 4)
    assert vote_key(Kind.MCQ, "(B)", 4) == vote_key(Kind.MCQ, "B. Paris", 4) == "B"
