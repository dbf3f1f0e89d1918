"""`coa batch` on the local executor: a corpus end to end, resume, the question expansion and
the one-line errors. The Ray executor has its own module (test_ray.py)."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from coa.errors import InputError
from conftest import run_cli
from faultserver import FaultServer, answer, completion, respond

SCRIPTED = ("--model", "scripted", "--window", "1024")


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(tmp_path / "corpus.jsonl", [
        {"id": "box", "context": "The red box holds the key. " * 20, "input": "What does the red box hold?",
         "answers": ["the key"]},
        {"id": "trip", "context": "Mary went to Paris in 1990 and stayed two years. " * 20,
         "questions": ["Where did Mary go?", "How long did she stay?"]},
        {"context": "A report on the harbour, its ships and its cranes. " * 20},  # no question: a summary
    ])


def answers(run_dir):
    return [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines()]


def stored(run_dir):
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return {(e, s): t for e, s, t in db.execute("SELECT example, strategy, finished_at FROM results")}


def test_a_corpus_runs_every_task_with_every_strategy(tmp_path, corpus):
    run_dir = tmp_path / "run"
    result = run_cli("batch", corpus, "--out", run_dir, "-s", "vanilla", "-s", "rag", *SCRIPTED, "--concurrency", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip() == (f"done 8, failed 0, skipped 0; results in {run_dir / 'results.sqlite'}, "
                                              f"answers in {run_dir / 'answers.jsonl'}")
    got = answers(run_dir)
    assert [(a["id"], a["strategy"]) for a in got] == [(i, s) for i in ("box", "trip#0", "trip#1", "3") for s in ("rag", "vanilla")]
    assert all(a["answer"].startswith("scripted output") and a["error"] is None for a in got)
    assert len({a["answer"] for a in got}) == 8  # one model call each, none shared
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        scores = dict(db.execute("SELECT example || ' ' || strategy, score FROM results"))
    assert scores["box vanilla"] is not None and scores["trip#0 vanilla"] is None  # unscored without answers


def test_resume_skips_finished_pairs_and_retries_failed_ones_on_request(tmp_path, corpus):
    run_dir = tmp_path / "run"
    args = ["batch", corpus, "--out", run_dir, "-s", "vanilla", *SCRIPTED]
    first = run_cli(*args, "--limit", "1")
    assert first.returncode == 0, first.stderr
    before = stored(run_dir)
    assert list(before) == [("box", "vanilla")]
    refused = run_cli(*args)
    assert refused.returncode == 2 and "already holds results" in refused.stderr.decode()

    again = run_cli(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().startswith("done 3, failed 0, skipped 1;")
    after = stored(run_dir)
    assert len(after) == 4 and after[("box", "vanilla")] == before[("box", "vanilla")]  # not run again
    assert [a["id"] for a in answers(run_dir)] == ["box", "trip#0", "trip#1", "3"]

    # A strategy that fails on every task (a window too small for CoA's prompts): stored as failures,
    # skipped by --resume, run again with --retry-errors.
    failing = ["batch", corpus, "--out", tmp_path / "failing", "-s", "coa", "--model", "scripted", "--window", "100"]
    broken = run_cli(*failing)
    assert broken.returncode == 1 and "all 4 pairs failed" in broken.stderr.decode()
    assert all(a["error"] and a["answer"] is None for a in answers(tmp_path / "failing"))
    assert run_cli(*failing, "--resume").stdout.decode().startswith("done 0, failed 0, skipped 4;")
    assert run_cli(*failing, "--resume", "--retry-errors").stdout.decode().startswith("done 0, failed 4, skipped 0;")


def test_a_stopped_run_keeps_its_answers_and_resumes(tmp_path, corpus):
    def slowly(request):  # the usual reply, a little later, so that the run can be stopped midway
        reply = respond(200, completion(answer(request.body)))
        return lambda conn, stop: stop.wait(0.4) or reply(conn, stop)  # no reply once the server stops

    run_dir = tmp_path / "run"
    with FaultServer() as server:
        server.routes["/chat/completions"] = slowly
        args = ["batch", corpus, "--out", run_dir, "-s", "vanilla", "--model", "openai:x", "--base-url", server.base_url]
        process = subprocess.Popen([sys.executable, "-m", "coa", *map(str, args)], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env={**os.environ, "OPENAI_API_KEY": ""})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ((run_dir / "results.sqlite").exists() and stored(run_dir)):
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
        kept = answers(run_dir)
        assert process.returncode == 143 and "run the same command with --resume" in err.decode()
        assert 1 <= len(kept) < 4 and {a["id"] for a in kept} == {e for e, _ in stored(run_dir)}
        again = run_cli(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert again.stdout.decode().startswith(f"done {4 - len(kept)}, failed 0, skipped {len(kept)};")
    final = answers(run_dir)
    assert [a["id"] for a in final] == ["box", "trip#0", "trip#1", "3"] and all(a in final for a in kept)


def test_strategy_options_and_opt_make_the_labels(tmp_path, corpus):
    run_dir = tmp_path / "run"
    result = run_cli("batch", corpus, "--out", run_dir, "-s", "vanilla,rag", "--opt", "chunk_words=50", *SCRIPTED, "-n", "1")
    assert result.returncode == 2 and "strategy vanilla has no option 'chunk_words'" in result.stderr.decode()
    assert not run_dir.exists()  # refused before any work
    result = run_cli("batch", corpus, "--out", run_dir, "-s", "rag:retriever=bm25", "--opt", "chunk_words=50", *SCRIPTED, "-n", "1")
    assert result.returncode == 0, result.stderr
    assert list(stored(run_dir)) == [("box", "rag:retriever=bm25:chunk_words=50")]


def test_questions_expand_into_tasks_and_limit_reads_no_further(tmp_path):
    from coa.eval.runner import read_corpus

    path = write_jsonl(tmp_path / "c.jsonl", [
        {"_id": "d", "document": "Ann has a cat named Tom. " * 10, "questions": ["Who has a cat?", "Its name?"],
         "answers": [["Ann"], "Tom"]},
        {"context": "Other text. " * 10, "query": "What?", "answer": "text"},
        "{not json",
    ])
    examples = read_corpus(path, limit=2)  # the broken third line is never read
    assert [(e.id, e.task.query, e.references) for e in examples] == [
        ("d#0", "Who has a cat?", ["Ann"]), ("d#1", "Its name?", ["Tom"]), ("2", "What?", ["text"])]
    assert examples[0].task.document == examples[1].task.document
    with pytest.raises(InputError, match=r"c.jsonl:3: not JSON"):
        read_corpus(path)


def test_the_local_executor_hands_back_every_row_as_it_finishes():
    from coa.config import Config
    from coa.eval.datasets import Example
    from coa.eval.executors import LocalExecutor
    from coa.eval.runner import StrategySpec
    from coa.models.scripted import ScriptedModel
    from coa.task import Task

    pairs = [(i, Example(f"e{i}", Task(f"Text number {i}. " * 10, "Which?"), ["7" if i % 2 else "8"], "qa_f1"),
              StrategySpec.parse("vanilla")) for i in range(5)]
    rows: list[dict] = []
    LocalExecutor(ScriptedModel(reply=lambda messages: "7"), concurrency=2).run("d", Config(window=1024), pairs, rows.append)
    assert sorted(r["example"] for r in rows) == [f"e{i}" for i in range(5)]
    assert all(r["prediction"] == "7" and r["error"] is None and r["dataset"] == "d" for r in rows)
    assert {r["example"]: r["score"] for r in rows} == {"e0": 0.0, "e1": 1.0, "e2": 0.0, "e3": 1.0, "e4": 0.0}


def test_questions_over_one_document_share_one_chunk_major_read():
    from coa.config import Config
    from coa.eval.datasets import Example
    from coa.eval.executors import LocalExecutor
    from coa.eval.runner import StrategySpec
    from coa.models.scripted import ScriptedModel
    from coa.task import Task

    document = " ".join(f"Sentence {i} of the shared text." for i in range(120))
    pairs = [(i, Example(f"q{i}", Task(document, f"What is in sentence {i}?"), [], "qa_f1"), StrategySpec.parse("coa"))
             for i in range(3)]
    pairs.append((3, Example("other", Task("Another text. " * 30, "Which?"), [], "qa_f1"), StrategySpec.parse("coa")))
    model = ScriptedModel(context_window=512)
    rows: list[dict] = []
    LocalExecutor(model, concurrency=1).run("d", Config(window=512, max_cu_tokens=32), pairs, rows.append)
    assert sorted(r["example"] for r in rows) == ["other", "q0", "q1", "q2"] and all(r["error"] is None for r in rows)
    # The three questions' first workers read the first chunk one after the other, before any second chunk.
    first = [m[-1]["content"] for m in model.prompts[:3]]
    assert all("Sentence 0 of" in text and f"sentence {i}?" in text for i, text in enumerate(first))
    # The next prompt reads the second chunk (its CU may quote sentence 0: look inside the chunk's fence only).
    assert "Sentence 0 of" not in model.prompts[3][-1]["content"].split("</document-")[0]


def no_ray(*args: str) -> subprocess.CompletedProcess:
    """The command as it runs where Ray is not installed (whether or not it is here)."""
    code = "import sys; sys.modules['ray'] = None; from coa.cli import main; sys.argv[0] = 'coa'; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, timeout=120)


@pytest.mark.parametrize("case, make, message", [
    ("bad line", lambda t: write_jsonl(t / "in.jsonl", [{"context": "x y z", "input": "q"}, "{oops"]), "in.jsonl:2: not JSON"),
    ("missing", lambda t: t / "nowhere.jsonl", "nowhere.jsonl: no such JSONL file"),
    ("not an object", lambda t: write_jsonl(t / "in.jsonl", ["[1, 2]"]), "in.jsonl:1: expected a JSON object, not a list"),
    ("questions", lambda t: write_jsonl(t / "in.jsonl", [{"context": "x y z", "questions": "Why?"}]),
     "in.jsonl:1: 'questions' must be a non-empty list of texts"),
    ("answers per question", lambda t: write_jsonl(t / "in.jsonl", [{"context": "x", "questions": ["a", "b"], "answers": ["a"]}]),
     "'answers' must be a list of one entry per question (2)"),
    ("twice", lambda t: write_jsonl(t / "in.jsonl", [{"id": "a#0", "context": "x", "input": "q"},
                                                     {"id": "a", "context": "x", "questions": ["q"]}]),
     "in.jsonl:2: id 'a#0' is used twice"),
    ("empty", lambda t: write_jsonl(t / "in.jsonl", ["", " "]), "in.jsonl: no rows"),
    ("object id", lambda t: write_jsonl(t / "in.jsonl", [{"context": "x", "input": "q"}, {"id": {}, "context": "x", "input": "q"}]),
     "in.jsonl:2: 'id' must be a non-empty text or a whole number, not an object"),
    ("null id", lambda t: write_jsonl(t / "in.jsonl", [{"_id": None, "context": "x", "input": "q"}]),
     "in.jsonl:1: '_id' must be a non-empty text or a whole number, not null"),
    ("null answer", lambda t: write_jsonl(t / "in.jsonl", [{"context": "x", "input": "q", "answers": ["a", None]}]),
     "in.jsonl:1: 'answers' must be a text or a list of texts, not null (entry 2)"),
    ("null answer of a question", lambda t: write_jsonl(t / "in.jsonl", [{"context": "x", "questions": ["q"], "answers": [[None]]}]),
     "in.jsonl:1: 'answers[0]' must be a text or a list of texts, not null (entry 1)"),
    ("NUL", lambda t: write_jsonl(t / "in.jsonl", [{"context": "x y", "input": "q"}, {"context": "x\u0000y", "input": "q"}]),
     "in.jsonl:2: 'context' holds a NUL character (U+0000)"),
    ("deep", lambda t: write_jsonl(t / "in.jsonl", ['{"context": "x", "input": "q", "more": ' + "[" * 100_000 + "]" * 100_000 + "}"]),
     "in.jsonl:1: nested too deeply to read"),
    ("huge number", lambda t: write_jsonl(t / "in.jsonl", [{"context": "x", "input": "q"}, '{"context": "x", "id": ' + "7" * 5000 + "}"]),
     "in.jsonl:2: a number of more than 4300 digits"),
    ("duplicate", lambda t: write_jsonl(t / "in.jsonl", [{"id": 7, "context": "x", "input": "q"}, {"id": "7", "context": "y", "input": "q"}]),
     "in.jsonl:2: id '7' is used twice"),
])
def test_a_bad_corpus_is_one_line_and_writes_nothing(tmp_path, case, make, message):
    result = run_cli("batch", make(tmp_path), "--out", tmp_path / "run", *SCRIPTED)
    err = result.stderr.decode()
    assert result.returncode == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["-s", "fastest"], "unknown strategy 'fastest'"),
    (["-s", "coa:order=sideways"], "order"),
    (["--ray-address", "127.0.0.1:1"], "--ray-address goes with --executor ray"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: cannot connect"),
    (["--retry-errors"], "--retry-errors goes with --resume"),
    (["--replace", "--resume"], "--replace drops the stored results and starts over; it does not go with --resume"),
])
def test_bad_settings_are_one_line(tmp_path, corpus, args, message):
    result = run_cli("batch", corpus, "--out", tmp_path / "run", *SCRIPTED, *args)
    err = result.stderr.decode()
    assert result.returncode == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", ["batch", "eval"])
def test_a_closed_ray_address_port_in_the_environment_is_one_line_at_once(tmp_path, corpus, command, monkeypatch):
    # Without the check, Ray's own connect retries for minutes, printing its RPC warnings.
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    source = [corpus] if command == "batch" else ["--dataset", f"jsonl:{corpus}"]
    started = time.monotonic()
    result = run_cli(command, *source, "--out", tmp_path / "run", *SCRIPTED, "--executor", "ray", timeout=60)
    err = result.stderr.decode()
    assert result.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert err.strip().startswith("error: RAY_ADDRESS 127.0.0.1:1: cannot connect (")
    assert time.monotonic() - started < 30 and not (tmp_path / "run" / "results.sqlite").exists()


@pytest.mark.parametrize("command", ["batch", "eval"])
def test_the_ray_executor_without_ray_names_the_extra(tmp_path, corpus, command):
    source = [corpus] if command == "batch" else ["--dataset", f"jsonl:{corpus}"]
    result = no_ray(command, *source, "--out", tmp_path / "run", *SCRIPTED, "--executor", "ray")
    err = result.stderr.decode()
    assert result.returncode == 2 and len(err.strip().splitlines()) == 1, err
    assert err.strip() == "error: --executor ray needs the [ray] extra: pip install 'chainofagents[ray]'"
    assert not (tmp_path / "run" / "results.sqlite").exists()


def test_batch_takes_the_requirement_and_seed_of_ask_and_a_changed_requirement_reruns(tmp_path, corpus):
    run_dir = tmp_path / "run"
    first = run_cli("batch", corpus, "--out", run_dir, "-s", "vanilla", *SCRIPTED, "--requirement", "Answer in Latin.",
                    "--seed", "11", "--limit", "1")
    assert first.returncode == 0, first.stderr
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        (trace,) = db.execute("SELECT trace FROM results").fetchone()
    trace = json.loads(trace)
    assert "Answer in Latin." in trace["calls"][0]["messages"][-1]["content"] and trace["settings"]["seed"] == 11
    again = run_cli("batch", corpus, "--out", run_dir, "-s", "vanilla", *SCRIPTED, "--requirement", "Answer in Greek.",
                    "--seed", "11", "--limit", "1", "--resume")
    assert again.returncode == 0, again.stderr
    assert "done 1" in again.stdout.decode() and "rerun 1 changed" in (again.stdout + again.stderr).decode()
