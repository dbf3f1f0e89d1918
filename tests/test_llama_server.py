"""llama.cpp's llama-server as coa's batching backend: detection, prompt caching, token
offsets, prefill.

The first tests read llama-server's replies as tests/faultserver.py serves them, and check
where the build puts its binary. The rest start the real binary (`make llama-server`, or COA_LLAMA_SERVER) on 127.0.0.1 with the
embedded SmolLM2 file and two slots, and are skipped where there is none.
"""

import json
import os
import subprocess
import sys

import httpx
import pytest

from coa.models.discovery import identify, piece_offsets
from coa.models.llamabuild import cache_root, find_server, server_cmake_args, server_path
from coa.models.llamacpp import embedded_model_path
from coa.models.openai import MAX_TRIES, OpenAIModel
from conftest import EXAMPLE_PLAY, REPO, free_port, run_cli, server_process
from faultserver import FaultServer, completion, respond

SLOTS = 2
SLOT_WINDOW = 2048
PROPS = {"default_generation_settings": {"n_ctx": SLOT_WINDOW, "params": {}}, "total_slots": SLOTS,
         "model_path": "smol.gguf", "build_info": "b1"}
MESSAGES = [{"role": "user", "content": "Say something."}]


def real(test):
    """A test that starts the real llama-server."""
    return pytest.mark.llama_server(pytest.mark.server(test))


# -- replies as llama-server writes them ---------------------------------------------------------
def pieces(*parts) -> dict:
    return {"tokens": [{"id": i, "piece": p} for i, p in enumerate(parts)]}


def test_token_offsets_from_pieces():
    assert piece_offsets("Fair is foul", pieces("Fair", " is", " foul")) == [0, 4, 7]
    assert piece_offsets("", {"tokens": []}) == []
    # "é" (2 bytes) split across two tokens: the second starts inside the character
    assert piece_offsets("café!", pieces("caf", [0xC3], [0xA9], "!")) == [0, 3, 3, 4]
    text = "a😀b"  # a 4-byte character in three tokens, one of them starting inside it
    assert piece_offsets(text, pieces("a", [0xF0, 0x9F], [0x98, 0x80], "b")) == [0, 1, 1, 2]
    assert piece_offsets("Hello world", pieces(" Hello", " world")) == [0, 5]  # SentencePiece's space prefix


def test_token_offsets_refuse_what_cannot_be_trusted():
    with pytest.raises(NotImplementedError):
        piece_offsets("Fair", {"tokens": [17, 42]})  # ids only: the server ignored with_pieces
    with pytest.raises(NotImplementedError):
        piece_offsets("Fair is foul", pieces("fair", " is", " foul"))  # a tokenizer that normalises
    with pytest.raises(NotImplementedError):
        piece_offsets("Fair is foul", pieces("Fair", " is"))  # text left over
    with pytest.raises(Exception, match="malformed"):
        piece_offsets("Fair", pieces(3))
    with pytest.raises(Exception, match="malformed"):
        piece_offsets("Fair", pieces([300]))


def test_props_identify_llama_server_and_its_slot_window():
    server = identify(PROPS)
    assert server.is_llama_server and server.slots == SLOTS and server.window == SLOT_WINDOW
    other = identify({"default_generation_settings": {"n_ctx": 4096}})  # no slots: some other llama.cpp server
    assert not other.is_llama_server and other.slots is None and other.window == 4096
    assert identify(None) == identify({"total_slots": True, "default_generation_settings": {"n_ctx": "4096"}})
    assert not identify(None).is_llama_server


def test_cache_prompt_goes_to_llama_server_only():
    with FaultServer() as server:
        OpenAIModel("m", base_url=server.base_url).complete(MESSAGES, max_tokens=8)
        server.routes["/props"] = lambda request: respond(200, PROPS)
        model = OpenAIModel("m", base_url=server.base_url, window=8192)
        model.complete(MESSAGES, max_tokens=8)
        plain, llama = server.received()
    assert "cache_prompt" not in plain.body and llama.body["cache_prompt"] is True
    assert model.slots == SLOTS and model.context_window == SLOT_WINDOW


