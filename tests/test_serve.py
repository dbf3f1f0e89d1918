"""`coa serve` on 127.0.0.1: the real `openai` client and plain HTTP against the real server, with
a scripted backend for control flow and the embedded model for a real run."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from coa.errors import ModelError, UnreachableError
from coa.models.scripted import ScriptedModel
from conftest import EXAMPLE_PLAY, JsonHandler, free_port, run_cli, running, serve, server_process, sse_events

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")

from coa.serve import runs as runs_module  # noqa: E402

DOCUMENT = " ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(300))
QUESTION = "What happens in event 7?"


def chat_body(**extra):
    return {"model": "coa/coa", "messages": [{"role": "user", "content": DOCUMENT}, {"role": "user", "content": QUESTION}],
            **extra}


def manager(messages) -> bool:
    """Whether a prompt is the chain manager's (of the evidence CU or of the paper's)."""
    return "too long to show" in messages[-1]["content"]


def client(base: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30)


def blocking_model(release: threading.Event, started: threading.Event | None = None) -> ScriptedModel:
    """A backend whose calls wait until `release` is set (10 s at most)."""
    def reply(messages):
        if started is not None:
            started.set()
        release.wait(10)
        return "a note"
    return ScriptedModel(reply=reply, context_window=512)


# -- chat completions -------------------------------------------------------------------------------------
def test_the_openai_client_gets_the_answer_and_usage_summed_over_every_call(tmp_path):
    model = ScriptedModel(reply=lambda m: "The manager's answer." if manager(m) else "Event 7 happens.",
                          context_window=512)
    with running(model, tmp_path) as (base, _):
        reply = client(base).chat.completions.create(
            model="coa/coa", messages=[{"role": "user", "content": DOCUMENT}, {"role": "user", "content": QUESTION}],
            extra_body={"coa": {"trace": True}}, top_p=0.5, user="someone")  # unknown fields are ignored
    assert reply.object == "chat.completion"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "stop"
    extra = reply.model_extra["coa"]
    calls = extra["result"]["calls"]
    assert extra["calls"] == len(calls) >= 3  # several workers and a manager
    assert [c["role"] for c in calls].count("worker") >= 2
    assert reply.choices[0].message.content == extra["result"]["answer"] == "The manager's answer."
    assert reply.usage.prompt_tokens == sum(c["prompt_tokens"] for c in calls)
    assert reply.usage.completion_tokens == sum(c["completion_tokens"] for c in calls)
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streaming_is_as_vllm_sends_it_with_progress_as_reasoning(tmp_path):
    model = ScriptedModel(reply=lambda m: "Final answer here" if manager(m) else "a note",
                          context_window=512)
    with running(model, tmp_path) as (base, _):
        chunks = list(client(base).chat.completions.create(
            model="coa/coa", stream=True, stream_options={"include_usage": True},
            messages=[{"role": "user", "content": DOCUMENT}, {"role": "user", "content": QUESTION}]))
        raw = httpx.post(f"{base}/v1/chat/completions", json=chat_body(stream=True), timeout=30)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    reasoning = [c.choices[0].delta.model_extra.get("reasoning_content") for c in chunks if c.choices]
    progress = [r for r in reasoning if r]
    assert len(progress) >= 3 and progress[0].startswith("worker 1/") and progress[-1].startswith("manager 1/1")
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Final answer here"
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1 and finishing[0].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens > 0  # the usage chunk comes last
    assert all(c.usage is None for c in chunks[:-1])
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.text.endswith("data: [DONE]\n\n")
    assert '"usage"' not in raw.text  # no usage chunk unless asked for


def test_the_strategy_comes_from_the_model_name_or_extra_body(tmp_path):
    with running(ScriptedModel(context_window=512), tmp_path) as (base, _):
        api = client(base)
        listed = [m.id for m in api.models.list().data]
        rag = api.chat.completions.create(model="coa/rag", messages=chat_body()["messages"])
        chosen = api.chat.completions.create(model="coa/coa", messages=chat_body()["messages"],
                                             extra_body={"coa": {"strategy": "vanilla"}})
        with pytest.raises(openai.NotFoundError) as unknown:
            api.chat.completions.create(model="gpt-4o", messages=chat_body()["messages"])
    assert {"coa/coa", "coa/rag", "coa/vanilla", "coa/readagent"} <= set(listed)
    assert rag.model_extra["coa"]["strategy"] == "rag"
    assert chosen.model_extra["coa"]["strategy"] == "vanilla" and chosen.model_extra["coa"]["calls"] == 1
    assert unknown.value.body["code"] == "model_not_found"


def test_a_bad_option_is_a_400_with_the_message_the_cli_prints(tmp_path, story):
    cli = run_cli("ask", story, "Why?", "--model", "scripted", "--opt", "order=up")
    with running(ScriptedModel(context_window=512), tmp_path) as (base, _):
        with pytest.raises(openai.BadRequestError) as bad:
            client(base).chat.completions.create(model="coa/coa", messages=chat_body()["messages"],
                                                 extra_body={"coa": {"options": {"order": "up"}}})
        typo = httpx.post(f"{base}/v1/chat/completions", json=chat_body(coa={"stratgy": "rag"}))
        no_document = httpx.post(f"{base}/v1/chat/completions", json={"model": "coa/coa", "messages": [
            {"role": "user", "content": QUESTION}]})
        not_json = httpx.post(f"{base}/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"})
    assert cli.returncode == 2
    assert bad.value.status_code == 400
    assert f"error: {bad.value.body['message']}" == cli.stderr.decode().strip()
    assert bad.value.body["param"] == "coa.options" and bad.value.body["type"] == "invalid_request_error"
    assert typo.status_code == 400 and "coa.stratgy" in typo.json()["error"]["message"]
    assert no_document.status_code == 400 and "no document" in no_document.json()["error"]["message"]
    assert not_json.status_code == 400 and not_json.json()["error"]["message"] == "the body is not valid JSON"


@pytest.mark.parametrize(("error", "status", "kind"), [
    (ModelError("the backend answered HTTP 500: broken"), 502, "backend_error"),
    (UnreachableError("cannot reach http://127.0.0.1:9 (refused)"), 503, "backend_unavailable"),
])
def test_a_backend_failure_is_502_or_503_with_its_message(tmp_path, error, status, kind):
    def fail(messages):
        raise error
    with running(ScriptedModel(reply=fail, context_window=512), tmp_path) as (base, _):
        with pytest.raises(openai.APIStatusError) as failed:
            client(base).chat.completions.create(model="coa/coa", messages=chat_body()["messages"])
        streamed = httpx.post(f"{base}/v1/chat/completions", json=chat_body(stream=True), timeout=30)
    assert failed.value.status_code == status
    assert failed.value.body == {"message": str(error), "type": kind, "param": None, "code": None}
    # Once a stream has begun its status is sent: the error comes as an event before [DONE], as vLLM sends it.
    events = [e["data"] for e in sse_events(streamed.text) if "data" in e]
    assert json.loads(events[-2])["error"]["type"] == kind and events[-1] == "[DONE]"


def test_at_its_limits_coa_answers_from_what_it_read_and_others_stop_with_422(tmp_path):
    model = ScriptedModel(context_window=512)
    with running(model, tmp_path) as (base, _):
        partial = httpx.post(f"{base}/v1/chat/completions", json=chat_body(coa={"max_calls": 3}), timeout=30)
        merge = httpx.post(f"{base}/v1/chat/completions", json=chat_body(model="coa/merge", coa={"max_calls": 2}),
                           timeout=30)
        made = len(model.prompts)
        tokens = httpx.post(f"{base}/v1/chat/completions", timeout=30,
                            json=chat_body(model="coa/merge", coa={"max_total_tokens": 1000}))
    assert partial.status_code == 200
    assert partial.json()["coa"]["calls"] == 3 and "max_calls" in partial.json()["coa"]["warnings"][0]
    assert merge.status_code == 422 and merge.json()["error"]["type"] == "run_limit_error"
    assert "limit of 2 model calls" in merge.json()["error"]["message"]
    assert 1 <= made - 3 <= 2  # a limit is checked before a call is sent: never more calls than it allows
    assert tokens.status_code == 422 and "max_total_tokens" in tokens.json()["error"]["message"]


def test_an_uploaded_document_serves_a_chat_by_its_id(tmp_path):
    with running(ScriptedModel(context_window=512), tmp_path) as (base, _):
        api = client(base)
        uploaded = api.files.create(file=("story.txt", DOCUMENT.encode()), purpose="assistants")
        reply = api.chat.completions.create(model="coa/coa", messages=[{"role": "user", "content": QUESTION}],
                                            extra_body={"coa": {"document": uploaded.id, "trace": True}})
        binary = httpx.post(f"{base}/v1/files", files={"file": ("x.bin", b"\x00\x01\x02" * 100)})
        question_only = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTION}]
        missing = httpx.post(f"{base}/v1/chat/completions", json=chat_body(messages=question_only,
                                                                           coa={"document": "file-nope"}))
        # A document in the messages as well as an uploaded one: which to read is not guessed.
        twice = httpx.post(f"{base}/v1/chat/completions", json=chat_body(coa={"document": uploaded.id}))
        removed = httpx.delete(f"{base}/v1/files/{uploaded.id}")
        gone = httpx.get(f"{base}/v1/files/{uploaded.id}")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(DOCUMENT.encode())
    workers = [c for c in reply.model_extra["coa"]["result"]["calls"] if c["role"] == "worker"]
    assert len(workers) >= 2 and "Sentence number 299" in workers[-1]["messages"][-1]["content"]
    assert binary.status_code == 400 and "binary" in binary.json()["error"]["message"]
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "coa.document"
    assert twice.status_code == 400 and twice.json()["error"]["param"] == "coa.document"
    assert "send the document one way" in twice.json()["error"]["message"]
    assert removed.json()["deleted"] is True and gone.status_code == 404


@pytest.mark.parametrize("when", ["mid-call", "at once"])
def test_a_client_that_disconnects_cancels_its_chat_run(tmp_path, when):
    release, started = threading.Event(), threading.Event()
    model = blocking_model(release, started)
    with running(model, tmp_path) as (base, app):
        with httpx.stream("POST", f"{base}/v1/chat/completions", json=chat_body(stream=True), timeout=30) as response:
            lines = response.iter_lines()  # kept: a dropped line iterator closes the response
            next(lines)  # the role chunk: the run has started
            if when == "mid-call":
                assert started.wait(5)
        deadline = time.monotonic() + 5
        while app.state.runner.live and time.monotonic() < deadline:
            time.sleep(0.05)
        live = dict(app.state.runner.live)
        calls_before = len(model.prompts)
        release.set()
        time.sleep(0.5)
    assert live == {}
    assert len(model.prompts) == calls_before  # no call began after the cancellation
    assert calls_before == 1 if when == "mid-call" else calls_before <= 1  # at once: the first may have begun


def test_quiet_streams_carry_pings(tmp_path, monkeypatch):
    monkeypatch.setattr(runs_module, "PING_SECONDS", 0.1)
    def slow(messages):
        time.sleep(0.35)
        return "a note"
    with running(ScriptedModel(reply=slow, context_window=2048), tmp_path) as (base, _):
        short = {"model": "coa/vanilla", "messages": [{"role": "user", "content": "A short text."},
                                                      {"role": "user", "content": QUESTION}], "stream": True}
        text = httpx.post(f"{base}/v1/chat/completions", json=short, timeout=30).text
    assert ": ping" in text.split("data: [DONE]")[0]


# -- auth and limits ----------------------------------------------------------------------------------------
def test_keys_guard_the_api_but_not_the_page_or_health(tmp_path):
    with running(ScriptedModel(context_window=512), tmp_path, api_keys=["key-a", "key-b"]) as (base, _):
        none = httpx.get(f"{base}/v1/models")
        wrong = httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer key-c"})
        with pytest.raises(openai.AuthenticationError):
            client(base, "nope").models.list()
        listed = client(base, "key-a").models.list()
        public = [httpx.get(f"{base}{path}").status_code for path in ("/", "/health", "/static/app.js")]
        run = httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": QUESTION},
                         headers={"Authorization": "Bearer key-a"}).json()
        other = httpx.get(f"{base}/v1/runs/{run['id']}", headers={"Authorization": "Bearer key-b"})
        own = httpx.get(f"{base}/v1/runs/{run['id']}", headers={"Authorization": "Bearer key-a"})
    assert none.status_code == wrong.status_code == 401
    assert none.json()["error"]["type"] == "authentication_error" and none.headers["www-authenticate"] == "Bearer"
    assert listed.data
    assert public == [200, 200, 200]
    assert other.status_code == 404 and own.status_code == 200  # runs belong to the key that made them


def test_other_sites_pages_and_rebound_host_names_are_refused(tmp_path):
    hosts = ["localhost", "127.0.0.1", "::1"]
    with running(ScriptedModel(context_window=512), tmp_path, allowed_hosts=hosts) as (base, _):
        port = base.rsplit(":", 1)[1]
        rebound = httpx.get(f"{base}/v1/models", headers={"Host": f"attacker.example:{port}"})
        page = httpx.get(f"{base}/", headers={"Host": f"attacker.example:{port}"})
        foreign = httpx.post(f"{base}/v1/runs", files={"file": ("d.txt", DOCUMENT.encode())}, data={"question": "Q?"},
                             headers={"Origin": "https://attacker.example"})
        own = httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": "Q?"}, headers={"Origin": base})
        named = httpx.get(f"http://localhost:{port}/v1/models")
    for refused in (rebound, page, foreign):
        assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
    assert rebound.json()["error"]["code"] == "host_not_allowed" and foreign.json()["error"]["code"] == "cross_origin"
    assert own.status_code == 202 and named.status_code == 200


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(tmp_path):
    with running(ScriptedModel(context_window=512), tmp_path, max_request_bytes=10_000) as (base, _):
        declared = httpx.post(f"{base}/v1/chat/completions", json=chat_body())
        streamed = httpx.post(f"{base}/v1/runs", content=iter([b"x" * 6000, b"x" * 6000]),
                              headers={"content-type": "application/json"})
        small = httpx.post(f"{base}/v1/chat/completions", json={
            "model": "coa/coa", "messages": [{"role": "user", "content": "A text."}, {"role": "user", "content": "Why?"}]})
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"
    assert small.status_code == 200


def test_over_max_concurrent_runs_a_key_gets_429_before_any_stream(tmp_path):
    release = threading.Event()
    with running(blocking_model(release), tmp_path, max_concurrent=2) as (base, _):
        first = [httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": QUESTION}) for _ in range(2)]
        refused = httpx.post(f"{base}/v1/chat/completions", json=chat_body(stream=True))
        with pytest.raises(openai.RateLimitError):
            client(base).chat.completions.create(model="coa/coa", messages=chat_body()["messages"])
        release.set()
        for run in first:
            httpx.get(f"{base}/v1/runs/{run.json()['id']}/events", timeout=30)  # to the end of the run
        again = httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": QUESTION})
    assert [r.status_code for r in first] == [202, 202]
    assert refused.status_code == 429 and refused.headers["content-type"] == "application/json"
    assert refused.headers["retry-after"] == "5"
    assert refused.headers["x-ratelimit-limit-requests"] == "2" and refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.json()["error"]["type"] == "rate_limit_error"
    assert again.status_code == 202


def test_unknown_paths_and_methods_get_the_error_shape(tmp_path):
    with running(ScriptedModel(context_window=512), tmp_path) as (base, _):
        missing = httpx.get(f"{base}/v1/nothing")
        method = httpx.delete(f"{base}/v1/models")
        run = httpx.get(f"{base}/v1/runs/run_nope")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    assert method.status_code == 405 and set(method.json()["error"]) == {"message", "type", "param", "code"}
    assert run.status_code == 404 and run.json()["error"]["code"] == "run_not_found"


class Broken(ScriptedModel):
    """A backend with a bug: it fails with no error of the library's, as a route starts a run."""

    def scoped(self, scope: str) -> ScriptedModel:
        raise RuntimeError("a bug in the backend at /srv/private/path")


