"""Dataset loaders on the small fixtures in tests/fixtures/data."""

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from coa.errors import ConfigError, InputError
from coa.eval.datasets import DATASETS, Example, load
from coa.eval.datasets.leval import split_options
from coa.models.scripted import ScriptedModel
from coa.task import Kind, Task
from conftest import EXAMPLE_PLAY, REPO, data_dir

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


@pytest.fixture(scope="module")
def documents(tmp_path_factory) -> Path:
    """QuALITY and QMSum files of three documents each: the fixtures' one, told apart by a first line."""
    root = tmp_path_factory.mktemp("documents")
    (root / "leval").mkdir()
    (root / "qmsum").mkdir()
    story = json.loads((FIXTURES / "data" / "leval" / "quality.jsonl").read_text())
    meeting = json.loads((FIXTURES / "data" / "qmsum" / "test.jsonl").read_text())
    stories, meetings = [], []
    for d in range(3):
        stories.append(json.dumps({**story, "input": f"Story {d}. {story['input']}"}) + "\n")
        turns = [{"speaker": "Chair", "content": f"Meeting {d}."}, *meeting["meeting_transcripts"]]
        meetings.append(json.dumps({**meeting, "meeting_transcripts": turns}) + "\n")
    (root / "leval" / "quality.jsonl").write_text("".join(stories))
    (root / "qmsum" / "test.jsonl").write_text("".join(meetings))
    return root


def assert_spread(chosen: list, every: list, limit: int) -> None:
    """`chosen` is `limit` of `every` (or all), round-robin over documents, in loader order."""
    documents = Counter(e.task.document for e in every)
    per_document = Counter(e.task.document for e in chosen)
    assert len(chosen) == min(limit, len(every))
    assert len(per_document) == min(limit, len(documents))
    assert max(per_document.values()) - min(per_document.values()) <= 1  # every document here has as many questions
    positions = [every.index(e) for e in chosen]
    assert positions == sorted(positions)


@pytest.mark.parametrize(("name", "limit", "ids"), [
    ("leval:quality", 2, ["quality-0-0", "quality-1-0"]),
    ("leval:quality", 4, ["quality-0-0", "quality-0-1", "quality-1-0", "quality-2-0"]),
    ("qmsum", 5, ["test-0-s0", "test-0-s1", "test-1-s0", "test-1-s1", "test-2-s0"]),
    ("qmsum", 20, [f"test-{m}-s{q}" for m in range(3) for q in range(3)]),
])
def test_a_limit_spreads_the_examples_over_the_documents(documents, name, limit, ids):
    every = examples(name, documents)
    chosen = examples(name, documents, limit=limit)
    assert [e.id for e in chosen] == ids
    assert_spread(chosen, every, limit)


def test_without_a_limit_every_example_comes_in_loader_order(documents):
    every = examples("leval:quality", documents)
    assert [e.id for e in every] == [f"quality-{d}-{q}" for d in range(3) for q in range(2)]
    assert [e.id for e in examples("qmsum", documents)] == [f"test-{m}-s{q}" for m in range(3) for q in range(3)]


def test_a_limit_stops_reading_once_as_many_documents_appeared(monkeypatch):
    def loader(source):
        for i in range(3):
            yield Example(f"e{i}", Task(f"Document {i}.", "Which?"), ["a"], "qa_f1")
        raise AssertionError("read past the third document")

    monkeypatch.setattr(DATASETS, "get", lambda name: loader)
    assert [e.id for e in load("mine", data_dir=None, options={}, seed=0, count_tokens=len, limit=3)] == ["e0", "e1", "e2"]


@pytest.mark.parametrize(("name", "limit"), [("leval:quality", 6), ("leval:quality", 40), ("qmsum", 12)])
def test_a_limit_spreads_over_the_real_documents(name, limit):
    if not (data_dir() / "leval").is_dir():
        pytest.skip(f"real data not found at {data_dir()} (set COA_DATA_DIR)")
    every = examples(name, data_dir())
    chosen = examples(name, data_dir(), limit=limit)
    documents = {e.task.document for e in every}
    assert len(chosen) == limit and len({e.task.document for e in chosen}) == min(limit, len(documents))
    positions = [every.index(e) for e in chosen]
    assert positions == sorted(positions)


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
