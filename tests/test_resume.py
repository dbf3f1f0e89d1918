"""Resume never mixes inputs: each stored row carries the fingerprint of what produced it
(coa.identity), a pair whose fingerprint changed runs again, another corpus in the same --out is
refused unless --replace, and answers.jsonl holds the answers to the input as it is now."""

import json
import shutil
import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from coa import ScriptedModel
from coa.config import Config
from coa.errors import ConfigError
from coa.eval.datasets import Example
from coa.eval.runner import StrategySpec
from coa.identity import SHARED_PROMPTS, fingerprint, pair_fingerprint, prompt_sets, run_settings
from coa.session import Session
from coa.strategies import STRATEGIES, get_strategy
from coa.task import Kind, Task
from conftest import REPO, run_cli

SCRIPTED = ("--model", "scripted", "--window", "1024")
ROWS = [
    {"id": "box", "context": "The red box holds the key. " * 20, "input": "What does the red box hold?", "answers": ["the key"]},
    {"id": "cat", "context": "Ann has a cat named Tom. " * 20, "input": "Who has a cat?", "answers": ["Ann"]},
    {"id": "sea", "context": "The sea is blue and deep. " * 20, "input": "What colour is the sea?"},
]


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def answers(run_dir):
    return [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines()]


def stored(run_dir):
    """{(example, strategy): (finished_at, the question the pair's last call was asked)}"""
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        rows = db.execute("SELECT example, strategy, finished_at, trace FROM results").fetchall()
    return {(e, s): (t, json.loads(trace)["calls"][-1]["messages"][-1]["content"] if trace else None)
            for e, s, t, trace in rows}


def ok(result) -> str:
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def refused(result, message: str) -> None:
    err = result.stderr.decode()
    assert result.returncode == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_another_corpus_with_the_same_name_is_refused_unless_replace(tmp_path):
    a = write_jsonl(tmp_path / "a" / "corpus.jsonl", ROWS)
    b = write_jsonl(tmp_path / "b" / "corpus.jsonl", [{**r, "input": r["input"].replace("?", " today?")} for r in ROWS])
    run_dir = tmp_path / "run"
    assert ok(run_cli("batch", a, "--out", run_dir, "-s", "vanilla", *SCRIPTED)).startswith("done 3, failed 0, skipped 0;")
    before, kept = stored(run_dir), (run_dir / "answers.jsonl").read_bytes()

    message = f"{run_dir} holds the results of another corpus, {a.resolve()}; give --replace to drop them"
    for more in ([], ["--resume"]):
        refused(run_cli("batch", b, "--out", run_dir, "-s", "vanilla", *SCRIPTED, *more), message)
    # A corpus of another name is another corpus too.
    c = write_jsonl(tmp_path / "c.jsonl", ROWS)
    refused(run_cli("batch", c, "--out", run_dir, "-s", "vanilla", *SCRIPTED), message)
    refused(run_cli("batch", b, "--out", run_dir, "-s", "vanilla", *SCRIPTED, "--resume", "--replace"),
            "--replace drops the stored results and starts over; it does not go with --resume")
    assert stored(run_dir) == before and (run_dir / "answers.jsonl").read_bytes() == kept  # refusals touch nothing

    assert ok(run_cli("batch", b, "--out", run_dir, "-s", "vanilla", *SCRIPTED, "--replace")).startswith(
        "done 3, failed 0, skipped 0;")
    after = stored(run_dir)
    assert after.keys() == before.keys()
    assert all("today?" in question for _, question in after.values())  # B's questions, none of A's left
    assert [a["id"] for a in answers(run_dir)] == ["box", "cat", "sea"]
    # --replace also starts the same corpus over; a run of another name is dropped with it.
    assert ok(run_cli("batch", c, "--out", run_dir, "-s", "vanilla", *SCRIPTED, "--replace")).startswith("done 3,")
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        assert db.execute("SELECT DISTINCT dataset FROM results").fetchall() == [("batch:c.jsonl",)]
        assert db.execute("SELECT dataset FROM runs").fetchall() == [("batch:c.jsonl",)]