def test_an_unexpected_error_is_a_bare_500_and_its_traceback_is_logged(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="coa.serve"), running(Broken(context_window=512), tmp_path) as (base, _):
        reply = httpx.post(f"{base}/v1/chat/completions", json=chat_body(), timeout=30)
    assert reply.status_code == 500
    assert reply.json() == {"error": {"message": "internal error", "type": "server_error", "param": None, "code": None}}
    assert not any(word in reply.text for word in ("Traceback", "RuntimeError", "a bug", "/srv/private")), reply.text
    [logged] = [record for record in caplog.records if record.name == "coa.serve" and record.exc_info]
    assert logged.levelno == logging.ERROR and "POST /v1/chat/completions" in logged.getMessage()
    assert logged.exc_info[0] is RuntimeError
    assert "Traceback (most recent call last)" in caplog.text and "in scoped" in caplog.text
    assert "RuntimeError: a bug in the backend at /srv/private/path" in caplog.text


# -- the job API ----------------------------------------------------------------------------------------------
def test_a_job_run_streams_its_calls_and_keeps_its_trace(tmp_path):
    copying = ScriptedModel(reply=lambda m: "Sentence number 7 tells of event 7 in the story.", context_window=512)
    with running(copying, tmp_path) as (base, _):
        created = httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": QUESTION})
        run_id = created.json()["id"]
        events = sse_events(httpx.get(f"{base}/v1/runs/{run_id}/events", timeout=30).text)
        resumed = sse_events(httpx.get(f"{base}/v1/runs/{run_id}/events", headers={"Last-Event-ID": "3"}, timeout=30).text)
        run = httpx.get(f"{base}/v1/runs/{run_id}").json()
        listed = httpx.get(f"{base}/v1/runs").json()["data"]
        deleted = httpx.delete(f"{base}/v1/runs/{run_id}").json()
        gone = httpx.get(f"{base}/v1/runs/{run_id}")
    assert created.status_code == 202 and created.json()["status"] in ("queued", "running")
    kinds = [e["event"] for e in events if "event" in e]
    assert kinds[0] == "status" and kinds[-1] == "done"
    calls = [json.loads(e["data"]) for e in events if e.get("event") == "call"]
    finished = [c for c in calls if c["type"] == "finished"]
    assert [c["type"] for c in calls].count("started") == len(finished) == len(run["result"]["calls"])
    workers = [c for c in finished if c["role"] == "worker"]
    assert len(workers) >= 2 and all(c["span"] for c in workers) and "event 7" in workers[-1]["cu"]
    traced = [c for c in run["result"]["calls"] if c["role"] == "worker"]
    assert [(c["cu"], c["note"]) for c in workers] == [(c["cu"], c["note"]) for c in traced]  # as passed on
    assert [int(e["id"]) for e in events if "id" in e] == list(range(1, len(kinds) + 1))
    assert [int(e["id"]) for e in resumed if "id" in e] == list(range(4, len(kinds) + 1))
    assert json.loads(events[-1]["data"])["status"] == run["status"] == "succeeded"
    assert run["answer"] == run["result"]["answer"] and run["usage"]["calls"] == len(run["result"]["calls"])
    assert [r["id"] for r in listed] == [run_id] and "result" not in listed[0]
    assert deleted["deleted"] is True and gone.status_code == 404


