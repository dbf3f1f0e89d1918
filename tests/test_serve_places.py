"""`coa serve` never lets a request choose where the server connects or what it reads: the options
that name a place (`coa.strategies.options.places`) are the operator's (`coa serve --opt`), and
a request naming one is refused before anything runs. A listener on 127.0.0.1 records every
connection, so "nothing was reached" is observed, not assumed; keys are looked for in its bytes."""

from __future__ import annotations

import json
import sys

import httpx
import pytest

from coa.models.scripted import ScriptedModel
from coa.strategies.base import STRATEGIES
from coa.strategies.options import places
from conftest import Recorder, free_port, http_reply, run_cli, running, server_process

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

DOCUMENT = " ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(120))
QUESTION = "What happens in event 7?"
BACKEND_KEY = "sk-backend-secret-4417"  # the chat backend's key, also in the server's OPENAI_API_KEY
CLIENT_KEY = "sk-client-key-9921"
PLACED = sorted((entry.name, key) for entry in STRATEGIES.items() for key in places(entry.obj))
# What makes a strategy use its place: rag reads embed_url only for dense retrieval.
USES = {"rag": {"retriever": "dense", "embed_model": "emb"}, "longrag": {"retriever": "dense", "embed_model": "emb"}}


def embeddings(request: bytes) -> bytes:
    """An embedding server's reply: a small vector per input."""
    head, _, body = request.partition(b"\r\n\r\n")
    if not head.startswith(b"POST /v1/embeddings "):
        return http_reply(404, {"error": {"message": "no such path"}})
    texts = json.loads(body)["input"]
    return http_reply(200, {"object": "list", "data": [{"object": "embedding", "index": i,
                                                        "embedding": [1.0, float(i % 3), 0.5]} for i in range(len(texts))]})


def chat(strategy: str, options: dict | None = None, **coa) -> dict:
    return {"model": f"coa/{strategy}", "messages": [{"role": "user", "content": DOCUMENT},
                                                     {"role": "user", "content": QUESTION}],
            "coa": {"options": options or {}, **coa}}


def test_rag_embed_url_is_a_place():
    assert ("rag", "embed_url") in PLACED  # else the test below would check nothing


