"""The OpenAI-compatible backend against servers that fail: hangs, trickles, rate limits, resets,
malformed replies. Every server is real and listens on 127.0.0.1 (tests/faultserver.py)."""

import base64
import email.utils
import itertools
import json
import math
import os
import re
import subprocess
import sys
import time

import pytest

import coa
from coa.errors import ConfigError, ContextOverflowError, ModelError
from coa.models.openai import OpenAIModel
from coa.models.registry import load_model
from coa.models.transport import MAX_TRIES, RETRY_AFTER_CAP, retry_after
from coa.models.urls import redact
from conftest import run_cli
from faultserver import OVERFLOW, OVERFLOW_ERROR, RETRIED, FaultServer, containing, hang, respond, trickle

MESSAGES = [{"role": "user", "content": "Say something."}]


def ask(model):
    return model.complete(MESSAGES, max_tokens=8)


def document(sentences: int) -> str:
    return " ".join(f"Entry {i} records that the tide at harbour {i % 7} rose {i * 3} centimetres." for i in range(sentences))


# A summary without a query: each CU is the worker's output as written, so a faulty reply taken for
# an answer would change every later prompt and the final answer.
SUMMARY = coa.Task(document(60), None, coa.Kind.SUMMARIZE)
CHAIN = coa.Config(window=700, max_cu_tokens=40)
MANAGER = containing("too long to show")  # CoA's manager prompts, and no worker's


def chain(model) -> coa.Result:
    return coa.get_strategy("coa")(model, CHAIN).run(SUMMARY)


# -- where requests go -------------------------------------------------------------------------
def test_an_openai_model_without_a_server_url_is_a_config_error(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="--base-url"):
        load_model("openai:gpt-4o-mini")
    with pytest.raises(ConfigError, match="not an http"):
        OpenAIModel("m", base_url="localhost:8000/v1")
    (tmp_path / "doc.txt").write_text("Some text. " * 20)
    result = run_cli("ask", tmp_path / "doc.txt", "Q?", "--model", "openai:gpt-4o-mini")  # OPENAI_BASE_URL is ""
    err = result.stderr.decode()
    assert result.returncode == 2 and "--base-url" in err and len(err.strip().splitlines()) == 1, err


def test_dense_rag_embeds_on_the_chat_server_with_its_key(monkeypatch):
    with FaultServer() as chat, FaultServer() as elsewhere:
        chat.routes["/embeddings"] = lambda request: respond(200, {"data": [
            {"index": i, "embedding": [text.count("harbour 3") + 0.1, 1.0]} for i, text in enumerate(request.body["input"])]})
        monkeypatch.setenv("OPENAI_BASE_URL", elsewhere.base_url)  # where the passages went before
        monkeypatch.setenv("OPENAI_API_KEY", "env-key")
        model = OpenAIModel("chat", base_url=chat.base_url, api_key="chat-key", window=1000)
        result = coa.run(coa.Task(document(40), "What rose at harbour 3?"), model, strategy="rag",
                         options={"retriever": "dense", "embed_model": "embedder", "chunk_words": 30}, window=1000)
    embeddings = chat.received("/embeddings")
    assert len(embeddings) == 1 and embeddings[0].body["model"] == "embedder"
    assert embeddings[0].headers["authorization"] == "Bearer chat-key"
    assert result.answer.startswith("note ") and elsewhere.requests == []


def test_dense_rag_with_an_in_process_model_needs_embed_url():
    with pytest.raises(ConfigError, match="embed_url"):
        coa.run(coa.Task(document(20), "Who?"), coa.ScriptedModel(context_window=1000), strategy="rag",
                options={"retriever": "dense", "embed_model": "embedder"}, window=1000)


# -- deadlines -------------------------------------------------------------------------------
@pytest.mark.parametrize("fault", [hang, trickle(head=True), trickle(head=False)], ids=["hang", "trickled head", "trickled body"])
def test_a_call_ends_at_its_deadline(fault):
    with FaultServer() as server:
        server.script.extend([fault] * 10)
        model = OpenAIModel("m", base_url=server.base_url, timeout=1)
        started = time.monotonic()
        with pytest.raises(ModelError, match="no complete reply within 1 s"):
            ask(model)
        assert time.monotonic() - started < 1.5


