"""Dataset loaders on the small fixtures in tests/fixtures/data."""

import shutil
from pathlib import Path

import pytest

from coa.errors import ConfigError, InputError
from coa.eval.datasets import load
from coa.eval.datasets.leval import split_options
from coa.models.scripted import ScriptedModel
from coa.task import Kind
from conftest import EXAMPLE_PLAY, REPO

count = ScriptedModel().count_tokens
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(FIXTURES / "data", root, dirs_exist_ok=True)
    (root / "books").mkdir()
    shutil.copy(EXAMPLE_PLAY, root / "books" / "macbeth.txt")
    return root


def examples(name, data, seed=0, limit=None, **options):
    return load(name, data_dir=data, options={k: str(v) for k, v in options.items()}, seed=seed, count_tokens=count, limit=limit)


def test_niah_grid_is_deterministic_and_puts_the_needle_where_it_says(data):
    grid = examples("niah", data, haystack="books", lengths="500,1000", depths="0,0.5,1")
    assert [(e.meta["length"], e.meta["depth"]) for e in grid] == [(n, d) for n in (500, 1000) for d in (0, 0.5, 1)]
    again = examples("niah", data, haystack="books", lengths="500,1000", depths="0,0.5,1")
    assert [e.task.document for e in grid] == [e.task.document for e in again]
    other_seed = examples("niah", data, seed=1, haystack="books", lengths="500,1000", depths="0,0.5,1")
    assert [e.task.document for e in grid] != [e.task.document for e in other_seed]
    for e in grid:
        key = e.task.query.split("for ")[1].split(" mentioned")[0]
        needle = f"One of the special magic numbers for {key} is: {e.references[0]}."  # the asked key's needle
        position = e.task.document.index(needle) / len(e.task.document)
        assert abs(position - e.meta["depth"]) < 0.08
        assert abs(count(e.task.document) - e.meta["length"]) <= 0.05 * e.meta["length"]
        assert e.metric == "needle" and e.task.kind is Kind.QA


def test_niah_multikey_hides_distractor_needles(data):
    [example] = examples("niah", data, haystack="books", lengths="800", depths="0.5", variant="multikey", keys=3)
    assert example.task.document.count("One of the special magic numbers for") == 3
    assert example.references[0] in example.task.document


def test_hotpotqa_is_padded_to_length_with_gold_paragraphs_at_seeded_positions(data):
    items = examples("hotpotqa", data, length=1500)
    assert len(items) == 5
    for e in items:
        assert 1200 <= count(e.task.document) <= 1500
        assert e.task.document.count("Passage ") >= e.meta["passages"]
        assert e.metric == "qa_f1" and e.references
    first = items[0]  # "Were Scott Derrickson and Ed Wood of the same nationality?"
    titles = [p.split("\n")[1] for p in first.task.document.split("\n\n") if p.startswith("Passage ")]
    gold = [i for i, title in enumerate(titles) if title in ("Scott Derrickson", "Ed Wood")]
    assert gold == [round(p * (len(titles) - 1)) for p in first.meta["gold_positions"]]
    assert [e.task.document for e in examples("hotpotqa", data, length=1500)] == [e.task.document for e in items]
    assert [e.task.document for e in examples("hotpotqa", data, seed=3, length=1500)] != [e.task.document for e in items]


def test_qmsum_queries_and_transcript(data):
    specific = examples("qmsum", data)
    assert len(specific) == 3 and all(e.task.kind is Kind.SUMMARIZE and e.metric == "rouge" for e in specific)
    assert specific[0].task.document.startswith("Lynne Neagle AM: Good afternoon")
    assert len(examples("qmsum", data, queries="all")) == 4  # the fixture meeting has one general query
    with pytest.raises(ConfigError):
        examples("qmsum", data, queries="some")


def test_leval_multiple_choice_and_summaries(data):
    quality = examples("leval:quality", data)
    assert [e.task.kind for e in quality] == [Kind.MCQ, Kind.MCQ]
    assert quality[0].task.query == "Who rescued the crew of the Petrel?"
    assert quality[0].task.choices == ("The harbour master", "Maren Holt", "The crew themselves", "A passing steamer")
    assert quality[0].metric == "choice" and quality[0].references == ["(B) Maren Holt"]
    [summary] = examples("leval:gov_report_summ", data)
    assert summary.task.kind is Kind.SUMMARIZE and summary.metric == "rouge"
    assert split_options("Plain question?") == ("Plain question?", [])


def test_longbench_fixture_uses_longbench_metric_and_fields(data):
    items = examples(f"longbench:{FIXTURES / 'longbench_hotpotqa.jsonl'}", data)
    assert [e.id for e in items] == ["lb-1", "lb-2"]
    assert items[0].metric == "qa_f1" and items[0].references == ["Weller", "the river Weller"]
    assert items[0].task.query.startswith("Which river") and "Ada Brenner" in items[0].task.document
    assert "Only give the answer" in items[0].task.requirement


def test_own_jsonl(tmp_path, data):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"document": "Ann is 30.", "question": "How old is Ann?", "answer": "30"}\n'
                    '{"context": "Bob likes tea.", "input": "What does Bob like?", "choices": ["tea", "coffee"], "answers": ["A"]}\n')
    first, second = examples(f"jsonl:{path}", data)
    assert (first.task.kind, first.metric, first.references) == (Kind.QA, "qa_f1", ["30"])
    assert (second.task.kind, second.metric) == (Kind.MCQ, "choice")
    with pytest.raises(InputError, match="no such JSONL"):
        examples(f"jsonl:{tmp_path / 'missing.jsonl'}", data)


def test_code_next_line_from_real_python_files(tmp_path, data):
    for i in range(3):
        (tmp_path / f"module{i}.py").write_text(
            "".join(f"def function_{j}(value):\n    result = value * {j} + {i}\n    return result\n\n" for j in range(200)))
    items = examples("code", data, root=tmp_path, length=300)
    assert len(items) == 3
    for e in items:
        assert e.task.kind is Kind.CODE and e.metric == "code_sim"
        assert count(e.task.document) <= 300
        assert e.references[0].startswith(("def function_", "result = value", "return result"))
        assert e.task.document.endswith("\n")
    assert [e.id for e in examples("code", data, root=tmp_path, length=300)] == [e.id for e in items]


def test_unknown_datasets_and_options_are_refused(data):
    with pytest.raises(ConfigError, match="unknown dataset"):
        examples("squad", data)
    with pytest.raises(ConfigError, match="unknown dataset 'nia'; did you mean 'niah'?"):
        examples("nia", data)
    with pytest.raises(ConfigError, match="no option colour"):
        examples("qmsum", data, colour="red")
    with pytest.raises(InputError, match="not found"):
        examples("niah", data / "nowhere")


def test_data_is_looked_for_in_the_user_data_directory_unless_told(monkeypatch, tmp_path):
    from coa.eval.datasets import default_data_dir

    monkeypatch.delenv("COA_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # the working directory plays no part
    assert default_data_dir() == tmp_path / "chainofagents" / "data"
    with pytest.raises(InputError, match=r"else \$COA_DATA_DIR, else .*chainofagents/data"):
        load("qmsum", data_dir=None, options={}, seed=0, count_tokens=len)
    monkeypatch.setenv("COA_DATA_DIR", "/somewhere/else")
    assert default_data_dir() == Path("/somewhere/else")
