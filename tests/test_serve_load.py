"""benchmarks/serve_load.py, small: a real `coa serve` on 127.0.0.1 with the scripted model, 20
chat completions and 20 job runs at once. Every request must succeed, and every streamed one
end in `data: [DONE]` after its usage chunk. No timing is asserted: timings belong to the benchmark."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from conftest import REPO

pytest.importorskip("uvicorn", reason="coa serve needs the [serve] extra")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_load", REPO / "benchmarks" / "serve_load.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_concurrent_chat_completions_and_job_runs(capsys):
    results = load_benchmark().main(["--requests", "20", "--delay", "0.01", "--words", "1200"])
    printed = capsys.readouterr().out
    assert results["errors"] == 0, printed
    outcomes = results["outcomes"]
    assert [o.kind for o in outcomes].count("stream") == 10 and [o.kind for o in outcomes].count("job") == 21
    for outcome in outcomes:
        assert outcome.error is None and outcome.done, (outcome.kind, outcome.status, outcome.error)
        assert outcome.calls > 2, outcome  # the document is several windows long
    for stream in [o for o in outcomes if o.kind == "stream"]:
        lines = [line for line in stream.events if line]
        assert lines[-1] == "data: [DONE]", lines[-3:]
        usage = json.loads(lines[-2].removeprefix("data: "))
        assert usage["choices"] == [] and usage["usage"]["total_tokens"] > 0, usage
        assert stream.usage
    for kind in ("chat", "jobs"):
        assert results[kind]["requests"] == 20 and results[kind]["errors"] == 0
        assert results[kind]["calls_per_run"] > 2
    assert "p95 / single" in printed and "failed requests: 0" in printed
