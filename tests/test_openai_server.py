"""The OpenAI-compatible backend against a real server on 127.0.0.1: llama-cpp-python's own
server (the `[server]` extra) serving the embedded GGUF file."""

import json
import subprocess
import sys

import pytest

from coa.models.llamacpp import embedded_model_path
from coa.models.openai import OpenAIModel
from conftest import EXAMPLE_PLAY, free_port, run_cli, server_process

pytestmark = [pytest.mark.model, pytest.mark.server]

KEY = "test-key"
SERVER_WINDOW = 2048


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_model_path()),
               "--model_alias", "smol", "--host", "127.0.0.1", "--port", str(port),
               "--n_ctx", str(SERVER_WINDOW), "--n_threads", "2", "--api_key", KEY]
    base_url = f"http://127.0.0.1:{port}/v1"
    with server_process(command, f"{base_url}/models", tmp_path_factory.mktemp("server"), name="llama_cpp.server",
                        timeout=120, headers={"Authorization": f"Bearer {KEY}"}):
        yield base_url


@pytest.fixture(scope="module")
def short_play(tmp_path_factory):
    path = tmp_path_factory.mktemp("play") / "opening.txt"
    path.write_text(EXAMPLE_PLAY.read_text()[:9000])
    return path


def test_counts_tokens_with_the_servers_tokenizer(server, embedded):
    model = OpenAIModel("smol", base_url=server, api_key=KEY)
    text = "Fair is foul, and foul is fair: Hover through the fog and filthy air."
    assert model.count_tokens(text) == embedded.count_tokens(text)
    assert model.token_counter == "/extras/tokenize/count"


# The server runs the model on the CPU, one request at a time: on a busy machine a call can
# take minutes, longer than the default --timeout (120 s) that suits a GPU server.
SLOW = ("--timeout", "600")


def test_ask_through_the_server(server, short_play):
    result = run_cli("ask", short_play, "Who is the King of Scotland?", "--model", "openai:smol",
                     "--base-url", server, "--api-key", KEY, "--window", "2048", "--json", *SLOW)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["model"] == "openai:smol" and data["answer"].strip()
    assert len([c for c in data["calls"] if c["role"] == "worker"]) >= 2
    assert all(c["prompt_tokens"] > 0 and c["completion_tokens"] > 0 for c in data["calls"])


def test_environment_variables_are_the_defaults(server, short_play):
    env_run = subprocess.run(
        [sys.executable, "-m", "coa", "ask", str(short_play), "Who?", "--model", "openai:smol", "--window", "2048", "--json",
         *SLOW],
        capture_output=True, timeout=900,
        env={"PATH": "/usr/bin:/bin", "OPENAI_BASE_URL": server, "OPENAI_API_KEY": KEY},
    )
    assert env_run.returncode == 0, env_run.stderr


def test_server_overflow_rechunks_smaller(server, short_play):
    # We claim a 4096 window; the server holds 2048 and refuses the first prompts.
    result = run_cli("ask", short_play, "Who is the King of Scotland?", "--model", "openai:smol",
                     "--base-url", server, "--api-key", KEY, "--window", "4096", "--json", *SLOW)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["settings"]["rechunks"] >= 1
    assert all(c["prompt_tokens"] + c["completion_tokens"] <= SERVER_WINDOW for c in data["calls"])


def test_wrong_api_key_is_one_line_and_exit_code_2(server, short_play):
    result = run_cli("ask", short_play, "Who?", "--model", "openai:smol", "--base-url", server, "--api-key", "wrong")
    err = result.stderr.decode()
    assert result.returncode == 2
    assert "rejected the API key" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
