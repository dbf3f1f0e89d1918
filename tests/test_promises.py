"""What the README promises that no other test checks: the Python API's helpers, `coa ask`'s
--verbose, --requirement and --seed, token counting for api.openai.com, the window cap from
vLLM's max_model_len, `coa serve`'s loopback default and keys; and the suite's own rule that under
CI a missing requirement fails the tests that need it."""

import json
import os
import re
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

import coa
from coa import Kind, ScriptedModel
from coa.models.openai import OpenAIModel
from coa.prompts import task_format
from conftest import REPO, JsonHandler, free_port, run_cli, serve, server_process

SCRIPTED = ("--model", "scripted", "--window", "400", "--max-cu-tokens", "40")


def document(sentences: int) -> str:
    return " ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(sentences))


def user(messages) -> str:
    return messages[-1]["content"]


FENCED = re.compile(r"<(document-[0-9a-f]+)>\n(.*?)\n</\1>", re.DOTALL)  # the chunk a worker prompt shows


# -- the Python API ---------------------------------------------------------------------------------------------
def test_ask_answers_with_the_model_object_given():
    model = ScriptedModel(context_window=8192)
    result = coa.ask(document(60), "Who?", model=model, window=400, max_cu_tokens=40)
    assert result.kind is Kind.QA and result.window == 400 and result.model == "scripted"  # the window asked
    assert [c.role for c in result.calls] == ["worker"] * (len(result.calls) - 1) + ["manager"] and len(result.calls) > 2
    # The calls went to this model, and the answer is its last output ("scripted output N" for the Nth call).
    assert len(model.prompts) == len(result.calls) and result.answer == f"scripted output {len(result.calls)}"
    mcq = coa.ask(document(20), "Which?", choices=["event one", "event two"], model=ScriptedModel(context_window=400),
                  window=400)
    assert mcq.kind is Kind.MCQ and "A. event one" in user(mcq.calls[-1].messages)
    by_name = coa.ask(document(20), "Who?", model="scripted", window=400)  # a model name is loaded
    assert by_name.model == "scripted" and by_name.calls[-1].role == "manager"


def test_ask_many_answers_each_question_with_one_read():
    questions = ["What happened in event 7?", "Who was there?"]
    model = ScriptedModel(context_window=400)
    results = coa.ask_many(document(60), questions, model=model, window=400, max_cu_tokens=40)
    assert len(results) == 2
    for question, result in zip(questions, results, strict=True):
        assert question in user(result.calls[-1].messages)
    spans = [[c.span for c in r.workers] for r in results]
    assert spans[0] == spans[1] and len(spans[0]) >= 2  # the same chunks for both questions...
    # ...read chunk-major: both questions' workers read chunk i before either reads chunk i+1.
    chunks = [found.group(0) for m in model.prompts if (found := FENCED.search(user(m)))]
    assert len(chunks) == 2 * len(spans[0]) and chunks[0] == chunks[1] != chunks[2] == chunks[3]


def test_summarize_with_and_without_a_focus():
    model = ScriptedModel(context_window=400)
    plain = coa.summarize(document(60), model=model, window=400, max_cu_tokens=40)
    assert plain.kind is Kind.SUMMARIZE and plain.calls[-1].role == "manager" and len(plain.workers) >= 2
    assert task_format("summarize").requirement in user(plain.calls[-1].messages)
    focused = coa.summarize(document(60), "the harvest festival", model=ScriptedModel(context_window=400), window=400,
                            max_cu_tokens=40)
    assert focused.kind is Kind.SUMMARIZE
    assert all("the harvest festival" in user(c.messages) for c in focused.calls)  # every call reads the focus
    assert not any("harvest" in user(c.messages) for c in plain.calls)


# -- coa ask: --verbose, --requirement, --seed -----------------------------------------------------------------
def test_verbose_prints_every_cu_in_full(story, tmp_path):
    trace = tmp_path / "trace.json"
    # The paper's CU, which is the worker's output as written.
    verbose = run_cli("ask", story, "What happened?", *SCRIPTED, "--opt", "cu=paper", "-v", "--trace", trace)
    quiet = run_cli("ask", story, "What happened?", *SCRIPTED, "--opt", "cu=paper")
    assert verbose.returncode == quiet.returncode == 0, verbose.stderr
    cus = [c["cu"] for c in json.loads(trace.read_text())["calls"] if c["role"] == "worker"]
    assert len(cus) >= 3
    lines = [line.strip() for line in verbose.stderr.decode().splitlines()]
    assert all(cu in lines for cu in cus)  # each on a line of its own, whole
    quiet_lines = [line.strip() for line in quiet.stderr.decode().splitlines()]
    assert not any(cu in quiet_lines for cu in cus) and cus[0] in quiet.stderr.decode()  # there, but on the call's line


