"""The Ray executor on a real two-node cluster on this machine (ray.cluster_utils): the same rows
as the local executor, for `coa batch` and `coa eval`, and a worker node lost in the middle of a
run loses nothing. The model is a loopback OpenAI-compatible server whose replies are a hash of
the messages, so any executor that runs the same pairs gets the same answers."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run_cli
from faultserver import FaultServer, answer, completion, respond

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'chainofagents[ray]')")
pytestmark = pytest.mark.ray

NODE = {"num_cpus": 1, "object_store_memory": 80 * 1024**2}
KEY = "sk-coa-test-3f9a1c77e2"  # given to every run: it must turn up nowhere in Ray's files or the output


def ray_processes() -> set[int]:
    """Processes of Ray: its servers (run from the ray package) and its workers ("ray::...")."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if command.startswith(b"ray::") or b"site-packages/ray/" in command:
            found.add(int(entry.name))
    return found


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node, 1 CPU each; afterwards, no Ray process of the module is left."""
    from ray.cluster_utils import Cluster

    before = ray_processes()
    cluster = Cluster(initialize_head=True, head_node_args={**NODE, "include_dashboard": False})
    try:
        cluster.add_node(**NODE)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
    deadline = time.monotonic() + 15
    while (left := ray_processes() - before) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"Ray processes left behind: {sorted(left)}"


@pytest.fixture(scope="module")
def server():
    with FaultServer() as server:  # fault rate 0: every reply is the hash of the messages
        yield server


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """8 tasks: six documents with a question each, and one with two questions."""
    path = tmp_path_factory.mktemp("corpus") / "corpus.jsonl"
    rows = [{"id": f"r{i}", "context": f"Crate {i} sits on shelf {i * 3} of the north wing. " * 40,
             "input": f"Where is crate {i}?", "answers": [f"shelf {i * 3}"]} for i in range(6)]
    rows.append({"id": "pair", "context": "The ferry leaves at noon and the bus at six. " * 40,
                 "questions": ["When does the ferry leave?", "When does the bus leave?"]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def reference(server, corpus, tmp_path_factory):
    """The corpus run by the local executor."""
    run_dir = tmp_path_factory.mktemp("local") / "run"
    assert ok(run_cli("batch", corpus, "-s", "vanilla,coa", *model(server), "--out", run_dir)).startswith(
        "done 16, failed 0, skipped 0;")
    return run_dir


def model(server) -> tuple[str, ...]:
    return ("--model", "openai:x", "--base-url", server.base_url, "--api-key", KEY, "--window", "1024", "--timeout", "30")


def answers(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "answers.jsonl").read_text().splitlines()]


def results(run_dir: Path) -> dict:
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return {(e, s): (p, score, err) for e, s, p, score, err in
                db.execute("SELECT example, strategy, prediction, score, error FROM results")}


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    assert KEY.encode() not in result.stdout + result.stderr
    return result.stdout.decode()


def leaks(cluster) -> list[Path]:
    """The files of the cluster's session (logs, spilled objects) that hold the API key."""
    session = Path(cluster.head_node.get_session_dir_path())
    return [p for p in session.rglob("*") if p.is_file() and not p.is_socket() and KEY.encode() in p.read_bytes()]


def test_batch_on_ray_gives_the_local_executors_rows(cluster, server, corpus, reference, tmp_path):
    common = ("batch", corpus, "-s", "vanilla,coa", *model(server))
    on_ray = ok(run_cli(*common, "--out", tmp_path / "ray", "--executor", "ray", "--ray-address", cluster.address,
                        "--concurrency", "4"))
    assert on_ray.startswith("done 16, failed 0, skipped 0;")
    assert answers(tmp_path / "ray") == answers(reference)
    assert all(a["answer"] and a["answer"].startswith("note ") for a in answers(reference))
    assert results(tmp_path / "ray") == results(reference)

    resumed = ok(run_cli(*common, "-s", "rag", "--out", tmp_path / "ray", "--resume", "--executor", "ray",
                         "--ray-address", cluster.address))
    assert resumed.startswith("done 8, failed 0, skipped 16;")  # only the added strategy's pairs ran
    assert server.received()[-1].headers["authorization"] == f"Bearer {KEY}"  # the workers had the key
    assert not leaks(cluster)


