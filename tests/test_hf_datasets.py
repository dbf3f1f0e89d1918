"""hf:NAME[:CONFIG]: Hugging Face datasets in the LongBench, L-Eval and LongBench v2 layouts, from local data only."""

import importlib.util
import json
import sqlite3
import sys

import pytest

from coa.errors import ConfigError, InputError
from coa.eval.datasets import load
from coa.models.scripted import ScriptedModel
from coa.task import Kind
from conftest import run_cli

needs_datasets = pytest.mark.skipif(importlib.util.find_spec("datasets") is None,
                                    reason="the datasets library is not installed (pip install 'chainofagents[hf]')")

LONGBENCH_ROWS = [
    {"_id": "lb-1", "dataset": "hotpotqa", "context": "Passage 1: Ada Brenner was born in Tolworth, on the river Weller.",
     "input": "Which river runs through Ada Brenner's birthplace?", "answers": ["Weller", "the river Weller"],
     "all_classes": None, "length": 12},
    {"_id": "lb-2", "dataset": "hotpotqa", "context": "Passage 1: The Kessel bridge opened in 1911 after six years of work.",
     "input": "When did the Kessel bridge open?", "answers": ["1911"], "all_classes": None, "length": 11},
]
STORY = "Mara kept the lighthouse on Gull Rock for twenty years. Every night she lit the lamp at dusk. " * 4
LEVAL_ROWS = [{
    "input": STORY,
    "instructions": ["Where was the lighthouse?\n\n (A) On Gull Rock\n (B) In the harbour\n (C) On a cliff\n (D) Inland",
                     "How long did Mara keep it?\n\n (A) Two years\n (B) Ten years\n (C) Twenty years\n (D) All her life"],
    "outputs": ["(A) On Gull Rock", "(C) Twenty years"],
    "source": "quality", "evaluation": "exam",
}]