def test_discovery_is_bounded_by_short_timeouts():
    with FaultServer() as server:
        for path in ("/models", "/props", "/tokenize", "/tokenize/count"):
            server.routes[path] = lambda request: trickle(head=True, every=0.1)
        model = OpenAIModel("m", base_url=server.base_url, window=4096, timeout=0.3)
        started = time.monotonic()
        assert model.context_window == 4096  # /models and /props said nothing in time
        assert model.count_tokens("twelve chars") == 4 and model.token_counter == "estimate"
        assert time.monotonic() - started < 5 * 0.3 + 1  # five probes, each cut at the timeout


def test_retry_after_beyond_the_deadline_ends_at_the_deadline():
    with FaultServer() as server:
        server.script.append(respond(429, {}, headers={"Retry-After": "3600"}))
        model = OpenAIModel("m", base_url=server.base_url, timeout=1)
        started = time.monotonic()
        with pytest.raises(ModelError, match=r"within 1 s; the last try: HTTP 429"):
            ask(model)
        assert time.monotonic() - started < 1.5 and len(server.received()) == 1


# -- retries ---------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["seconds", "HTTP date"])
def test_retry_after_is_honoured(form):
    value = "1" if form == "seconds" else email.utils.formatdate(time.time() + 2, usegmt=True)  # 1 to 2 s ahead
    with FaultServer() as server:
        server.script.append(respond(503, {}, headers={"Retry-After": value}))
        text = ask(OpenAIModel("m", base_url=server.base_url)).text
        first, second = server.received()
    assert text.startswith("note ") and second.at - first.at >= 0.95


def test_retry_after_values():
    assert retry_after("2") == 2 and retry_after("0.5") == 0.5 and retry_after("-3") == 0
    assert retry_after("86400") == RETRY_AFTER_CAP
    assert retry_after(email.utils.formatdate(time.time() - 60, usegmt=True)) == 0  # a date in the past
    assert retry_after(None) is retry_after("soon") is retry_after("nan") is None


@pytest.mark.parametrize("fault", sorted(RETRIED))
def test_a_faulty_reply_is_retried_and_the_next_good_one_used(fault):
    with FaultServer() as server:
        server.script.append(fault)
        reply = ask(OpenAIModel("m", base_url=server.base_url))
        first, second = server.received()
    assert server.faults == {fault: 1}
    assert reply.text.startswith("note ") and (reply.prompt_tokens, reply.completion_tokens) == (12, 3)
    assert reply.finish_reason == "stop" and first.body == second.body


def test_tries_are_bounded():
    with FaultServer() as server:
        server.script.extend(respond(503, {}, headers={"Retry-After": "0"}) for _ in range(10))
        with pytest.raises(ModelError, match=f"failed {MAX_TRIES} tries; the last: HTTP 503"):
            ask(OpenAIModel("m", base_url=server.base_url))
        assert len(server.received()) == MAX_TRIES


def test_a_reply_that_stays_malformed_is_one_line_and_exit_code_2(tmp_path):
    (tmp_path / "doc.txt").write_text(document(10))
    with FaultServer() as server:
        server.script.extend(["null content"] * 20)
        result = run_cli("ask", tmp_path / "doc.txt", "Which harbour?", "--model", "openai:m", "--base-url", server.base_url)
        assert len(server.received()) == MAX_TRIES
    err = result.stderr.decode()
    assert result.returncode == 2 and result.stdout == b"", err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert f"failed {MAX_TRIES} tries; the last: a malformed reply: choices[0].message.content is null" in err


@pytest.mark.parametrize("key", [None, "x"], ids=["no key", "one-character key"])
def test_twenty_percent_faults_leave_every_answer_unchanged(key):
    """Retried faults change nothing. A context overflow changes what follows it (the chain re-splits,
    or the manager's CU is shrunk), so a run that met one must answer as a fault-free server that
    refuses the same prompts makes it answer."""
    with FaultServer() as server:
        model = OpenAIModel("m", base_url=server.base_url, window=700, api_key=key)
        clean = chain(model)
        assert len(clean.calls) >= 5
        answers, expected, overflowed = [], [], 0
        for seed in range(20):
            server.seed(seed, rate=0.2)
            start = len(server.received())
            answers.append(chain(model).answer)
            met = server.received()[start:]
            if any(r.fault == OVERFLOW for r in met):
                overflowed += 1
                server.seed(0, rate=0)
                server.replay(met)
                expected.append(chain(model).answer)
                assert server.pending == 0  # the fault-free run sent every prompt that was refused
            else:
                expected.append(clean.answer)
    assert answers == expected
    assert overflowed >= 1 and expected.count(clean.answer) >= 10
    assert sum(server.faults.values()) >= 20 and len(server.faults) >= 8  # faults of most kinds were met