def test_edited_rows_run_again_and_answers_hold_the_current_input(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", ROWS)
    run_dir = tmp_path / "run"
    args = ["batch", corpus, "--out", run_dir, "-s", "vanilla,rag", *SCRIPTED]
    ok(run_cli(*args))
    before = stored(run_dir)

    # cat's question edited, sea's references added (a change of what scores it), box as it was;
    # a row added, none removed yet.
    edited = [ROWS[0], {**ROWS[1], "input": "What is the cat's name?"}, {**ROWS[2], "answers": ["blue"]},
              {"id": "owl", "context": "The owl sleeps by day. " * 20, "input": "When does the owl sleep?"}]
    write_jsonl(corpus, edited)
    time.sleep(0.01)
    out = ok(run_cli(*args, "--resume"))
    assert out.startswith("done 6, failed 0, skipped 2, rerun 4 changed;"), out
    after = stored(run_dir)
    assert after[("box", "vanilla")] == before[("box", "vanilla")]  # not run again
    assert "What is the cat's name?" in after[("cat", "vanilla")][1] and after[("sea", "rag")] != before[("sea", "rag")]
    assert [(a["id"], a["strategy"]) for a in answers(run_dir)] == [
        (i, s) for i in ("box", "cat", "sea", "owl") for s in ("rag", "vanilla")]
    assert ok(run_cli(*args, "--resume")).startswith("done 0, failed 0, skipped 8;")  # nothing changed since

    # A row removed: its rows stay in the store, but its answers are no longer the input's.
    write_jsonl(corpus, [edited[0], edited[1], edited[3]])
    assert ok(run_cli(*args, "--resume")).startswith("done 0, failed 0, skipped 6;")
    assert [a["id"] for a in answers(run_dir)] == ["box", "box", "cat", "cat", "owl", "owl"]
    assert ("sea", "rag") in stored(run_dir)
    # --limit: the answers of the rows it takes. A strategy left out of the command keeps its answers.
    assert ok(run_cli("batch", corpus, "--out", run_dir, "-s", "vanilla", *SCRIPTED, "--resume", "--limit", "1")).startswith(
        "done 0, failed 0, skipped 1;")
    assert [(a["id"], a["strategy"]) for a in answers(run_dir)] == [("box", "rag"), ("box", "vanilla")]

    # An answer stored from an older row is not written for the row that replaced it, even for a
    # strategy that this command does not run again.
    write_jsonl(corpus, [{**edited[0], "input": "Which key?"}])
    assert ok(run_cli("batch", corpus, "--out", run_dir, "-s", "vanilla", *SCRIPTED, "--resume")).startswith(
        "done 1, failed 0, skipped 0, rerun 1 changed;")
    assert [(a["id"], a["strategy"]) for a in answers(run_dir)] == [("box", "vanilla")]


def test_an_edited_prompt_file_runs_every_pair_again(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", ROWS[:2])
    prompts = tmp_path / "prompts"
    (prompts / "common").mkdir(parents=True)
    shutil.copy(REPO / "src" / "coa" / "prompts" / "common" / "answer.yaml", prompts / "common" / "answer.yaml")
    run_dir = tmp_path / "run"
    args = ["batch", corpus, "--out", run_dir, "-s", "vanilla", *SCRIPTED, "--prompts-dir", prompts]
    ok(run_cli(*args))
    (prompts / ".answer.yaml.swp").write_text("an editor's file")  # not a prompt: changes nothing
    assert ok(run_cli(*args, "--resume")).startswith("done 0, failed 0, skipped 2;")
    path = prompts / "common" / "answer.yaml"
    path.write_text(path.read_text().replace("system: ", "system: Be brief. ", 1))
    assert ok(run_cli(*args, "--resume")).startswith("done 2, failed 0, skipped 0, rerun 2 changed;")
    assert all("Be brief." in json.loads(trace)["calls"][0]["messages"][0]["content"]
               for (trace,) in sqlite3.connect(run_dir / "results.sqlite").execute("SELECT trace FROM results"))
    # Other settings of the run are refused rather than mixed in.
    refused(run_cli(*args[:-2], "--resume"), "prompts_dir differ from the stored run")
    refused(run_cli(*args, "--resume", "--max-calls", "3"), "max_calls differ from the stored run")


# The store of before fingerprints (schema version 1), as `git show 1627a5e:src/coa/eval/store.py` creates it.
OLD_SCHEMA = (
    "CREATE TABLE runs (dataset TEXT PRIMARY KEY, config TEXT NOT NULL)",
    """CREATE TABLE results (dataset TEXT NOT NULL, example TEXT NOT NULL, strategy TEXT NOT NULL,
        position INTEGER NOT NULL, prediction TEXT, refs TEXT NOT NULL, metric TEXT NOT NULL, score REAL,
        document_tokens INTEGER, calls INTEGER, prompt_tokens INTEGER, completion_tokens INTEGER, seconds REAL,
        meta TEXT NOT NULL, trace TEXT, error TEXT,
        finished_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        PRIMARY KEY (dataset, example, strategy))""",
    "PRAGMA user_version = 1",
)


def test_rows_stored_before_fingerprints_run_again(tmp_path):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", ROWS)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    db = sqlite3.connect(run_dir / "results.sqlite")
    for statement in OLD_SCHEMA:
        db.execute(statement)
    config = {"dataset": "batch:corpus.jsonl", "model": "scripted", "window": 1024, "max_cu_tokens": None,
              "temperature": 0.0, "seed": 0, "options": {}, "limit": None, "strategies": ["vanilla"],
              "version": "0.1.0", "git": "ec4777b", "started": "2025-01-01T00:00:00+00:00"}
    db.execute("INSERT INTO runs VALUES (?, ?)", ("batch:corpus.jsonl", json.dumps(config)))
    for i, row in enumerate(ROWS):
        db.execute("INSERT INTO results (dataset, example, strategy, position, prediction, refs, metric, meta) "
                   "VALUES ('batch:corpus.jsonl', ?, 'vanilla', ?, 'an old answer', '[]', 'qa_f1', '{}')", (row["id"], i))
    db.commit()
    db.close()

    out = ok(run_cli("batch", corpus, "--out", run_dir, "-s", "vanilla", *SCRIPTED, "--resume"))
    # What produced an old row is unknown: it may be another file of the same name, or an older edit.
    assert out.startswith("done 3, failed 0, skipped 0, rerun 3 changed;"), out
    assert all(a["answer"] != "an old answer" for a in answers(run_dir)) and len(answers(run_dir)) == 3
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        assert db.execute("PRAGMA user_version").fetchone() == (2,)
        assert db.execute("SELECT count(*) FROM results WHERE fingerprint IS NULL").fetchone() == (0,)
    assert ok(run_cli("batch", corpus, "--out", run_dir, "-s", "vanilla", *SCRIPTED, "--resume")).startswith(
        "done 0, failed 0, skipped 3;")


def test_eval_resume_runs_changed_examples_again(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{**r, "answers": r.get("answers", ["blue"])} for r in ROWS])
    run_dir = tmp_path / "run"
    args = ["eval", "--dataset", f"jsonl:{path}", "-s", "vanilla", *SCRIPTED, "--out", run_dir]
    first = run_cli(*args)
    assert first.returncode == 0 and "done 3, failed 0, skipped 0; results in" in first.stderr.decode()
    write_jsonl(path, [ROWS[0], {**ROWS[1], "answers": ["Ann", "ann"]}, {**ROWS[2], "answers": ["blue"]}])
    again = run_cli(*args, "--resume")
    assert again.returncode == 0, again.stderr.decode()
    assert "done 1, failed 0, skipped 2, rerun 1 changed; results in" in again.stderr.decode()


# -- the fingerprint itself --------------------------------------------------------------------

EXAMPLE = Example("e", Task("Some document. " * 5, "Which?", Kind.QA), ["ref"], "qa_f1")
CONFIG = Config(window=1024, seed=0)


def key(example=EXAMPLE, spec="vanilla", model="scripted", config=CONFIG) -> str:
    return pair_fingerprint(example, StrategySpec.parse(spec), run_settings(model, config))


@pytest.mark.parametrize("change", [
    dict(example=replace(EXAMPLE, task=Task("Another document. " * 5, "Which?", Kind.QA))),
    dict(example=replace(EXAMPLE, task=Task("Some document. " * 5, "Which one?", Kind.QA))),
    dict(example=replace(EXAMPLE, task=Task("Some document. " * 5, "Which?", Kind.MCQ, ("a", "b")))),
    dict(example=replace(EXAMPLE, task=Task("Some document. " * 5, "Which?", Kind.SUMMARIZE))),
    dict(example=replace(EXAMPLE, references=["other"])),
    dict(spec="rag"),
    dict(spec="rag:retriever=bm25"),
    dict(model="openai:x"),
    dict(config=replace(CONFIG, window=2048)),
    dict(config=replace(CONFIG, max_cu_tokens=100)),
    dict(config=replace(CONFIG, temperature=0.5)),
    dict(config=replace(CONFIG, seed=1)),
    dict(config=replace(CONFIG, max_calls=3)),
    dict(config=replace(CONFIG, max_total_tokens=1000)),
    dict(config=replace(CONFIG, max_seconds=60.0)),
])
def test_every_input_of_a_result_changes_its_fingerprint(change):
    assert key(**change) != key()


def test_the_choices_change_the_fingerprint():
    def mcq(*choices: str) -> str:
        return key(example=replace(EXAMPLE, task=Task("Some document. " * 5, "Which?", Kind.MCQ, choices)))

    assert mcq("a", "b") != mcq("a", "c") != mcq("c", "a")


def test_what_does_not_change_a_result_leaves_its_fingerprint(tmp_path):
    assert key() == key(example=replace(EXAMPLE, id="other id"))  # the id names the pair; it is not an input
    assert key() == key(config=replace(CONFIG, concurrency=9, embed_api_key="secret"))
    assert fingerprint(a=1, b=[1, 2]) == fingerprint(b=(1, 2), a=1) != fingerprint(a=1, b=[2, 1])


def test_the_prompt_sets_digest_the_files_in_effect(tmp_path):
    packaged = prompt_sets(None)
    assert {"coa", "common", "tasks.yaml", "recite"} <= packaged.keys()
    assert prompt_sets(tmp_path) == packaged  # an empty directory overrides nothing
    (tmp_path / "common").mkdir()
    answer = (REPO / "src" / "coa" / "prompts" / "common" / "answer.yaml").read_text()
    (tmp_path / "common" / "answer.yaml").write_text(answer)
    assert prompt_sets(tmp_path) == packaged  # the same file
    (tmp_path / "common" / "answer.yaml").write_text(answer + "\n# edited\n")
    edited = prompt_sets(tmp_path)
    assert edited["common"] != packaged["common"] and edited["coa"] == packaged["coa"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "extra.yaml").write_text("user: hi")
    assert prompt_sets(tmp_path) == {**edited, "mine": prompt_sets(tmp_path)["mine"]}  # a set of its own counts too
    assert key(config=replace(CONFIG, prompts_dir=tmp_path)) != key()


def test_a_strategys_results_stand_when_another_strategys_prompts_change(tmp_path):
    """An edited prompt reruns the pairs of the strategies that read it, and only those."""
    (tmp_path / "recite").mkdir()
    recite = (REPO / "src" / "coa" / "prompts" / "recite" / "answer.yaml").read_text()
    (tmp_path / "recite" / "answer.yaml").write_text(recite + "\n# edited\n")
    (tmp_path / "newcomer").mkdir()
    (tmp_path / "newcomer" / "role.yaml").write_text("user: hi")  # a strategy's prompts added

    def under(spec: str, directory: Path | None) -> str:
        settings = {**run_settings("scripted", CONFIG), "prompts": prompt_sets(directory)}
        return pair_fingerprint(EXAMPLE, StrategySpec.parse(spec), settings)

    assert under("recite", tmp_path) != under("recite", None)
    for spec in ("rag", "coa", "coa-multipath", "vanilla"):
        assert under(spec, tmp_path) == under(spec, None)
    (tmp_path / "coa").mkdir()
    (tmp_path / "coa" / "worker-qa.yaml").write_text("user: hi")
    assert under("coa-multipath", tmp_path) != under("coa-multipath", None)  # its chains read coa's prompts


@pytest.mark.parametrize("name", sorted(STRATEGIES.names()))
@pytest.mark.parametrize("kind", [Kind.QA, Kind.MCQ, Kind.SUMMARIZE, Kind.CODE])
def test_every_strategy_reads_only_the_prompt_sets_it_declares(name, kind, monkeypatch):
    """The fingerprint counts a strategy's declared prompt sets: one it reads undeclared would let a
    stored result outlive an edit of that prompt."""
    read: set[str] = set()
    original = Session.prompt

    def recording(self, strategy, role, kind=None):
        read.add(strategy)
        return original(self, strategy, role, kind)

    monkeypatch.setattr(Session, "prompt", recording)
    choices = ("first", "second") if kind is Kind.MCQ else ()
    task = Task("A line of the text, with a fact in it. " * 120, "Which fact?" if kind.needs_query else None,
                kind, choices)
    solver = get_strategy(name)
    try:
        solver(ScriptedModel(reply=lambda _: "Evidence: a fact.\nAnswer: B", context_window=1024), Config(window=1024)).run(task)
    except ConfigError:  # a strategy for other kinds of task, or one this window cannot hold: what it read still counts
        pass
    else:
        assert read, f"{name} read no prompt on a {kind} task"
    assert read <= {*solver.prompt_sets, *SHARED_PROMPTS}, f"{name} reads {sorted(read)}"