@pytest.fixture(autouse=True)
def hf_cache(tmp_path, monkeypatch):
    """Keep what `datasets` caches (converted data files) inside the test's directory."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    if importlib.util.find_spec("datasets") is not None:
        import datasets

        monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def saved(rows, path, split=None):
    """`rows` written by save_to_disk, as one Dataset or as the named split of a DatasetDict."""
    import datasets

    table = datasets.Dataset.from_list(rows)
    (datasets.DatasetDict({split: table}) if split else table).save_to_disk(str(path))
    return path


def jsonl(rows, path):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def examples(name, **options):
    return load(name, data_dir=None, options={k: str(v) for k, v in options.items()}, seed=0,
                count_tokens=ScriptedModel().count_tokens)


def stored(run_dir):
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return {e: (json.loads(refs), metric) for e, refs, metric in db.execute("SELECT example, refs, metric FROM results")}


def test_without_the_library_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail, installed or not
    with pytest.raises(ConfigError, match=r"pip install 'chainofagents\[hf\]'"):
        examples(f"hf:{jsonl(LONGBENCH_ROWS, tmp_path / 'hotpotqa.jsonl')}")


@needs_datasets
@pytest.mark.parametrize("form", ["save_to_disk", "jsonl"])
def test_longbench_layout_takes_longbench_metric_for_the_rows_dataset(tmp_path, form):
    path = saved(LONGBENCH_ROWS, tmp_path / "lb") if form == "save_to_disk" else jsonl(LONGBENCH_ROWS, tmp_path / "lb.jsonl")
    first, second = examples(f"hf:{path}")
    assert (first.id, second.id) == ("lb-1", "lb-2")
    assert first.task.kind is Kind.QA and first.task.query.startswith("Which river") and "Tolworth" in first.task.document
    assert "Only give the answer" in first.task.requirement
    assert first.references == ["Weller", "the river Weller"] and second.references == ["1911"]
    assert first.metric == second.metric == "qa_f1"
    assert first.meta["dataset"] == "hotpotqa" and first.meta["all_classes"] == []


@needs_datasets
def test_config_names_the_longbench_dataset_and_metric_overrides(tmp_path):
    path = saved(LONGBENCH_ROWS, tmp_path / "lb")
    assert {e.metric for e in examples(f"hf:{path}:trec")} == {"classification"}  # CONFIG before each row's dataset
    assert {e.metric for e in examples(f"hf:{path}", metric="exact_match")} == {"exact_match"}
    own = saved([{**row, "dataset": "my_set"} for row in LONGBENCH_ROWS], tmp_path / "own")
    with pytest.raises(InputError, match=r"'my_set' is not a LongBench dataset.*--opt metric="):
        examples(f"hf:{own}")
    assert {(e.task.kind, e.metric) for e in examples(f"hf:{own}", metric="rouge")} == {(Kind.QA, "rouge")}
    with pytest.raises(ConfigError, match="metric='bleu' is not valid"):
        examples(f"hf:{own}", metric="bleu")


@needs_datasets
@pytest.mark.parametrize("form", ["save_to_disk", "jsonl"])
def test_leval_layout_gives_one_example_per_question(tmp_path, form):
    path = saved(LEVAL_ROWS, tmp_path / "quality", "test") if form == "save_to_disk" else jsonl(LEVAL_ROWS, tmp_path / "q.jsonl")
    first, second = examples(f"hf:{path}")
    assert (first.id, second.id) == ("0-0", "0-1")
    assert first.task.kind is Kind.MCQ and first.task.query == "Where was the lighthouse?"
    assert first.task.choices == ("On Gull Rock", "In the harbour", "On a cliff", "Inland")
    assert first.references == ["(A) On Gull Rock"] and second.references == ["(C) Twenty years"]
    assert first.metric == second.metric == "choice" and first.task.document == STORY
    plain = examples(f"hf:{path}", metric="exact_match")
    assert {(e.task.kind, e.metric) for e in plain} == {(Kind.QA, "exact_match")}


@needs_datasets
def test_longbench_v2_layout_reads_the_rows_as_longbench2_does(tmp_path):
    from test_longbench_v2 import ROWS

    # THUDM/LongBench-v2 has one split, train.
    path = saved(ROWS, tmp_path / "lb2", "train")
    got = examples(f"hf:{path}", split="train")
    assert [(e.id, e.task.kind, e.task.choices[1], e.references, e.metric) for e in got] == [
        ("66f36490821e116aacb2cc22", Kind.MCQ, "Pennick", ["B"], "answer_phrase"),
        ("66f36490821e116aacb2cc23", Kind.MCQ, "A ticket", ["C"], "answer_phrase")]
    assert got[1].meta["difficulty"] == "hard"
    assert {e.metric for e in examples(f"hf:{path}", split="train", metric="choice")} == {"choice"}
    bad = saved([{**ROWS[0], "answer": "E"}], tmp_path / "bad")
    with pytest.raises(InputError, match=r"row 0: 'answer' must be one of the letters A, B, C, D"):
        examples(f"hf:{bad}", layout="longbench2")


@needs_datasets
def test_leval_rows_left_to_a_judge_need_a_metric(tmp_path):
    path = jsonl([{**LEVAL_ROWS[0], "evaluation": "LLM"}], tmp_path / "judged.jsonl")
    with pytest.raises(InputError, match=r"evaluation 'LLM' has no automatic metric.*--opt metric="):
        examples(f"hf:{path}")
    assert {e.metric for e in examples(f"hf:{path}", metric="rouge")} == {"rouge"}


@needs_datasets
def test_layout_columns_and_split_are_checked(tmp_path):
    lb = saved(LONGBENCH_ROWS, tmp_path / "lb")
    with pytest.raises(ConfigError, match="layout='scrolls' is not valid: expected auto, longbench, leval or longbench2"):
        examples(f"hf:{lb}", layout="scrolls")
    with pytest.raises(InputError, match="no columns 'instructions', 'outputs' \\(the leval layout needs"):
        examples(f"hf:{lb}", layout="leval")
    other = jsonl([{"text": "a story", "label": 1}], tmp_path / "other.jsonl")
    with pytest.raises(InputError, match="columns text, label fit no layout \\(longbench: context, input, answers; leval: .*; longbench2: context, question"):
        examples(f"hf:{other}")
    by_split = saved(LEVAL_ROWS, tmp_path / "by-split", "validation")
    with pytest.raises(InputError, match="no split 'test'; it has validation"):
        examples(f"hf:{by_split}")
    assert len(examples(f"hf:{by_split}", split="validation")) == 2
    with pytest.raises(InputError, match="no such file or directory"):
        examples(f"hf:{tmp_path / 'missing.jsonl'}")


@needs_datasets
def test_a_folder_of_data_files_and_a_broken_file(tmp_path, capfd):
    (tmp_path / "files").mkdir()
    jsonl(LONGBENCH_ROWS, tmp_path / "files" / "test.jsonl")  # found as the "test" split
    assert {e.metric for e in examples(f"hf:{tmp_path / 'files'}:trec")} == {"classification"}
    with pytest.raises(ConfigError, match="no split|Unknown split"):
        examples(f"hf:{tmp_path / 'files'}", split="validation")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"context": "x"\nnot json\n')
    capfd.readouterr()
    with pytest.raises(ConfigError, match="broken.jsonl: could not load: JSON parse error"):
        examples(f"hf:{broken}")
    assert capfd.readouterr().err == ""  # the error above is the only report


@needs_datasets
def test_cli_evaluates_both_layouts(tmp_path):
    common = ["--strategies", "vanilla", "--model", "scripted", "--window", "2048"]
    result = run_cli("eval", "--dataset", f"hf:{saved(LONGBENCH_ROWS, tmp_path / 'lb')}", *common, "--out", tmp_path / "lb-run")
    assert result.returncode == 0, result.stderr.decode()
    assert stored(tmp_path / "lb-run") == {"lb-1": (["Weller", "the river Weller"], "qa_f1"), "lb-2": (["1911"], "qa_f1")}
    result = run_cli("eval", "--dataset", f"hf:{jsonl(LEVAL_ROWS, tmp_path / 'q.jsonl')}", *common, "--out", tmp_path / "lv-run")
    assert result.returncode == 0, result.stderr.decode()
    assert "Generating" not in result.stderr.decode()  # no progress bars for a local file
    assert stored(tmp_path / "lv-run") == {"0-0": (["(A) On Gull Rock"], "choice"), "0-1": (["(C) Twenty years"], "choice")}


@needs_datasets
def test_cli_errors_are_one_line(tmp_path, monkeypatch):
    common = ["--strategies", "vanilla", "--model", "scripted", "--window", "2048", "--out", tmp_path / "run"]
    result = run_cli("eval", "--dataset", f"hf:{saved(LONGBENCH_ROWS, tmp_path / 'lb')}", "--opt", "layout=leval", *common)
    assert result.returncode == 2
    assert result.stderr.decode().splitlines() == [
        f"error: hf:{tmp_path / 'lb'}: no columns 'instructions', 'outputs' (the leval layout needs input, instructions, outputs)"]
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")  # a hub name must not be looked up
    result = run_cli("eval", "--dataset", "hf:THUDM/LongBench:hotpotqa", *common)
    assert result.returncode == 2
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hf:THUDM/LongBench: could not load:"), lines
    assert "offline" in lines[0].lower()