@pytest.mark.parametrize("extra, cached", [
    ({"usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 7}}}, 7),
    ({"timings": {"cache_n": 5, "prompt_n": 7, "prompt_ms": 20.0}}, 5),
    ({"usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": None}}, 0),
])
def test_cached_tokens_are_read_from_usage_or_timings(extra, cached):
    with FaultServer() as server:
        server.script.append(respond(200, {**completion("note"), **extra}))
        reply = OpenAIModel("m", base_url=server.base_url).complete(MESSAGES, max_tokens=8)
    assert reply.cached_tokens == cached and reply.text == "note"


@pytest.mark.parametrize("extra", [
    {"usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": "7"}}},
    {"usage": {"prompt_tokens": 12, "completion_tokens": 3, "prompt_tokens_details": [7]}},
    {"timings": {"cache_n": -1}},
    {"timings": {"prompt_n": 1.5}},
    {"timings": {"prompt_ms": "fast"}},
    {"timings": "none"},
], ids=["cached as a string", "details a list", "negative cache_n", "fractional prompt_n", "prompt_ms text",
        "timings text"])
def test_malformed_cache_counts_are_retried(extra):
    with FaultServer() as server:
        server.script.append(respond(200, {**completion("bad"), **extra}))
        reply = OpenAIModel("m", base_url=server.base_url).complete(MESSAGES, max_tokens=8)
        assert len(server.received()) == 2
    assert reply.text.startswith("note ")  # the second, good reply


def test_other_servers_neither_prefill_nor_give_offsets():
    with FaultServer() as server:
        model = OpenAIModel("m", base_url=server.base_url)
        with pytest.raises(NotImplementedError):
            model.prefill(MESSAGES)
        with pytest.raises(NotImplementedError):
            model.token_offsets("Fair is foul")
        assert model.slots is None and server.received() == [] and server.received("/tokenize") == []


def test_a_tokenizer_that_fails_gives_no_offsets_and_counting_goes_on():
    with FaultServer() as server:
        server.routes["/props"] = lambda request: respond(200, PROPS)
        server.routes["/tokenize"] = lambda request: respond(503, {}, headers={"Retry-After": "0"})
        model = OpenAIModel("m", base_url=server.base_url)
        with pytest.raises(NotImplementedError):
            model.token_offsets("Fair is foul")
        assert len(server.received("/tokenize")) == MAX_TRIES
        assert model.count_tokens("twelve chars") == 4 and model.token_counter == "estimate"
        assert len(model.warnings) == 1 and "HTTP 503" in model.warnings[0]


# -- the build's flags and where its binary lives -------------------------------------------------
def test_the_binary_is_found_by_its_flags(tmp_path, monkeypatch):
    monkeypatch.setenv("COA_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("COA_LLAMA_SERVER", raising=False)
    cpu, cuda = server_path(), server_path("90")
    assert cpu.parent.parent == tmp_path / "llama-server" and len({cpu, cuda, server_path("90", False)}) == 3
    flags = server_cmake_args()
    assert {"-DGGML_NATIVE=OFF", "-DGGML_AVX512=OFF", "-DGGML_AMX_TILE=OFF", "-DBUILD_SHARED_LIBS=OFF"} <= set(flags)
    assert "-DLLAVA_BUILD=OFF" not in flags and "-DGGML_CUDA=ON" in server_cmake_args("90")
    assert find_server() is None
    for path in (cuda, cpu):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"")
        assert find_server() == path  # a CUDA build where it is the only one; the CPU build first
    monkeypatch.setenv("COA_LLAMA_SERVER", str(tmp_path / "elsewhere"))
    assert find_server() is None


def test_the_build_script_says_where_and_refuses_a_wrong_source(tmp_path):
    env = {**os.environ, "COA_CACHE_DIR": str(tmp_path)}
    script = [sys.executable, str(REPO / "scripts" / "build_llama_server.py")]
    where = subprocess.run([*script, "--print-path"], capture_output=True, text=True, env=env)
    assert where.returncode == 1 and where.stdout.strip() == str(tmp_path / server_path().relative_to(cache_root()))
    wrong = subprocess.run([*script, "--source", str(tmp_path)], capture_output=True, text=True, env=env)
    assert wrong.returncode == 2 and len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert "holds no llama.cpp source" in wrong.stderr and not list(tmp_path.glob("llama-server/*/llama-server"))