def test_a_job_run_from_a_multipart_upload_and_its_bad_fields(tmp_path):
    with running(ScriptedModel(context_window=512), tmp_path) as (base, _):
        form = httpx.post(f"{base}/v1/runs", files={"file": ("story.txt", DOCUMENT.encode())},
                          data={"question": QUESTION, "strategy": "coa", "options": json.dumps({"order": "rtl"})})
        httpx.get(f"{base}/v1/runs/{form.json()['id']}/events", timeout=30)
        run = httpx.get(f"{base}/v1/runs/{form.json()['id']}").json()
        bad_options = httpx.post(f"{base}/v1/runs", files={"file": ("s.txt", b"text")},
                                 data={"question": "q", "options": "{not json"})
        no_document = httpx.post(f"{base}/v1/runs", json={"question": QUESTION})
        bad_strategy = httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": QUESTION, "strategy": "cao"})
    assert form.status_code == 202
    assert run["status"] == "succeeded" and run["result"]["settings"]["order"] == "rtl"
    assert bad_options.status_code == 400 and bad_options.json()["error"]["param"] == "options"
    assert no_document.status_code == 400 and no_document.json()["error"]["param"] == "document"
    assert bad_strategy.status_code == 400 and "did you mean 'coa'" in bad_strategy.json()["error"]["message"]


