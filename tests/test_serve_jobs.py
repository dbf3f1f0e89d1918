"""Job runs that end badly keep what they did: a run cut off by a stop of the server replays to a
terminal status and `done` after a restart, and a run whose backend fails keeps every call that
finished before the failure, in its events, then and after a restart."""

from __future__ import annotations

import json

import httpx
import pytest

from coa.errors import ModelError
from coa.models.scripted import ScriptedModel
from conftest import running, sse_events

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from coa.serve.store import ServeStore  # noqa: E402

DOCUMENT = " ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(300))
QUESTION = "What happens in event 7?"


def test_an_unfinished_run_in_the_store_replays_to_its_end(tmp_path):
    store = ServeStore(tmp_path / "serve.sqlite")  # as a server left it when it was killed mid-run
    run = {"id": "run_cut", "object": "coa.run", "created_at": 1, "started_at": 2, "finished_at": None,
           "status": "running", "strategy": "coa", "task": "qa", "question": QUESTION, "answer": None,
           "error": None, "usage": None}
    store.add_run("", run)
    store.add_event("run_cut", 1, "status", {"status": "running"})
    store.add_event("run_cut", 2, "call", {"type": "started", "role": "worker", "index": 0, "total": 3})
    store.close()
    for _ in range(2):  # a second restart finds it finished: nothing more is added
        with running(ScriptedModel(context_window=512), tmp_path) as (base, _):
            got = httpx.get(f"{base}/v1/runs/run_cut").json()
            events = sse_events(httpx.get(f"{base}/v1/runs/run_cut/events", timeout=30).text)
            resumed = sse_events(httpx.get(f"{base}/v1/runs/run_cut/events", headers={"Last-Event-ID": "2"},
                                           timeout=30).text)
    assert got["status"] == "failed" and got["error"]["code"] == "interrupted" and got["finished_at"]
    assert [e["event"] for e in events] == ["status", "call", "status", "done"]
    assert [int(e["id"]) for e in events] == [1, 2, 3, 4]
    assert json.loads(events[2]["data"]) == {"status": "failed"}
    assert json.loads(events[3]["data"]) == {k: v for k, v in got.items() if k != "result"}
    assert resumed == events[2:]


def test_a_failed_run_keeps_every_finished_call_in_its_events(tmp_path):
    made = []

    def reply(messages):
        made.append(1)
        if len(made) == 3:
            raise ModelError("the backend answered HTTP 500: broken")
        return f"note {len(made)}"

    with running(ScriptedModel(reply=reply, context_window=512), tmp_path) as (base, _):
        run_id = httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": QUESTION}).json()["id"]
        live = sse_events(httpx.get(f"{base}/v1/runs/{run_id}/events", timeout=30).text)
        run = httpx.get(f"{base}/v1/runs/{run_id}").json()
    with running(ScriptedModel(context_window=512), tmp_path) as (base, _):  # after a restart
        replayed = sse_events(httpx.get(f"{base}/v1/runs/{run_id}/events", timeout=30).text)
    assert run["status"] == "failed" and run["error"]["type"] == "backend_error"
    calls = [json.loads(e["data"]) for e in live if e["event"] == "call"]
    finished = [c for c in calls if c["type"] == "finished"]
    assert [c["output"] for c in finished] == ["note 1", "note 2"]  # each call made before the failure
    assert all(c["prompt_tokens"] > 0 and c["span"] for c in finished)
    assert [c["type"] for c in calls].count("started") == 3  # the third began and failed
    assert [e["event"] for e in live[-2:]] == ["status", "done"]
    assert json.loads(live[-1]["data"])["error"] == run["error"]
    assert replayed == live


def test_a_store_written_before_citations_were_kept_still_opens(tmp_path):
    import sqlite3

    from coa.serve.store import EVENTS, FILES, RUNS
    path = tmp_path / "serve.sqlite"
    db = sqlite3.connect(path)  # the schema of version 1, with one finished run
    for statement in (FILES, RUNS, EVENTS):
        db.execute(statement)
    db.execute("INSERT INTO runs (id, owner, created_at, status, strategy, task, answer) "
               "VALUES ('run_old', '', 1, 'succeeded', 'coa', 'qa', 'Thane of Cawdor')")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    store = ServeStore(path)
    old = store.run("", "run_old")
    assert old["answer"] == "Thane of Cawdor" and old["citations"] == [] and old["supported"] is None
    store.add_run("", {**old, "id": "run_new", "citations": [{"start": 0, "end": 5, "text": "Thane", "line": "Thane"}],
                       "supported": True})
    new = store.run("", "run_new")
    assert new["citations"][0]["text"] == "Thane" and new["supported"] is True


def test_a_fault_inside_a_run_is_logged_and_never_shown_to_the_client(tmp_path, caplog):
    def reply(messages):
        raise RuntimeError("secret detail of /srv/models/x.gguf")

    with caplog.at_level("ERROR", logger="coa.serve"):
        with running(ScriptedModel(reply=reply, context_window=512), tmp_path) as (base, _):
            run_id = httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": QUESTION}).json()["id"]
            sse_events(httpx.get(f"{base}/v1/runs/{run_id}/events", timeout=30).text)
            run = httpx.get(f"{base}/v1/runs/{run_id}").json()
    assert run["status"] == "failed" and run["error"]["message"] == "internal error"
    assert "secret detail" not in json.dumps(run) and run["error"]["type"] == "server_error"
    logged = [r for r in caplog.records if r.name == "coa.serve" and r.exc_info]
    assert logged and "secret detail" in str(logged[0].exc_info[1])
