"""The `coa` command end to end, with the scripted model unless a test needs more."""

import json
import re

from coa.models.base import MESSAGE_OVERHEAD, REPLY_OVERHEAD
from conftest import JsonHandler, run_cli, serve

SCRIPTED = ("--model", "scripted", "--window", "400", "--max-cu-tokens", "40")
WORDS = re.compile(r"\w+|[^\w\s]")  # the scripted model's tokens


def test_ask_prints_the_answer_and_progress(story):
    result = run_cli("ask", story, "What happened?", *SCRIPTED)
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode().strip().startswith("scripted output")
    progress = result.stderr.decode()
    assert "worker 1/" in progress and "manager 1/1" in progress


def test_json_has_the_documented_shape(story, tmp_path):
    trace = tmp_path / "trace.json"
    result = run_cli("ask", story, "What happened?", *SCRIPTED, "--json", "--trace", trace)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert {"answer", "strategy", "model", "window", "calls", "usage"} <= data.keys()
    assert (data["strategy"], data["model"], data["window"]) == ("coa", "scripted", 400)
    roles = [c["role"] for c in data["calls"]]
    assert roles.count("worker") >= 3 and roles[-1] == "manager"
    for call in data["calls"]:
        assert {"role", "index", "prompt_tokens", "completion_tokens", "seconds", "output"} <= call.keys()
    # The totals, from what is known apart from the counts the model reported: a worker per chunk, the
    # chunks tiling the story (spans in tokens), then the manager; each prompt's words and punctuation
    # marks with the template allowances; three tokens for each "scripted output N".
    spans = [c["span"] for c in data["calls"] if c["role"] == "worker"]
    assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert spans[-1][1] == len(WORDS.findall(story.read_text()))
    assert data["usage"]["calls"] == len(spans) + 1
    assert data["usage"]["prompt_tokens"] == sum(
        REPLY_OVERHEAD + sum(MESSAGE_OVERHEAD + len(WORDS.findall(m["content"])) for m in c["messages"]) for c in data["calls"]
    )
    assert data["usage"]["completion_tokens"] == 3 * len(data["calls"])
    assert json.loads(trace.read_text()) == data


def test_several_questions_share_one_read_and_each_gets_an_answer(story, tmp_path):
    trace = tmp_path / "trace.json"
    result = run_cli("ask", story, "What happened?", "-q", "Who was there?", "-q", "When?", *SCRIPTED, "--trace", trace)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert [line for line in out.splitlines() if line.startswith("Q: ")] == ["Q: What happened?", "Q: Who was there?", "Q: When?"]
    data = json.loads(trace.read_text())
    assert [d["answer"] for d in data] == [line[3:] for line in out.splitlines() if line.startswith("A: ")]
    spans = [[tuple(c["span"]) for c in d["calls"] if c["role"] == "worker"] for d in data]
    assert spans[0] == spans[1] == spans[2] and len(spans[0]) >= 3  # the same chunks for every question
    only = run_cli("ask", story, "-q", "Who was there?", *SCRIPTED, "--json")
    assert only.returncode == 0 and isinstance(json.loads(only.stdout), dict)