def test_verbose_prints_the_evidence_cu_where_it_is_not_the_output(story, tmp_path):
    trace = tmp_path / "trace.json"
    verbose = run_cli("ask", story, "What happened?", *SCRIPTED, "-v", "--trace", trace)  # the evidence CU
    assert verbose.returncode == 0, verbose.stderr
    workers = [c for c in json.loads(trace.read_text())["calls"] if c["role"] == "worker"]
    shown = [line.strip() for line in verbose.stderr.decode().splitlines() if line.startswith("CU ")]
    assert len(shown) >= len(workers) >= 3  # one per worker at least (the manager's too: the CU it read)
    assert [f"CU {c['cu'].strip() or '(empty)'}" for c in workers] == shown[:len(workers)]


def test_requirement_replaces_the_managers_requirement(story, tmp_path):
    trace = tmp_path / "trace.json"
    result = run_cli("ask", story, "What happened?", *SCRIPTED, "--requirement", "Reply in French.", "--trace", trace)
    assert result.returncode == 0, result.stderr
    calls = json.loads(trace.read_text())["calls"]
    manager = user(calls[-1]["messages"])
    assert calls[-1]["role"] == "manager" and "Reply in French." in manager
    assert task_format("qa").requirement not in manager  # replaced, not added to
    assert not any("Reply in French." in user(c["messages"]) for c in calls[:-1])


def test_seed_is_recorded_and_seeds_the_permutation(story, tmp_path):
    def order(seed: str) -> tuple[int | None, list]:
        trace = tmp_path / f"trace-{seed}.json"
        result = run_cli("ask", story, "What happened?", *SCRIPTED, "--opt", "order=perm", "--opt", "chunk_tokens=60",
                         "--seed", seed, "--trace", trace)
        assert result.returncode == 0, result.stderr
        data = json.loads(trace.read_text())
        return data["settings"]["seed"], [c["span"] for c in data["calls"] if c["role"] == "worker"]

    (seed_1, first), (again, same), (seed_2, other) = order("1"), order("1"), order("2")
    assert (seed_1, again, seed_2) == (1, 1, 2)
    assert first == same and first != other and sorted(first) == sorted(other) and len(first) >= 4


# -- token counts and windows from the server -------------------------------------------------------------------
class StubEncoding:
    """tiktoken's encoding, offline: a token per word; records how it was asked."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.asked: list[dict] = []

    def encode(self, text: str, **kwargs) -> list[str]:
        self.asked.append(kwargs)
        return text.split()


def test_tokens_are_counted_with_tiktoken_for_api_openai_com(monkeypatch):
    import tiktoken

    encodings: dict[str, StubEncoding] = {}

    def for_model(name):
        if name != "gpt-4o-mini":
            raise KeyError(name)  # as tiktoken does for a model it does not know
        return encodings.setdefault("for gpt-4o-mini", StubEncoding(name))

    monkeypatch.setattr(tiktoken, "encoding_for_model", for_model)
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: encodings.setdefault(name, StubEncoding(name)))
    monkeypatch.setattr(OpenAIModel, "_probe", lambda *a, **k: pytest.fail("asked api.openai.com for a tokenizer"))
    text = "Fair is foul, and foul is fair <|endoftext|>"
    model = OpenAIModel("gpt-4o-mini", base_url="https://api.openai.com/v1", api_key="sk-test")
    assert model.count_tokens(text) == 8 and model.token_counter == "tiktoken"
    # Special-token text in a document is counted as text, not refused.
    assert encodings["for gpt-4o-mini"].asked == [{"disallowed_special": ()}]
    other = OpenAIModel("gpt-9-unknown", base_url="https://api.openai.com/v1", api_key="sk-test")
    assert other.count_tokens("one two three") == 3 and list(encodings) == ["for gpt-4o-mini", "o200k_base"]


class NoTokenizer(JsonHandler):
    """A server with no tokenize endpoint and no models list."""

    def do_GET(self):
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        self.reply(404, {"error": "not found"})


def test_other_hosts_do_not_use_tiktoken(monkeypatch):
    import tiktoken

    monkeypatch.setattr(tiktoken, "encoding_for_model", lambda name: pytest.fail("tiktoken used for another host"))
    with serve(NoTokenizer) as base_url:
        model = OpenAIModel("gpt-4o-mini", base_url=base_url)
        assert model.count_tokens("x" * 30) == 10 and model.token_counter == "estimate"  # a token per 3 characters


class VLLM(JsonHandler):
    """vLLM's models list, with its max_model_len, and a chat endpoint that always answers "none"."""

    MAX_MODEL_LEN = 1024

    def do_GET(self):
        if self.path == "/v1/models":
            self.reply(200, {"object": "list", "data": [{"id": "qwen", "object": "model",
                                                          "max_model_len": self.MAX_MODEL_LEN}]})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/v1/chat/completions":
            self.reply(404, {"error": "not found"})
            return
        self.read_json()
        self.reply(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "none"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 100, "completion_tokens": 1, "total_tokens": 101}})