# -- context overflow ------------------------------------------------------------------------
def test_an_overflow_is_not_retried():
    with FaultServer() as server:
        server.inject(OVERFLOW, nth=1)
        with pytest.raises(ContextOverflowError, match="maximum context length is 2048 tokens"):
            ask(OpenAIModel("m", base_url=server.base_url))
        [refused] = server.received()
    assert refused.fault == OVERFLOW and server.faults == {OVERFLOW: 1}


def test_an_overflow_on_a_worker_call_resplits_the_chunks_and_answers():
    with FaultServer() as server:
        model = OpenAIModel("m", base_url=server.base_url, window=700)
        clean = chain(model)
        start = len(server.received())
        server.inject(OVERFLOW, nth=2)  # the second worker's
        result = chain(model)
        sent = server.received()[start:]
    assert sent[1].fault == OVERFLOW and clean.workers[1].messages[-1]["content"] in sent[1].prompt
    assert result.settings["rechunks"] == 1
    assert result.settings["chunk_tokens"] == int(clean.settings["chunk_tokens"] * 0.75)
    # The first chunk is kept; the rest of the document is read again, all of it, in smaller chunks.
    assert result.workers[0].span == clean.workers[0].span and result.workers[0].output == clean.workers[0].output
    spans = [w.span for w in result.workers]
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans)) and spans[-1][1] == clean.workers[-1].span[1]
    assert len(result.workers) > len(clean.workers)
    assert result.calls[-1].role == "manager" and result.answer.startswith("note ")
    assert len(sent) == len(result.calls) + 1  # the refused call, and each call of the result once


def test_an_overflow_on_the_manager_call_shrinks_its_cu_and_answers():
    with FaultServer() as server:
        model = OpenAIModel("m", base_url=server.base_url, window=700)
        clean = chain(model)
        start = len(server.received())
        server.inject(OVERFLOW, when=MANAGER)
        result = chain(model)
        sent = server.received()[start:]
    managers = [r for r in sent if MANAGER(r)]
    assert [r.fault for r in managers] == [OVERFLOW, None]
    # No worker's call was lost or made again: only the manager's was.
    assert [(w.span, w.output) for w in result.workers] == [(w.span, w.output) for w in clean.workers]
    assert len(sent) == len(clean.calls) + 1
    assert result.calls[-1].role == "manager" and result.answer.startswith("note ")
    assert any("too long" in w and "shrunk" in w for w in result.warnings), result.warnings


def standalone(key: str, text: str) -> bool:
    """Whether `key` occurs in `text` as a token of its own, not inside a word."""
    return re.search(rf"(?<![\w-]){re.escape(key)}(?![\w-])", text) is not None


def test_an_overflow_is_recognised_with_a_one_character_key():
    """A one-letter key must not be scrubbed out of the server's words ("maximum" holds an x), and
    must still never leave in a message where the server echoes it."""
    message = OVERFLOW_ERROR["error"]["message"]
    with FaultServer() as server:
        model = OpenAIModel("m", base_url=server.base_url, window=700, api_key="x")
        server.routes["/chat/completions"] = lambda request: respond(
            400, {"error": {"message": f"{request.headers['authorization']} x: {message}"}})
        with pytest.raises(ContextOverflowError) as overflow:
            ask(model)
        server.routes["/chat/completions"] = lambda request: respond(
            400, {"error": {"message": f"{request.headers['authorization']} x: bad request"}})
        with pytest.raises(ModelError) as rejected:
            ask(model)
        del server.routes["/chat/completions"]
        assert server.received()[0].headers["authorization"] == "Bearer x"  # the echo really held the key
        clean = chain(model)
        server.inject(OVERFLOW, nth=2)
        result = chain(model)
    errors = [str(overflow.value), str(rejected.value)]
    assert "maximum context length is 2048 tokens" in errors[0] and "HTTP 400" in errors[1]
    for error in errors:
        assert "Bearer *** ***:" in error and not standalone("x", error), error
    assert result.settings["rechunks"] == 1 and result.answer.startswith("note ") and result.answer != clean.answer