def test_workers_that_cannot_build_the_model_are_one_line(cluster, corpus, tmp_path):
    result = run_cli("batch", corpus, "--out", tmp_path / "run", "--model", "gguf:/nowhere/model.gguf", "--api-key", KEY,
                     "--executor", "ray", "--ray-address", cluster.address)
    err = result.stderr.decode()
    assert result.returncode == 2 and err.strip().splitlines()[-1] == (
        "error: a Ray worker could not build the model: no GGUF file at /nowhere/model.gguf"), err
    assert KEY not in err and not leaks(cluster)


def test_eval_on_ray_gives_the_local_executors_rows(cluster, server, corpus, tmp_path):
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(line + "\n" for line in corpus.read_text().splitlines() if "questions" not in line))
    common = ("eval", "--dataset", f"jsonl:{plain}", "-s", "vanilla", *model(server))
    ok(run_cli(*common, "--out", tmp_path / "local"))
    ok(run_cli(*common, "--out", tmp_path / "ray", "--executor", "ray", "--ray-address", cluster.address, "-c", "3"))
    stored = results(tmp_path / "ray")
    assert len(stored) == 6 and stored == results(tmp_path / "local")


def test_sigterm_stops_a_ray_run_and_keeps_what_finished(cluster, corpus, tmp_path):
    # ray.init sets a SIGTERM handler that exits at once; the command's own, which says what is kept, must win.
    run_dir = tmp_path / "run"
    with FaultServer() as slow:
        slow.routes["/chat/completions"] = lambda request: delayed(answer(request.body), 0.5)
        process = start_batch(corpus, slow, run_dir, cluster, "--concurrency", "2")
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and process.poll() is None and not stored_count(run_dir):
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            _, err = process.communicate(timeout=60)
        finally:
            process.kill()
    assert process.returncode == 143, err.decode()[-3000:]
    assert "terminated (SIGTERM)" in err.decode() and "run the same command with --resume" in err.decode()
    assert 1 <= len(answers(run_dir)) == stored_count(run_dir) < 8


def test_a_worker_node_lost_mid_run_loses_nothing(cluster, corpus, reference, tmp_path):
    worker = next(node for node in cluster.list_all_nodes() if node is not cluster.head_node)
    with FaultServer() as slow:
        # The same replies, each after a pause, so that every pair is still waiting on one when the node goes.
        slow.routes["/chat/completions"] = lambda request: delayed(answer(request.body), 2.0)
        run_dir = tmp_path / "ray"
        process = start_batch(corpus, slow, run_dir, cluster, "--concurrency", "8")
        try:
            deadline = time.monotonic() + 120
            # 7 groups: the two questions over one document run in one group, one after the other.
            while len(slow.received()) < 7 and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.05)
            assert len(slow.received()) == 7, "every group should be waiting on the server"
            cluster.remove_node(worker)
            out, err = process.communicate(timeout=180)
        finally:
            process.kill()
            cluster.add_node(**NODE)  # two nodes again for whatever runs next
    assert process.returncode == 0, err.decode()[-3000:]
    assert out.decode().startswith("done 8, failed 0, skipped 0;")
    assert answers(run_dir) == [a for a in answers(reference) if a["strategy"] == "vanilla"]
    assert results(run_dir) == {key: row for key, row in results(reference).items() if key[1] == "vanilla"}
    # The groups that were running on the lost node were sent again from the head node.
    assert len(slow.received()) > 8


def start_batch(corpus, server, run_dir, cluster, *more: str) -> subprocess.Popen:
    """`coa batch -s vanilla` on the cluster, in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "coa", "batch", corpus, "-s", "vanilla", *model(server), "--out", run_dir,
         "--executor", "ray", "--ray-address", cluster.address, *more],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""})


def stored_count(run_dir: Path) -> int:
    if not (run_dir / "results.sqlite").exists():
        return 0
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return db.execute("SELECT count(*) FROM results").fetchone()[0]


def delayed(text: str, seconds: float):
    reply = respond(200, completion(text))

    def act(conn, stop):
        if not stop.wait(seconds):
            reply(conn, stop)

    return act