def test_the_window_is_capped_at_vllms_max_model_len():
    with serve(VLLM) as base_url:
        assert OpenAIModel("qwen", base_url=base_url, window=8192).context_window == VLLM.MAX_MODEL_LEN
        assert OpenAIModel("qwen", base_url=base_url, window=512).context_window == 512  # a smaller window stays
        assert OpenAIModel("other", base_url=base_url, window=8192).context_window == 8192  # the listing is qwen's
        result = coa.ask(document(200), "Who?", model=OpenAIModel("qwen", base_url=base_url, window=8192), window=8192)
    assert result.window == VLLM.MAX_MODEL_LEN and len(result.workers) >= 2
    assert result.settings["max_cu_tokens"] == VLLM.MAX_MODEL_LEN // 8  # the CU limit follows the capped window


# -- coa serve --------------------------------------------------------------------------------------------------
@contextmanager
def coa_serve(tmp_path: Path, *extra: str):
    """`coa serve --model scripted` as a real process on a free port; yields (its base URL on
    127.0.0.1, its port, its stderr so far, whitespace made single spaces)."""
    port = free_port()
    log_dir = tmp_path / f"serve-{port}"
    log_dir.mkdir()
    command = [sys.executable, "-m", "coa", "serve", "--model", "scripted", "--window", "512", "--port", str(port),
               "--store", str(log_dir / "serve.sqlite"), *extra]
    with server_process(command, f"http://127.0.0.1:{port}/health", log_dir, name="coa serve", timeout=60):
        yield f"http://127.0.0.1:{port}", port, " ".join((log_dir / "server.log").read_text().split())


def own_address() -> str | None:
    """This machine's address on its network, where it has one (a UDP connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))
        except OSError:
            return None
        address = s.getsockname()[0]
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def status(url: str, key: str | None = None) -> int:
    return httpx.get(url, headers={"Authorization": f"Bearer {key}"} if key else {}).status_code


@pytest.mark.server
def test_serve_listens_on_loopback_by_default_and_says_it_has_no_key(tmp_path, monkeypatch):
    monkeypatch.delenv("COA_API_KEY", raising=False)
    with coa_serve(tmp_path) as (base, port, log):
        assert f"coa serve: http://127.0.0.1:{port} " in log and "no API key: open to anyone who can reach it" in log
        assert "warning:" not in log  # on loopback, no key is no warning
        assert status(f"{base}/v1/models") == 200  # no key set: open
        address = own_address()
        if address is not None:  # not reachable from the network
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://{address}:{port}/health", timeout=5)


@pytest.mark.server
def test_serve_warns_when_reachable_from_other_machines_without_a_key(tmp_path, monkeypatch):
    monkeypatch.delenv("COA_API_KEY", raising=False)
    with coa_serve(tmp_path, "--host", "0.0.0.0") as (_, _, log):
        assert "warning: 0.0.0.0 is reachable from other machines and no --api-key is set" in log


@pytest.mark.server
def test_serve_takes_keys_from_coa_api_key_and_a_key_file(tmp_path, monkeypatch):
    keys = tmp_path / "keys.txt"
    keys.write_text("file-key-1\n\n  file-key-2  \n")
    monkeypatch.setenv("COA_API_KEY", "env-key")
    # Reachable from other machines, but with keys: no warning.
    with coa_serve(tmp_path, "--host", "0.0.0.0", "--api-key-file", str(keys)) as (base, _, log):
        assert "3 API key(s)" in log and "warning:" not in log
        url = f"{base}/v1/models"
        assert [status(url, key) for key in ("env-key", "file-key-1", "file-key-2")] == [200, 200, 200]
        assert [status(url, key) for key in (None, "wrong", "file-key-3")] == [401, 401, 401]


# -- the suite: a skip is not a pass under CI -------------------------------------------------------------------
# Tests that need what a machine may lack (the shared data here; Chromium and llama-server alike, by the
# reasons conftest.MISSING lists) skip without CI and fail with it.
NEEDS = ["tests/test_multihop.py::test_the_defaults_over_the_real_essays",
         "tests/test_report_html.py::test_the_trace_browser_runs_and_shows_hostile_text_in_chromium"]


@pytest.mark.parametrize("ci", ["", "true"])
def test_under_ci_a_missing_requirement_fails_instead_of_skipping(tmp_path, ci):
    # No data directory, and a PATH without Chromium (only the environment's own commands).
    env = {**os.environ, "CI": ci, "COA_DATA_DIR": str(tmp_path / "no-data"), "PATH": str(Path(sys.executable).parent)}
    result = subprocess_pytest(NEEDS, env)
    out = result.stdout.decode()
    if ci:
        assert result.returncode == 1 and "skipped" not in out.splitlines()[-1], out
        assert out.count("a skip is not a pass") >= 3  # the data test and both Chromium cases
    else:
        assert result.returncode == 0 and "3 skipped" in out.splitlines()[-1], out


def subprocess_pytest(tests: list[str], env: dict[str, str]):
    import subprocess

    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          cwd=REPO, env=env, capture_output=True, timeout=300)