def test_a_run_that_fails_at_the_manager_keeps_the_workers_calls_and_hides_the_key(tmp_path):
    """The CLI's one error line names the file that keeps the calls made; a one-character key the
    server echoes is in neither the line nor the file."""
    (tmp_path / "doc.txt").write_text(document(60))
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    with FaultServer() as server:
        server.inject(respond(400, {"error": "Bearer x: the key x may not ask for this"}), when=MANAGER, times=None)
        result = subprocess.run(
            [sys.executable, "-m", "coa", "summarize", tmp_path / "doc.txt", "--model", "openai:m",
             "--base-url", server.base_url, "--api-key", "x", "--window", "700", "--max-cu-tokens", "40"],
            capture_output=True, timeout=300, env={**os.environ, "COLUMNS": "200", "OPENAI_API_KEY": "",
                                                   "OPENAI_BASE_URL": "", "TMPDIR": str(temporary)})
        workers = [r for r in server.received() if not MANAGER(r)]
    err = result.stderr.decode()
    assert result.returncode == 2 and "Traceback" not in err and result.stdout == b"", err
    [saved] = temporary.glob("coa-partial-*.json")
    last = err.strip().splitlines()[-1]
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [last], err
    assert "HTTP 400" in last and last.endswith(f"; the {len(workers)} calls made are in {saved}"), err
    partial = json.loads(saved.read_text())
    assert [c["role"] for c in partial["calls"]] == ["worker"] * len(workers) and len(workers) >= 3
    assert "HTTP 400" in partial["error"]
    assert "Bearer ***: the key *** may not" in last and not standalone("x", last) and not standalone("x", partial["error"]), last


# -- the tokenizer ---------------------------------------------------------------------------
def test_a_tokenizer_that_fails_after_discovery_gives_way_to_the_estimate():
    def tokenize(request):
        if request.body["prompt"] == "probe":
            return respond(200, {"count": 1})
        return respond(500, {}, headers={"Retry-After": "0"})

    with FaultServer() as server:
        server.routes["/tokenize"] = tokenize
        model = OpenAIModel("m", base_url=server.base_url)
        text = "Fair is foul, and foul is fair."
        assert model.count_tokens(text) == math.ceil(len(text) / 3)
        assert model.token_counter == "estimate"
        assert len(model.warnings) == 1 and "estimated" in model.warnings[0] and "HTTP 500" in model.warnings[0]
        asked = len(server.received("/tokenize"))
        assert model.count_tokens("Hover through the fog.") == 8 and len(server.received("/tokenize")) == asked


# -- secrets ---------------------------------------------------------------------------------
def test_credentials_and_keys_never_appear_in_errors():
    key, user, password = "sk-secret-key-123", "alice", "pa55word"
    secrets = [key, password, base64.b64encode(f"{user}:{password}".encode()).decode()]
    echo = lambda request: respond(400, {"error": f"bad request {request.path} {request.headers}"})  # noqa: E731
    with FaultServer() as server:
        server.routes["/chat/completions"] = echo
        with_key = OpenAIModel("m", base_url=server.base_url, api_key=key)
        url = server.base_url.replace("http://", f"http://{user}:{password}@")
        with_login = OpenAIModel("m", base_url=url, api_key=key)
        errors = []
        for model in (with_key, with_login):
            with pytest.raises(ModelError) as error:
                ask(model)
            errors.append(str(error.value))
        server.routes["/chat/completions"] = lambda request: respond(503, {}, headers={"Retry-After": "0"})
        with pytest.raises(ModelError) as error:
            ask(with_login)
        errors.append(str(error.value))
        assert "Bearer" in server.received()[0].headers["authorization"]  # the echo really held the key
    with pytest.raises(ModelError) as error:
        ask(OpenAIModel("m", base_url=url, timeout=2))  # the server is gone
    errors.append(str(error.value))
    assert "HTTP 400" in errors[0] and "failed 5 tries" in errors[2] and "cannot reach" in errors[3]
    for message in errors:
        assert not any(secret in message for secret in secrets), message
    assert all("http://***@127.0.0.1:" in message for message in errors[1:]), errors
    assert redact(url) == server.base_url.replace("http://", "http://***@")