def test_a_job_run_outlives_its_client_and_can_be_cancelled(tmp_path):
    release = threading.Event()
    with running(blocking_model(release), tmp_path) as (base, _):
        kept = httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": QUESTION}).json()["id"]
        with httpx.stream("GET", f"{base}/v1/runs/{kept}/events", timeout=30) as events:
            next(events.iter_lines())  # follow, then go away mid-run
        cancelled = httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": QUESTION}).json()["id"]
        stopped = httpx.delete(f"{base}/v1/runs/{cancelled}", timeout=30).json()
        release.set()
        httpx.get(f"{base}/v1/runs/{kept}/events", timeout=30)
        finished = httpx.get(f"{base}/v1/runs/{kept}").json()
        later = httpx.get(f"{base}/v1/runs/{cancelled}").json()
    assert finished["status"] == "succeeded" and finished["answer"]
    assert stopped["status"] == later["status"] == "cancelled"


class Stalling(JsonHandler):
    """A model server that never answers a completion in time."""

    def do_POST(self):
        time.sleep(30)
        self.reply(500, {})

    def do_GET(self):
        self.reply(404, {})


def test_a_run_cut_off_by_a_server_kill_reads_as_failed_after_a_restart(tmp_path):
    store = tmp_path / "serve.sqlite"
    with serve(Stalling) as backend:
        port = free_port()
        command = [sys.executable, "-m", "coa", "serve", "--model", "openai:m", "--base-url", backend, "--window", "2048",
                   "--port", str(port), "--store", str(store), "--backend-api-key", "backend-secret-key"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for(f"{base}/health", process)
            run_id = httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": QUESTION}).json()["id"]
            time.sleep(1)
            assert httpx.get(f"{base}/v1/runs/{run_id}").json()["status"] == "running"
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait()
        port = free_port()
        command[command.index("--port") + 1] = str(port)
        with server_process(command, f"http://127.0.0.1:{port}/health", tmp_path, name="coa serve", timeout=60):
            run = httpx.get(f"http://127.0.0.1:{port}/v1/runs/{run_id}").json()
            events = sse_events(httpx.get(f"http://127.0.0.1:{port}/v1/runs/{run_id}/events").text)
    assert run["status"] == "failed" and run["error"]["code"] == "interrupted"
    assert events and events[0]["event"] == "status"  # what happened before the kill is still there
    # ... and the replay ends as a finished run's does: its last status, then the run.
    assert [e["event"] for e in events[-2:]] == ["status", "done"]
    assert json.loads(events[-2]["data"]) == {"status": "failed"}
    assert json.loads(events[-1]["data"]) == {k: v for k, v in run.items() if k != "result"}
    assert "backend-secret-key" not in store.read_bytes().decode("utf-8", "replace")


def wait_for(url: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if httpx.get(url).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not come up")


# -- the command ------------------------------------------------------------------------------------------------
def test_serve_refuses_a_taken_port_and_a_missing_key_file_in_one_line(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        busy = run_cli("serve", "--model", "scripted", "--port", port, "--store", tmp_path / "s.sqlite", timeout=60)
    missing = run_cli("serve", "--model", "scripted", "--api-key-file", tmp_path / "none.txt", timeout=60)
    for result in (busy, missing):
        assert result.returncode == 2
        assert len(result.stderr.decode().strip().splitlines()) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in busy.stderr.decode()


@pytest.mark.server
def test_keys_never_reach_the_log(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "coa", "serve", "--model", "scripted", "--port", str(port),
               "--store", str(tmp_path / "s.sqlite"), "--api-key", "server-secret-1"]
    with server_process(command, f"http://127.0.0.1:{port}/health", tmp_path, name="coa serve", timeout=60):
        base = f"http://127.0.0.1:{port}"
        httpx.get(f"{base}/v1/models", headers={"Authorization": "Bearer wrong-secret-2"})
        httpx.post(f"{base}/v1/chat/completions", json=chat_body(), headers={"Authorization": "Bearer server-secret-1"})
    log = (tmp_path / "server.log").read_text()
    assert "POST /v1/chat/completions" in log  # the access log is there, without the keys
    assert "server-secret-1" not in log and "wrong-secret-2" not in log


# -- the embedded model -----------------------------------------------------------------------------------------
@pytest.mark.model
@pytest.mark.server
def test_the_openai_client_against_coa_serve_with_the_embedded_model(tmp_path):
    port = free_port()
    command = [sys.executable, "-m", "coa", "serve", "--model", "embedded", "--window", "2048", "--port", str(port),
               "--store", str(tmp_path / "s.sqlite")]
    play = EXAMPLE_PLAY.read_text()[:9000]  # a few thousand tokens: several chunks at a 2,048-token window
    messages = [{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": play},
                {"role": "user", "content": "Who are the three witches waiting to meet?"}]
    with server_process(command, f"http://127.0.0.1:{port}/health", tmp_path, name="coa serve", timeout=120):
        api = client(f"http://127.0.0.1:{port}", "none")
        api.timeout = 600
        reply = api.chat.completions.create(model="coa/coa", messages=messages, extra_body={"coa": {"trace": True}})
        chunks = list(api.chat.completions.create(model="coa/coa", messages=messages, stream=True,
                                                  stream_options={"include_usage": True},
                                                  extra_body={"coa": {"options": {"order": "ltr"}}}))
    calls = reply.model_extra["coa"]["result"]["calls"]
    assert [c["role"] for c in calls].count("worker") >= 2 and calls[-1]["role"] == "manager"
    assert reply.choices[0].message.content.strip()
    assert reply.usage.prompt_tokens == sum(c["prompt_tokens"] for c in calls) > 2000
    assert "helpful assistant" in json.dumps(calls[0]["messages"])  # the earlier messages are the document
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed.strip() and chunks[-1].usage.prompt_tokens > 2000
    progress = [c.choices[0].delta.model_extra.get("reasoning_content") for c in chunks if c.choices]
    assert sum(1 for p in progress if p and p.startswith("worker")) >= 2