# -- the real server -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    binary = find_server()
    if binary is None:
        own = os.environ.get("COA_LLAMA_SERVER")
        pytest.skip(f"COA_LLAMA_SERVER={own} is not a file" if own else
                    "no llama-server binary: run `make llama-server` or set COA_LLAMA_SERVER to one")
    port = free_port()
    # One thread: where the tests share the CPUs, threads that wait for each other at every
    # step can make decoding a hundred times slower.
    command = [str(binary), "--model", str(embedded_model_path()), "--host", "127.0.0.1", "--port", str(port),
               "--parallel", str(SLOTS), "--ctx-size", str(SLOTS * SLOT_WINDOW), "--threads", "1", "--cache-ram", "0"]
    root = f"http://127.0.0.1:{port}"
    with server_process(command, f"{root}/health", tmp_path_factory.mktemp("llama-server"), name="llama-server",
                        timeout=60):
        yield root


def model_on(root: str, window: int = 8192) -> OpenAIModel:
    return OpenAIModel("x", base_url=f"{root}/v1", window=window, timeout=300)


def play(start: int, length: int) -> str:
    return EXAMPLE_PLAY.read_text()[start : start + length]


def asking(text: str, question: str) -> list[dict]:
    return [{"role": "system", "content": "Answer from the text."},
            {"role": "user", "content": f"{text}\n\nQuestion: {question}"}]


@real
def test_detects_llama_server_and_caps_the_window_at_one_slot(llama_server):
    model = model_on(llama_server)
    assert model.server.is_llama_server and model.slots == SLOTS
    assert model.context_window == SLOT_WINDOW  # not the 8192 asked, nor the model's training context
    assert model.count_tokens("Fair is foul, and foul is fair.") > 0 and model.token_counter == "/tokenize"


@real
def test_a_documents_next_prompt_goes_to_the_slot_that_holds_its_prefix(llama_server):
    # One slot holds document A, the other B; B's next prompt must go to B's slot, where
    # least-recently-used would pick A's. The server keeps no other prompt cache (--cache-ram 0),
    # so B's prefix is found cached only in the slot that holds it.
    model = model_on(llama_server)
    model.complete(asking(play(0, 1800), "Who speaks first?"), max_tokens=2)
    first = model.complete(asking(play(5000, 1800), "Where are they?"), max_tokens=2)
    again = model.complete(asking(play(5000, 1800), "Who enters last?"), max_tokens=2)
    assert first.prompt_tokens > 300
    assert again.cached_tokens >= first.prompt_tokens - 20, (first, again)  # all but the question
    assert again.prefill_seconds is not None and again.prefill_seconds < first.prefill_seconds


@real
def test_token_offsets_agree_with_the_servers_count_and_slice_the_text(llama_server):
    model = model_on(llama_server)
    text = play(1000, 3000) + " Naïve café — 日本語 😀 ½ ﬁne."
    offsets = model.token_offsets(text)
    served = httpx.post(f"{llama_server}/tokenize", json={"content": text}).json()["tokens"]
    assert len(offsets) == len(served) == model.count_tokens(text)
    assert offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] < len(text)
    bounds = [*offsets, len(text)]
    assert "".join(text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)) == text


@real
def test_prefill_caches_a_prefix_for_the_request_that_extends_it(llama_server):
    model = model_on(llama_server)
    text = play(9000, 2500)
    evaluated = model.prefill([{"role": "user", "content": text}])
    assert evaluated > 400
    reply = model.complete([{"role": "user", "content": f"{text}\n\nQuestion: who speaks?"}], max_tokens=4)
    assert reply.cached_tokens >= evaluated - 10, (evaluated, reply)
    assert model.prefill([{"role": "user", "content": text}]) <= 10  # now cached already


@real
def test_coa_ask_runs_on_llama_server_and_records_cached_tokens(llama_server, tmp_path):
    path = tmp_path / "opening.txt"
    path.write_text(play(0, 4000))
    result = run_cli("ask", path, "Who is the King of Scotland?", "--model", "openai:x",
                     "--base-url", f"{llama_server}/v1", "--window", "768", "--max-cu-tokens", "32", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["answer"].strip() and len(data["calls"]) >= 3 and data["token_counter"] == "/tokenize"
    assert data["settings"]["rechunks"] == 0  # chunks cut on the server's token offsets fit first time
    # Calls on a slot that served one before find at least the chat template's opening cached.
    assert sum(call["cached_tokens"] for call in data["calls"]) > 0