@pytest.mark.parametrize(("strategy", "key"), PLACED)
def test_a_request_naming_a_place_is_refused_and_nothing_is_reached(tmp_path, monkeypatch, strategy, key):
    monkeypatch.setenv("OPENAI_API_KEY", BACKEND_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    recorder = Recorder(reply=embeddings)
    uses = USES.get(strategy, {})
    try:
        with running(ScriptedModel(context_window=512), tmp_path, api_keys=[CLIENT_KEY]) as (base, _):
            auth = {"Authorization": f"Bearer {CLIENT_KEY}"}
            job = {"document": DOCUMENT, "question": QUESTION, "strategy": strategy}
            tries = {
                "coa.options": httpx.post(f"{base}/v1/chat/completions", headers=auth, timeout=30,
                                          json=chat(strategy, {**uses, key: recorder.url})),
                "coa.options, spelt with -": httpx.post(f"{base}/v1/chat/completions", headers=auth, timeout=30,
                                                        json=chat(strategy, {**uses, key.replace("_", "-"): recorder.url})),
                "options": httpx.post(f"{base}/v1/runs", headers=auth, timeout=30,
                                      json={**job, "options": {**uses, key: recorder.url}}),
                "options, as a form": httpx.post(f"{base}/v1/runs", headers=auth, timeout=30,
                                                 files={"file": ("d.txt", DOCUMENT.encode())},
                                                 data={"question": QUESTION, "strategy": strategy,
                                                       "options": json.dumps({**uses, key: recorder.url})}),
            }
            runs = httpx.get(f"{base}/v1/runs", headers=auth).json()["data"]
    finally:
        recorder.close()
    for how, response in tries.items():
        assert response.status_code == 400, (how, response.text)
        error = response.json()["error"]
        assert error["param"] == f"{how.split(',')[0]}.{key}", how
        assert error["message"].startswith(f"option {key} names a place the server connects to")
        assert f"--opt {key}=" in error["message"]
    assert runs == []  # no job was made
    assert recorder.connections == []
    assert BACKEND_KEY.encode() not in recorder.seen() and CLIENT_KEY.encode() not in recorder.seen()


def test_the_operators_place_holds_and_a_request_may_not_restate_it(tmp_path):
    url = "http://someone:pass-secret-77@127.0.0.1:9/v1"  # never connected to: bm25 needs no embeddings
    with running(ScriptedModel(context_window=512), tmp_path, options={"embed-url": url}) as (base, _):
        same = httpx.post(f"{base}/v1/chat/completions", json=chat("rag", {"embed_url": url}), timeout=30)
        reply = httpx.post(f"{base}/v1/chat/completions", json=chat("rag", trace=True), timeout=30)
        job = httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": QUESTION, "strategy": "rag"})
        httpx.get(f"{base}/v1/runs/{job.json()['id']}/events", timeout=30)
        run = httpx.get(f"{base}/v1/runs/{job.json()['id']}").json()
        page = httpx.get(f"{base}/v1/runs", timeout=30).text
    assert same.status_code == 400 and same.json()["error"]["param"] == "coa.options.embed_url"
    assert reply.status_code == 200, reply.text
    # The trace records the operator's setting, without the credentials in its URL.
    assert reply.json()["coa"]["result"]["settings"]["embed_url"] == "http://***@127.0.0.1:9/v1"
    assert run["status"] == "succeeded" and run["result"]["settings"]["embed_url"] == "http://***@127.0.0.1:9/v1"
    assert "pass-secret-77" not in reply.text + json.dumps(run) + page
    assert "pass-secret-77" not in (tmp_path / "serve.sqlite").read_bytes().decode("utf-8", "replace")


@pytest.mark.server
@pytest.mark.parametrize("embed_key", [None, "embed-secret-5530"])
def test_the_operators_embed_url_is_used_and_only_the_embed_key_goes_there(tmp_path, monkeypatch, embed_key):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env-secret-6081")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    recorder = Recorder(reply=embeddings)
    port = free_port()
    command = [sys.executable, "-m", "coa", "serve", "--model", "scripted", "--window", "512", "--port", str(port),
               "--store", str(tmp_path / "serve.sqlite"), "--backend-api-key", BACKEND_KEY,
               "--opt", f"embed_url={recorder.url}", "--opt", "retriever=dense", "--opt", "embed_model=emb",
               *(["--embed-api-key", embed_key] if embed_key else [])]
    try:
        with server_process(command, f"http://127.0.0.1:{port}/health", tmp_path, name="coa serve", timeout=60):
            reply = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=chat("rag", trace=True), timeout=60)
    finally:
        recorder.close()
    assert reply.status_code == 200, reply.text
    settings = reply.json()["coa"]["result"]["settings"]
    assert settings["retriever"] == "dense" and settings["embed_url"] == recorder.url
    seen = recorder.seen()
    assert b"POST /v1/embeddings " in seen
    assert BACKEND_KEY.encode() not in seen and b"sk-env-secret-6081" not in seen
    if embed_key:
        assert f"authorization: bearer {embed_key}".encode() in seen.lower()
    else:
        assert b"authorization" not in seen.lower()


def test_a_bad_opt_stops_serve_at_start_in_one_line(tmp_path):
    unknown = run_cli("serve", "--model", "scripted", "--store", tmp_path / "s.sqlite", "--opt", "no_such=1", timeout=60)
    bad = run_cli("serve", "--model", "scripted", "--store", tmp_path / "s.sqlite", "--opt", "order=up", timeout=60)
    for result in (unknown, bad):
        assert result.returncode == 2
        assert len(result.stderr.decode().strip().splitlines()) == 1, result.stderr
    assert "--opt no_such: no strategy has this option" in unknown.stderr.decode()
    assert "--opt order=up" in bad.stderr.decode() and "'up' is not one of" in bad.stderr.decode()
