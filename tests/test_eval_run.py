"""`coa eval` and `coa report` end to end: resume after SIGKILL, refusals, the report and its HTML page."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from conftest import EXAMPLE_PLAY, REPO, JsonHandler, dump_dom, needs_chromium, run_cli, serve

FIXTURES = REPO / "tests" / "fixtures"


class SlowServer(JsonHandler):
    """An OpenAI-style chat endpoint that takes a while per call and counts the calls."""

    calls = 0
    lock = threading.Lock()

    def do_POST(self):
        body = self.read_json()
        if not self.path.endswith("/chat/completions"):
            return self.reply(404, {"detail": "Not Found"})
        with SlowServer.lock:
            SlowServer.calls += 1
        time.sleep(0.25)
        answer = body["messages"][-1]["content"].split()[-1]
        self.reply(200, {"choices": [{"message": {"content": answer}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 50, "completion_tokens": 1}})

    def do_GET(self):
        self.reply(404, {"detail": "Not Found"})


@pytest.fixture
def questions(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(
        json.dumps({"id": f"q{i}", "context": f"Item {i} is stored in box {i * 7}. " * 20, "input": f"Where is item {i}?",
                    "answers": [f"box {i * 7}"]}) + "\n" for i in range(8)))
    return path


def stored(run_dir):
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return {(e, s): t for e, s, t in db.execute("SELECT example, strategy, finished_at FROM results")}


def test_a_killed_run_resumes_without_losing_or_repeating_pairs(tmp_path, questions):
    run_dir = tmp_path / "run"
    with serve(SlowServer) as base_url:
        args = [sys.executable, "-m", "coa", "eval", "--dataset", f"jsonl:{questions}", "--strategies", "vanilla,rag",
                "--model", "openai:slow", "--base-url", base_url, "--window", "1024", "--out", str(run_dir)]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not ((run_dir / "results.sqlite").exists() and len(stored(run_dir)) >= 4):
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        before = stored(run_dir)
        assert 4 <= len(before) < 16, "the run must be killed in the middle"
        time.sleep(1)  # let the server finish the request the killed run left in flight
        calls_before = SlowServer.calls

        again = run_cli(*args[3:], "--resume")
        assert again.returncode == 0, again.stderr
        after = stored(run_dir)
        assert len(after) == 16  # every (example, strategy) pair, once (the key is unique)
        assert all(after[pair] == stamp for pair, stamp in before.items())  # finished pairs were not run again
        assert SlowServer.calls - calls_before == 16 - len(before)  # one call per pair still to do

        # Without --resume the stored run is protected; with changed settings it cannot be resumed.
        refused = run_cli(*args[3:])
        assert refused.returncode == 2 and "already holds results" in refused.stderr.decode()
        changed = run_cli(*[a if a != "1024" else "2048" for a in args[3:]], "--resume")
        assert changed.returncode == 2 and "window differ" in changed.stderr.decode()


def test_rerun_runs_one_strategy_again_and_keeps_the_others(tmp_path, questions):
    run_dir = tmp_path / "run"
    args = ["eval", "--dataset", f"jsonl:{questions}", "--strategies", "vanilla,rag", "--model", "scripted",
            "--window", "1024", "--limit", "3", "--out", run_dir]
    assert run_cli(*args).returncode == 0
    before = stored(run_dir)
    time.sleep(0.01)
    again = run_cli(*args, "--rerun", "rag")
    assert again.returncode == 0, again.stderr
    after = stored(run_dir)
    assert after.keys() == before.keys()
    assert all((after[pair] == stamp) == (pair[1] == "vanilla") for pair, stamp in before.items())
    unknown = run_cli(*args, "--rerun", "coa")
    assert unknown.returncode == 2 and "--rerun names coa" in unknown.stderr.decode()
    assert stored(run_dir) == after  # a refused rerun drops nothing
    questions.unlink()
    missing = run_cli(*args, "--rerun", "rag")
    assert missing.returncode == 2 and stored(run_dir) == after  # nor does one whose data cannot be read


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    shutil.copytree(FIXTURES / "data", root, dirs_exist_ok=True)
    (root / "books").mkdir()
    shutil.copy(EXAMPLE_PLAY, root / "books" / "macbeth.txt")
    return root


@pytest.fixture(scope="module")
def report_run(tmp_path_factory, data):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    common = ["--model", "scripted", "--window", "600", "--max-cu-tokens", "40", "--out", run_dir, "--data-dir", data]
    first = run_cli("eval", "--dataset", "niah", "--strategies", "coa,vanilla,rag", "--limit", "4",
                    "--opt", "haystack=books", "--opt", "lengths=400,800", "--opt", "depths=0,1", *common)
    assert first.returncode == 0, first.stderr
    # The paper's CU, so that each worker's CU is its (scripted) output, for the page to show.
    second = run_cli("eval", "--dataset", "qmsum", "--strategies", "coa:cu=paper", *common)
    assert second.returncode == 0, second.stderr
    return run_dir


def test_report_writes_tables_plots_and_json(report_run):
    result = run_cli("report", report_run)
    assert result.returncode == 0, result.stderr
    table = result.stdout.decode()
    assert "### niah" in table and "### qmsum" in table and "| coa |" in table and "| rag |" in table
    assert "| strategy | score | 95% CI | Δ (95% CI) | n |" in table
    assert (report_run / "report.md").read_text(encoding="utf-8") + "\n" == table  # the same tables; click.echo adds the last newline
    for name in ("niah-length.png", "niah-heatmap-coa.png", "niah-heatmap-vanilla.png", "qmsum-length.png"):
        assert (report_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    figures = json.loads(run_cli("report", report_run, "--json").stdout)
    niah = {f["strategy"]: f for f in figures if f["dataset"] == "niah"}
    assert set(niah) == {"coa", "vanilla", "rag"}
    for f in figures:
        assert {"dataset", "strategy", "n", "errors", "score", "score_lo", "score_hi", "baseline", "delta", "delta_lo",
                "delta_hi", "delta_n", "document_tokens", "calls", "prompt_tokens", "completion_tokens", "seconds"} <= f.keys()
        if f["score"] is not None:
            assert f["score_lo"] <= f["score"] <= f["score_hi"]
    assert niah["coa"]["n"] == 4 and niah["coa"]["errors"] == 0 and niah["vanilla"]["calls"] == 1.0
    assert niah["rag"]["baseline"] == "coa" and niah["rag"]["delta_n"] == 4 and niah["coa"]["delta"] is None


def test_errors_are_recorded_and_counted(tmp_path, data):
    run_dir = tmp_path / "run"
    # A window too small for CoA's worker prompt: every coa pair fails, vanilla still runs.
    result = run_cli("eval", "--dataset", "leval:quality", "--strategies", "coa,vanilla", "--model", "scripted",
                     "--window", "200", "--out", run_dir, "--data-dir", data)
    assert result.returncode == 0, result.stderr
    figures = {f["strategy"]: f for f in json.loads(run_cli("report", run_dir, "--json").stdout)}
    assert figures["coa"]["errors"] == 2 and figures["coa"]["n"] == 0 and figures["coa"]["score"] is None
    assert figures["vanilla"]["errors"] == 0 and figures["vanilla"]["n"] == 2


@needs_chromium
def test_html_report_opens_in_a_browser_and_shows_a_workers_cu(report_run, tmp_path):
    assert run_cli("report", report_run, "--html").returncode == 0
    page = report_run / "report.html"
    text = page.read_text()
    assert "<img" in text and "data:image/png;base64," in text and "<table>" in text
    pairs = json.loads(text.split('<script id="pairs" type="application/json">')[1].split("</script>")[0])
    choice = next(i for i, p in enumerate(pairs) if p["dataset"] == "qmsum" and p["strategy"] == "coa:cu=paper")
    worker_cu = next(c["cu"] for c in pairs[choice]["calls"] if c["role"] == "worker")
    dom = dump_dom(f"{page.as_uri()}#pair={choice}", tmp_path / "profile", 5000)
    trace = dom.split('id="trace"')[1]
    assert 'class="call worker"' in trace and "CU passed on" in trace
    assert worker_cu and worker_cu in trace  # the script rendered the chosen pair's worker CU


def test_a_scoring_failure_is_the_pairs_error_and_keeps_its_answer():
    import asyncio

    from coa.config import Config
    from coa.eval.datasets import Example
    from coa.eval.executors import run_pair
    from coa.eval.runner import StrategySpec
    from coa.models.scripted import ScriptedModel
    from coa.task import Task

    example = Example("e1", Task("Some text about a box. " * 20, "Where?"), ["box"], metric="no-such-metric")
    row = asyncio.run(run_pair("mine", 0, example, StrategySpec.parse("vanilla"), ScriptedModel(["in the box"]),
                               Config(window=1024)))
    assert row["error"].startswith("scoring failed: ConfigError") and "no-such-metric" in row["error"]
    assert row["score"] is None and row["prediction"] == "in the box"
    assert row["calls"] == 1 and row["trace"]["answer"] == "in the box"  # the work is kept for the report


@pytest.mark.parametrize("command", ["eval", "batch"])
def test_a_failed_pair_keeps_its_finished_calls(tmp_path, command):
    # Limits of two calls: memagent reads chunk after chunk and stops at the third; mapreduce's map
    # calls run together, two of them finish and the others are refused.
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"id": "long", "context": " ".join(f"Sentence {i} says the value is {i * 3}." for i in range(400)),
                                "input": "What is the value of sentence 7?", "answers": ["21"]}) + "\n")
    run_dir = tmp_path / "run"
    source = ["--dataset", f"jsonl:{path}", "-s", "memagent,mapreduce"] if command == "eval" else [path, "-s", "memagent,mapreduce"]
    result = run_cli(command, *source, "--model", "scripted", "--window", "512", "--max-calls", "2", "--out", run_dir)
    assert result.returncode == 1 and "all 2 pairs failed" in result.stderr.decode()
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        rows = db.execute("SELECT error, calls, prompt_tokens, trace FROM results").fetchall()
    assert len(rows) == 2
    for error, calls, prompt_tokens, trace in rows:
        trace = json.loads(trace)
        assert error == trace["error"] == "the run stopped at its limit of 2 model calls (max_calls)"
        assert calls == len(trace["calls"]) == 2 and prompt_tokens == sum(c["prompt_tokens"] for c in trace["calls"]) > 0
        assert [c["role"] for c in trace["calls"]] == ["worker", "worker"]
        assert all(c["output"].startswith("scripted output") and c["messages"] for c in trace["calls"])
    # The report's trace browser shows them.
    assert run_cli("report", run_dir, "--html").returncode == 0
    text = (run_dir / "report.html").read_text()
    pairs = json.loads(text.split('<script id="pairs" type="application/json">')[1].split("</script>")[0])
    assert sorted((p["strategy"], len(p["calls"]), bool(p["error"])) for p in pairs) == [("mapreduce", 2, True), ("memagent", 2, True)]


def test_a_failed_call_keeps_the_calls_in_flight_beside_it_and_starts_few_more():
    import asyncio
    import itertools

    from coa.config import Config
    from coa.errors import ModelError
    from coa.eval.datasets import Example
    from coa.eval.executors import run_pair
    from coa.eval.runner import StrategySpec
    from coa.models.scripted import ScriptedModel
    from coa.task import Task

    count = itertools.count()

    def reply(messages):  # the first map call fails at once; the others finish a little later
        if next(count) == 0:
            raise ModelError("the server went away")
        time.sleep(0.5)
        return "Answer: x"

    document = " ".join(f"Sentence {i} of the long text says {i * 7}." for i in range(600))
    model = ScriptedModel(reply=reply, context_window=512)
    example = Example("e", Task(document, "Which number?"), ["42"], "qa_f1")
    # Two calls at a time: the second runs beside the failing first. The failure takes an iteration
    # of the event loop to reach the pair, in which a third may begin; none begins after that.
    row = asyncio.run(run_pair("d", 0, example, StrategySpec.parse("mapreduce"), model,
                               Config(window=512, max_cu_tokens=64, concurrency=2)))
    assert row["error"] == "the server went away"
    assert 2 <= len(model.prompts) <= 3  # of the many chunks' calls
    assert row["calls"] == len(row["trace"]["calls"]) == len(model.prompts) - 1  # every call that finished
    assert all(c["output"] == "Answer: x" for c in row["trace"]["calls"])


def test_an_unreadable_jsonl_row_is_one_line_naming_it(tmp_path):
    good = json.dumps({"context": "x y z", "input": "q", "answers": ["a"]})
    for name, line, message in [("deep", '{"context": "x", "more": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply to read"),
                                ("huge", '{"context": "x", "answers": [' + "9" * 5000 + "]}", "a number of more than 4300 digits")]:
        path = tmp_path / f"{name}.jsonl"
        path.write_text(f"{good}\n{line}\n")
        result = run_cli("eval", "--dataset", f"jsonl:{path}", "-s", "vanilla", "--model", "scripted", "--out", tmp_path / name)
        err = result.stderr.decode()
        assert result.returncode == 2 and err.strip() == f"error: {path}:2: {message}", err