def test_stdin_summarize_and_choices(story):
    text = story.read_bytes()
    assert run_cli("summarize", "-", *SCRIPTED, stdin=text).returncode == 0
    result = run_cli("ask", story, "Which?", "-c", "event one", "-c", "event two", *SCRIPTED, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "mcq"


def test_complete_code(tmp_path):
    code = tmp_path / "m.py"
    code.write_text("".join(f"def f{i}(x):\n    return x + {i}\n" for i in range(50)))
    result = run_cli("complete", code, *SCRIPTED, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "code"


def test_datasets_are_listed():
    listing = run_cli("datasets").stdout.decode()
    for name in ("niah", "hotpotqa", "qmsum", "leval", "code", "jsonl", "longbench"):
        assert f"\n{name} " in "\n" + listing


def test_models_lists_backends_and_the_embedded_file():
    result = run_cli("models")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    for form in ("embedded", "gguf:PATH", "openai:NAME"):
        assert form in out
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in out and "embedded window: 8192" in out


def test_few_invalid_bytes_warn_and_still_answer(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(("Sentence about events. " * 80).encode() + b"caf\xe9 " + b"end.")
    result = run_cli("ask", path, "What?", *SCRIPTED)
    assert result.returncode == 0
    assert "warning:" in result.stderr.decode() and "1 invalid UTF-8" in result.stderr.decode()


def bad_inputs(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("  \n\t\n ")
    (tmp_path / "nul.bin").write_bytes(b"abc\x00def" * 10)
    (tmp_path / "noise.bin").write_bytes(bytes(range(128, 256)) * 20)
    (tmp_path / "ok.txt").write_text("Some text. " * 100)
    ok = tmp_path / "ok.txt"
    return [
        (["ask", tmp_path / "missing.txt", "Q?", "--model", "scripted"], "no such file"),
        (["ask", tmp_path, "Q?", "--model", "scripted"], "is a directory"),
        (["ask", tmp_path / "empty.txt", "Q?", "--model", "scripted"], "empty"),
        (["summarize", tmp_path / "blank.txt", "--model", "scripted"], "empty"),
        (["ask", tmp_path / "nul.bin", "Q?", "--model", "scripted"], "binary"),
        (["ask", tmp_path / "noise.bin", "Q?", "--model", "scripted"], "not UTF-8"),
        (["ask", ok, "Q?", "--model", "scripted", "--window", "100"], "too small"),
        (["ask", ok, "Q?", "--model", "nonsense"], "unknown model 'nonsense'"),
        (["ask", ok, "Q?", "--model", "gguf:/no/such.gguf"], "no GGUF file"),
        (["ask", ok, "Q?", "--model", "openai:m", "--base-url", "http://127.0.0.1:9/v1"], "cannot reach"),
        (["ask", ok, "   ", "--model", "scripted"], "needs a question"),
        (["ask", ok, "Q?", "--model", "scripted", "--trace", tmp_path / "no" / "t.json"], "does not exist"),
    ]


def test_bad_input_is_one_line_and_exit_code_2(tmp_path):
    for args, message in bad_inputs(tmp_path):
        result = run_cli(*args)
        err = result.stderr.decode()
        assert result.returncode == 2, (args, err)
        assert message in err, (args, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (args, err)
        assert result.stdout == b""


def test_usage_mistakes_are_one_line_too(story):
    for args, message in (
        (["ask", story], "give a question"),
        (["ask", story, "Q?", "--window", "5"], "--window"),
        (["frobnicate"], "No such command"),
    ):
        result = run_cli(*args)
        err = result.stderr.decode()
        assert result.returncode == 2 and message in err and len(err.strip().splitlines()) == 1, err


class FlakyServer(JsonHandler):
    """An OpenAI-style endpoint that answers two chat calls, then rejects the key."""

    answered = 0

    def do_POST(self):
        self.read_json()
        if not self.path.endswith("/chat/completions"):
            return self.reply(404, {"detail": "Not Found"})
        if FlakyServer.answered >= 2:
            return self.reply(401, {"error": "invalid key"})
        FlakyServer.answered += 1
        self.reply(200, {"choices": [{"message": {"content": f"note {FlakyServer.answered}"}, "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 100, "completion_tokens": 2}})

    def do_GET(self):
        self.reply(404, {"detail": "Not Found"})


def test_a_failure_mid_chain_keeps_the_calls_made(story, tmp_path):
    trace = tmp_path / "trace.json"
    with serve(FlakyServer) as base_url:
        result = run_cli("summarize", story, "--model", "openai:m", "--base-url", base_url,
                         "--window", "400", "--max-cu-tokens", "40", "--trace", trace)
    err = result.stderr.decode()
    assert result.returncode == 2 and "rejected the API key" in err and "the 2 calls made are in" in err
    partial = json.loads(trace.read_text())
    assert [c["output"] for c in partial["calls"]] == ["note 1", "note 2"]
    assert "rejected the API key" in partial["error"]


def test_strategies_are_listed_and_selectable(story):
    listing = run_cli("strategies").stdout.decode()
    for name in ("coa", "coa-multipath", "vanilla", "rag", "merge", "hierarchical", "mapreduce", "recite", "readagent",
                 "memagent"):
        assert f"\n{name} " in "\n" + listing
    result = run_cli("ask", story, "What?", *SCRIPTED, "--strategy", "coa", "--opt", "order=rtl", "--opt", "manager=false", "--json")
    data = json.loads(result.stdout)
    assert data["settings"]["order"] == "rtl" and data["calls"][-1]["role"] == "worker"
    for args, message in ((["--strategy", "fastest"], "unknown strategy 'fastest'"), (["--opt", "depth=3"], "no option 'depth'")):
        bad = run_cli("ask", story, "What?", *SCRIPTED, *args)
        assert bad.returncode == 2 and message in bad.stderr.decode()


def test_citations_go_to_stderr_beside_the_answer(capsys):
    from coa.cli.run import _print
    from coa.task import Citation, Kind, Result

    result = Result("42", "coa", "scripted", 400, Kind.QA, [], 0.0, citations=[Citation("The number is 42.", 10, 27, 1)])
    _print([result], ["What number?"], as_json=False)
    out, err = capsys.readouterr()
    assert out == "42\n" and err == "cited (chars 10-27): The number is 42.\n"
    _print([result], ["What number?"], as_json=True)
    out, err = capsys.readouterr()
    assert json.loads(out)["citations"] == [{"text": "The number is 42.", "start": 10, "end": 27, "worker": 1, "line": ""}] and not err


def test_max_calls_stops_reading_and_says_so(story):
    result = run_cli("ask", story, "What happened?", "--model", "scripted", "--window", "320", "--max-calls", "2")
    assert result.returncode == 0, result.stderr
    stderr = result.stderr.decode()
    assert "warning: the run stopped at its limit of 2 model calls (max_calls): the answer is from the first 1 of" in stderr
    refused = run_cli("ask", story, "What happened?", "--model", "scripted", "--window", "320", "--max-calls", "1")
    assert refused.returncode == 2
    assert refused.stderr.decode().strip().splitlines()[-1] == "error: the run stopped at its limit of 1 model calls (max_calls)"
