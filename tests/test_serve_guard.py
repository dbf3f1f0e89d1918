"""What `coa serve` admits, on a real socket on 127.0.0.1: API keys (none blank, each compared),
the Host header (one host, no list), request bodies (a stalled one is given up on; JSON only as
application/json; strict field types) and the API description at /docs (off unless asked for,
and then with nothing from a CDN)."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from coa.config import Config
from coa.errors import ConfigError
from coa.models.scripted import ScriptedModel
from conftest import run_cli, running

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from coa.serve import guard as guard_module  # noqa: E402
from coa.serve.app import STATIC, create_app  # noqa: E402

DOCUMENT = " ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(60))
QUESTION = "What happens in event 7?"
LOOPBACK = ["localhost", "127.0.0.1", "::1"]


def chat_body(**extra) -> dict:
    return {"model": "coa/vanilla", "messages": [{"role": "user", "content": DOCUMENT},
                                                 {"role": "user", "content": QUESTION}], **extra}


def exchange(port: int, data: bytes, timeout: float = 10) -> tuple[int, dict | None, bytes]:
    """Send raw bytes, read the reply to its end: (status, JSON body or None, the raw reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(data)
        reply = b""
        while True:
            piece = conn.recv(65536)
            if not piece:
                break
            reply += piece
            if b"\r\n\r\n" in reply:
                head, _, body = reply.partition(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length: *([0-9]+)", head)
                if length and len(body) >= int(length[1]):
                    break
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, json.loads(body) if body.startswith(b"{") else None, reply


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def one_line_error(body: dict | None) -> dict:
    assert body is not None and set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"] and "\n" not in body["error"]["message"]
    return body["error"]


# -- keys -----------------------------------------------------------------------------------------------
def test_a_blank_key_is_refused_at_start(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="empty or blank"):
        create_app(ScriptedModel(), Config(window=512), tmp_path / "s.sqlite", api_keys=["good", "  "])
    (tmp_path / "blank.txt").write_text("\n   \n\t\n")
    results = [run_cli("serve", "--model", "scripted", "--api-key", key, "--store", tmp_path / "s.sqlite", timeout=60)
               for key in ("", "   ")]
    results.append(run_cli("serve", "--model", "scripted", "--api-key-file", tmp_path / "blank.txt", timeout=60))
    monkeypatch.setenv("COA_API_KEY", "   ")
    results.append(run_cli("serve", "--model", "scripted", "--store", tmp_path / "s.sqlite", timeout=60))
    for result in results:
        assert result.returncode == 2, result.stderr
        assert len(result.stderr.decode().strip().splitlines()) == 1, result.stderr
    assert [("blank" in r.stderr.decode()) or ("holds no key" in r.stderr.decode()) for r in results] == [True] * 4


def test_an_empty_bearer_is_never_admitted(tmp_path):
    with running(ScriptedModel(context_window=512), tmp_path, api_keys=["key-a"]) as (base, _):
        port = port_of(base)
        statuses = []
        for value in (b"Bearer ", b"Bearer", b"Bearer     ", b"", b"bearer  key-a  "):
            request = (b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: %s\r\nConnection: close\r\n\r\n"
                       % (port, value))
            statuses.append(exchange(port, request)[0])
    assert statuses == [401, 401, 401, 401, 200]  # the scheme in any case, spaces around the key aside


def test_every_key_is_compared_whichever_matches(tmp_path, monkeypatch):
    calls = []
    compare = guard_module.hmac.compare_digest

    def counted(a, b):
        calls.append(1)
        return compare(a, b)

    monkeypatch.setattr(guard_module.hmac, "compare_digest", counted)
    keys = ["key-a", "key-b", "key-c"]
    with running(ScriptedModel(context_window=512), tmp_path, api_keys=keys) as (base, _):
        counts = []
        for key in ("key-a", "key-c", "wrong"):
            calls.clear()
            httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
            counts.append(len(calls))
    assert counts == [3, 3, 3]  # no early exit: the time taken says nothing of which key matched


# -- the Host header ------------------------------------------------------------------------------------
@pytest.mark.parametrize("hosts", [LOOPBACK, None], ids=["loopback names", "any name"])
def test_only_one_valid_host_is_admitted(tmp_path, hosts):
    with running(ScriptedModel(context_window=512), tmp_path, allowed_hosts=hosts) as (base, _):
        port = port_of(base)

        def status(*host_lines: str) -> int:
            lines = "".join(f"Host: {line}\r\n" for line in host_lines)
            return exchange(port, f"GET /v1/models HTTP/1.1\r\n{lines}Connection: close\r\n\r\n".encode())[0]

        refused = {value: status(value) for value in (
            f"127.0.0.1:{port}, evil.example", f"evil.example, 127.0.0.1:{port}", f"127.0.0.1:{port},",
            f"user@127.0.0.1:{port}", f"127.0.0.1:{port}/path", "127.0.0.1:99999", f"127.0.0.1 :{port}",
            "[::1", "[not:an:address]", "")}
        twice = status(f"127.0.0.1:{port}", "evil.example")
        admitted = {value: status(value) for value in (f"127.0.0.1:{port}", "localhost", f"[::1]:{port}", "LOCALHOST")}
        body = exchange(port, f"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:{port}, evil.example\r\n"
                              "Connection: close\r\n\r\n".encode())[1]
    assert refused == dict.fromkeys(refused, 403), refused
    assert twice in (400, 403)  # two Host headers: uvicorn's parser refuses them first, else the guard does
    assert admitted == dict.fromkeys(admitted, 200)
    error = one_line_error(body)
    assert error["type"] == "permission_error" and error["code"] == "host_not_allowed"


def test_two_host_headers_are_refused_by_the_guard_itself():
    """uvicorn's parser refuses a second Host; a server in front of the guard may not."""
    async def app(scope, receive, send):
        raise AssertionError("admitted")

    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    guard = guard_module.Guard(app, [], 1000, None)
    scope = {"type": "http", "path": "/v1/models", "headers": [(b"host", b"127.0.0.1"), (b"host", b"evil.example")]}
    asyncio.run(guard(scope, receive, send))
    assert sent[0]["status"] == 403
    assert one_line_error(json.loads(sent[1]["body"]))["message"] == "the request has 2 Host headers, not one"


# -- request bodies ---------------------------------------------------------------------------------
def test_a_stalled_body_is_given_up_with_408_and_a_slow_one_is_not(tmp_path):
    with running(ScriptedModel(context_window=512), tmp_path, body_timeout=0.5) as (base, _):
        port = port_of(base)
        body = json.dumps({"document": DOCUMENT, "question": QUESTION}).encode()
        head = (f"POST /v1/runs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        began = time.monotonic()
        status, stalled, reply = exchange(port, head + body[: len(body) // 2])  # half the body, then nothing
        waited = time.monotonic() - began
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(head)
            for start in range(0, len(body), len(body) // 4 + 1):  # every piece well within the limit
                time.sleep(0.2)
                conn.sendall(body[start : start + len(body) // 4 + 1])
            slow = conn.recv(65536)
    assert status == 408 and 0.4 < waited < 5
    error = one_line_error(stalled)
    assert error["code"] == "request_timeout" and b"connection: close" in reply.lower()
    assert slow.startswith(b"HTTP/1.1 202")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None, "application/jsonx"])
def test_json_bodies_come_only_as_application_json(tmp_path, content_type):
    body = json.dumps({"document": DOCUMENT, "question": QUESTION}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    with running(ScriptedModel(context_window=512), tmp_path) as (base, _):
        job = httpx.post(f"{base}/v1/runs", content=body, headers=headers)
        chat = httpx.post(f"{base}/v1/chat/completions", content=json.dumps(chat_body()).encode(), headers=headers)
        charset = httpx.post(f"{base}/v1/runs", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
        form = httpx.post(f"{base}/v1/runs", files={"file": ("d.txt", DOCUMENT.encode())}, data={"question": QUESTION})
    for refused in (job, chat):
        assert refused.status_code == 415, refused.text
        assert one_line_error(refused.json())["code"] == "unsupported_media_type"
    assert charset.status_code == 202 and form.status_code == 202


CHAT_FAULTS = [
    ({"stream": "yes"}, "stream"), ({"stream": 1}, "stream"), ({"temperature": True}, "temperature"),
    ({"temperature": "0.5"}, "temperature"), ({"seed": 10**30}, "seed"), ({"seed": -(2**63) - 1}, "seed"),
    ({"seed": 1.5}, "seed"), ({"seed": "7"}, "seed"), ({"seed": True}, "seed"),
    ({"coa": {"max_calls": "5"}}, "coa.max_calls"), ({"coa": {"max_calls": 5.0}}, "coa.max_calls"),
    ({"coa": {"window": True}}, "coa.window"), ({"coa": {"trace": "true"}}, "coa.trace"),
    ({"coa": {"max_total_tokens": 10**30}}, "coa.max_total_tokens"), ({"coa": {"choices": "a"}}, "coa.choices"),
    ({"stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ({"model": 5}, "model"), ({"coa": {"options": []}}, "coa.options"),
    ({"max_tokens": 8}, "max_tokens"), ({"max_completion_tokens": "64"}, "max_completion_tokens"),
]
RUN_FAULTS = [
    ({"max_calls": "5"}, "max_calls"), ({"window": 2048.0}, "window"), ({"max_total_tokens": True}, "max_total_tokens"),
    ({"question": 5}, "question"), ({"choices": "a"}, "choices"), ({"options": "{}"}, "options"),
    ({"strategy": ["coa"]}, "strategy"), ({"document_id": "file-x"}, "document_id"),
]


def test_every_field_has_a_strict_type(tmp_path):
    with running(ScriptedModel(context_window=512), tmp_path) as (base, _):
        chats = [(httpx.post(f"{base}/v1/chat/completions", json=chat_body(**fault), timeout=30), param)
                 for fault, param in CHAT_FAULTS]
        runs = [(httpx.post(f"{base}/v1/runs", json={"document": DOCUMENT, "question": QUESTION, **fault}), param)
                for fault, param in RUN_FAULTS]
        numbers = [httpx.post(f"{base}/v1/chat/completions", json=chat_body(temperature=t, seed=s), timeout=30)
                   for t, s in ((0, 0), (1, 2**63 - 1), (0.5, -(2**63)))]
    for response, param in chats + runs:
        assert response.status_code == 400, (param, response.text)
        assert one_line_error(response.json())["param"] == param, response.text
    assert [r.status_code for r in numbers] == [200, 200, 200]  # JSON integers are numbers: OpenAI's clients send 0


def test_max_completion_tokens_limits_only_the_answering_call(tmp_path):
    model = ScriptedModel(context_window=512)
    with running(model, tmp_path) as (base, _):
        for field in ("max_tokens", "max_completion_tokens"):
            reply = httpx.post(f"{base}/v1/chat/completions", json=chat_body(**{field: 21}), timeout=30)
            assert reply.status_code == 200, reply.text
            assert model.max_tokens[-1] == 21 and 21 not in model.max_tokens[:-1]
            model.max_tokens.clear()


# -- /docs ------------------------------------------------------------------------------------------------
def test_docs_are_off_unless_asked_for(tmp_path):
    with running(ScriptedModel(context_window=512), tmp_path) as (base, _):
        statuses = [httpx.get(f"{base}{path}").status_code for path in ("/docs", "/redoc", "/openapi.json")]
    assert statuses == [404, 404, 404]


def test_docs_load_nothing_from_elsewhere(tmp_path):
    with running(ScriptedModel(context_window=512), tmp_path, docs=True) as (base, _):
        page = httpx.get(f"{base}/docs")
        assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
        loaded = {asset: httpx.get(f"{base}{asset}") for asset in assets if asset.startswith("/")}
        schema = httpx.get(f"{base}/openapi.json").json()
        redoc = httpx.get(f"{base}/redoc")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "unsafe-inline" not in policy and "http" not in policy
    assert set(assets) <= {*loaded, "data:,"}, assets  # every asset is this server's own path
    assert all(response.status_code == 200 for response in loaded.values()), loaded
    for response in loaded.values():  # nor do they fetch anything from another host
        assert not re.search(r"https?://|//[a-z]|@import", response.text), response.url
    assert "/v1/chat/completions" in schema["paths"] and "ChatRequest" in schema["components"]["schemas"]
    assert redoc.status_code == 404  # FastAPI's ReDoc page loads from a CDN: never served


NODE = shutil.which("node")
# A document of a few calls for docs.js under node: what it builds, and every fetch it makes.
DOM = """
const fs = require("fs");
class Node {
  constructor(tag) { this.tag = tag; this.children = []; this.attrs = {}; this.text = ""; }
  setAttribute(k, v) { this.attrs[k] = String(v); }
  appendChild(c) { this.children.push(c); return c; }
  set textContent(t) { this.text = t; this.children = []; }
  get textContent() { return this.text + this.children.map((c) => c.textContent).join(" "); }
}
const ids = {};
global.document = { createElement: (t) => new Node(t), getElementById: (id) => (ids[id] = ids[id] || new Node("div")),
  createTextNode: (t) => Object.assign(new Node("#text"), { text: t }) };
const fetched = [];
const api = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
global.fetch = async (url) => { fetched.push(url); return { ok: true, status: 200, json: async () => api }; };
require(process.argv[3]);
setTimeout(() => console.log(JSON.stringify({ fetched, error: ids["docs-error"] ? ids["docs-error"].textContent : "",
  operations: ids["docs-operations"].textContent, schemas: ids["docs-schemas"].textContent })), 100);
"""


@pytest.mark.skipif(NODE is None, reason="no node to run the page's script")
def test_the_docs_page_renders_every_operation(tmp_path):
    with running(ScriptedModel(context_window=512), tmp_path, docs=True) as (base, _):
        schema = httpx.get(f"{base}/openapi.json").json()
    (tmp_path / "openapi.json").write_text(json.dumps(schema))
    (tmp_path / "dom.js").write_text(DOM)
    script = Path(str(STATIC / "docs.js"))
    out = subprocess.run([NODE, tmp_path / "dom.js", tmp_path / "openapi.json", script], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    shown = json.loads(out.stdout)
    assert shown["fetched"] == ["/openapi.json"] and shown["error"] == ""
    for path, operations in schema["paths"].items():
        for method in operations:
            assert f"{method.upper()} {path}" in shown["operations"], (method, path)
    assert "ChatRequest" in shown["schemas"] and "max_calls" in shown["schemas"]
