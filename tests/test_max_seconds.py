"""The wall-clock budget of a run (`max_seconds`): checked before each call, the chain answering from
what it read, the final call allowed past it and saying so, and the budget through the CLI and serve.

The model here sleeps a fixed time per call, so a budget of a few calls' length stops a run early
on any machine; the assertions compare with the same run unlimited, never with a call count."""

from __future__ import annotations

import time
from copy import copy

import httpx
import pytest

from coa import ChainOfAgents, Config, ScriptedModel, Task
from coa.errors import LimitError
from coa.strategies import get_strategy
from conftest import run_cli, running

CALL_SECONDS = 0.2
QUESTION = "What did sentence number 3 tell?"


def document(sentences: int) -> str:
    return " ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(sentences))


def slow(seconds=lambda call: CALL_SECONDS) -> ScriptedModel:
    """A scripted model whose call number n (from 1) first sleeps `seconds(n)`."""
    model = ScriptedModel(context_window=400)
    base = model.complete

    def complete(*args, **settings):
        time.sleep(seconds(len(model.prompts) + 1))
        return base(*args, **settings)

    model.complete = complete  # type: ignore[method-assign]
    return model


def chain(model=None, **limits) -> ChainOfAgents:
    return ChainOfAgents(model or slow(), Config(window=400, max_cu_tokens=40, **limits), options={"guard": False})


def test_the_chain_stops_reading_at_the_deadline_and_answers_from_what_it_read():
    whole = chain().run(Task(document(80), QUESTION))
    result = chain(max_seconds=3 * CALL_SECONDS).run(Task(document(80), QUESTION))
    assert 1 <= len(result.workers) < len(whole.workers) and result.calls[-1].role == "manager"
    assert result.settings["stopped_at_limit"] is True and not whole.settings["stopped_at_limit"]
    stop = next(w for w in result.warnings if "max_seconds" in w and "the answer is from" in w)
    assert stop.startswith(f"the run stopped at its limit of {3 * CALL_SECONDS:g} seconds (max_seconds; ")
    assert f"the answer is from the first {len(result.workers)} of {len(whole.workers)} chunks" in stop
    # The manager's call began past the deadline: allowed, and said in its call and the warnings.
    assert "the final call began past the run's 0.6-second limit (max_seconds)" in (result.calls[-1].note or "")
    assert any(w.startswith("the final call began past") for w in result.warnings)
    assert not any("past the run's" in (c.note or "") for c in result.calls[:-1])
    assert not any("max_seconds" in w for w in whole.warnings)


def test_a_final_call_that_runs_past_the_deadline_is_kept_and_noted():
    # The calls before the manager's are quick, the manager's takes longer than the whole budget.
    whole = chain().run(Task(document(20), QUESTION))
    calls = len(whole.calls)
    model = slow(lambda n: 1.5 if n == calls else 0)
    result = chain(model, max_seconds=1.0).run(Task(document(20), QUESTION))
    assert len(result.calls) == calls and len(result.workers) == len(whole.workers)
    assert result.answer == whole.answer and result.calls[-1].role == "manager"
    assert "the final call ran past the run's" in (result.calls[-1].note or "")


def test_a_strategy_without_a_manager_stops_with_the_limits_error():
    merge = get_strategy("merge")(slow(), Config(window=400, max_cu_tokens=40, concurrency=1, max_seconds=CALL_SECONDS))
    with pytest.raises(LimitError, match=r"limit of 0.2 seconds \(max_seconds; "):
        merge.run(Task(document(80), QUESTION))


def test_a_budget_the_run_stays_within_changes_nothing():
    limited = chain(max_seconds=600).run(Task(document(20), QUESTION))
    assert not limited.settings["stopped_at_limit"] and not any("max_seconds" in w for w in limited.warnings)
    assert not any("past the run's" in (c.note or "") for c in limited.calls)


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_the_cli_refuses_a_budget_that_is_not_a_positive_finite_number(story, value):
    for command in (["ask", story, "What happened?"], ["eval", "--dataset", "niah"]):
        result = run_cli(*command, "--model", "scripted", "--max-seconds", value)
        assert result.returncode == 2
        last = result.stderr.decode().strip().splitlines()[-1]
        assert "--max-seconds" in last and "Traceback" not in result.stderr.decode()


def test_the_cli_passes_the_budget_to_the_run(story):
    # The scripted model answers at once, so a generous budget finishes the run without a word about it.
    result = run_cli("ask", story, "What happened?", "--model", "scripted", "--window", "320", "--max-seconds", "60")
    assert result.returncode == 0, result.stderr
    assert "max_seconds" not in result.stderr.decode()


def test_serve_refuses_a_bad_max_seconds(tmp_path):
    messages = '[{"role": "user", "content": "A text."}, {"role": "user", "content": "A question?"}]'
    with running(ScriptedModel(context_window=512), tmp_path) as (base, _):
        for value in ("0", "-1", '"1"', "true", "1e7", "1e999", "NaN"):  # 1e999 reads as infinity
            body = f'{{"model": "coa/coa", "messages": {messages}, "coa": {{"max_seconds": {value}}}}}'
            reply = httpx.post(f"{base}/v1/chat/completions", content=body,
                               headers={"content-type": "application/json"}, timeout=30)
            assert reply.status_code in (400, 422), (value, reply.text)
            # JSON's own parser refuses what is not a finite number; validation the rest
            expected = "not valid JSON" if value in ("1e999", "NaN") else "max_seconds"
            assert expected in reply.json()["error"]["message"], (value, reply.text)
        run = httpx.post(f"{base}/v1/runs", json={"question": "A question?", "document": "A text.", "max_seconds": 0},
                         timeout=30)
        assert run.status_code in (400, 422) and "max_seconds" in run.json()["error"]["message"], run.text
        fine = httpx.post(f"{base}/v1/chat/completions", timeout=30,
                          content=f'{{"model": "coa/coa", "messages": {messages}, "coa": {{"max_seconds": 60}}}}',
                          headers={"content-type": "application/json"})
    assert fine.status_code == 200, fine.text


def unlimited(runner):
    other = copy(runner)
    other.config = Config(window=512)
    return other


def test_a_request_may_lower_the_operators_budget_never_raise_it(tmp_path):
    from coa.serve.runs import Runner

    runner = Runner(ScriptedModel(), Config(window=512, max_seconds=30, max_calls=10), store=None, max_concurrent=1)
    try:
        assert runner.config_for(max_seconds=5).max_seconds == 5
        assert runner.config_for(max_seconds=600).max_seconds == 30
        assert runner.config_for().max_seconds == 30 and runner.config_for(max_calls=50).max_calls == 10
        assert unlimited(runner).config_for(max_seconds=600).max_seconds == 600
    finally:
        runner.threads.shutdown()
