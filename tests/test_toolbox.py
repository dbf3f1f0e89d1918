"""What strategies share in coa.strategies.toolbox: errors of gathered calls, answering at a run
limit, and fitting a dialogue's history into the window."""

import pytest

from coa import Config, ConfigError, ScriptedModel
from coa.errors import CoaError, LimitError
from coa.session import Session
from coa.strategies.toolbox import answer_at_limit, fit_history, raise_gathered


def session(window=200):
    return Session(ScriptedModel([], context_window=window), Config(window=window), lambda event: None)


def test_a_gathered_error_other_than_a_limit_is_raised_first():
    limit, broken = LimitError("the run stopped"), CoaError("the server failed")
    with pytest.raises(CoaError, match="the server failed"):
        raise_gathered(["done", limit, broken])
    with pytest.raises(LimitError):
        raise_gathered([limit, "done"])
    raise_gathered(["done", "done"])  # nothing raised: nothing to raise


def test_at_a_limit_the_answer_comes_from_what_was_gathered_or_the_limit_stands():
    s = session()
    answer_at_limit(s, LimitError("the run stopped at its limit of 3 model calls"), True, "answered from 2 notes")
    assert s.warnings == ["the run stopped at its limit of 3 model calls: answered from 2 notes"]
    with pytest.raises(LimitError, match="3 model calls"):
        answer_at_limit(s, LimitError("the run stopped at its limit of 3 model calls"), False, "unused")


def render(shown, left_out):
    text = f"{left_out} left out. " + " ".join(v["text"] for v in shown)
    return [{"role": "user", "content": text}]


def shorten(view):
    return {**view, "text": " ".join(view["text"].split()[:5])}


def test_a_history_is_shortened_then_its_oldest_entries_go_then_the_last_is_squeezed():
    s = session(window=200)
    views = [{"text": f"entry {i} " + "word " * 40} for i in range(4)]
    fits = lambda shown, left_out: s.window.room(render(shown, left_out), 50) >= 0  # noqa: E731
    never = lambda shown, left_out: pytest.fail("squeezed though dropping old entries was enough")  # noqa: E731
    shown, left_out = fit_history(s, render, views, 50, shorten=shorten, squeeze=never, what="test")
    # Shortened oldest first, only until it fits: the newest entries stay whole.
    assert fits(shown, left_out) and left_out == 0
    assert shown[0] == shorten(views[0]) and shown[-1] == views[-1]
    # Kept whole, the last entry alone is too long: the older ones go, then it is squeezed.
    views[-1] = {"text": "entry 3 " + "word " * 300}
    shown, left_out = fit_history(s, render, views, 50, shorten=shorten, keep_last=True, what="test",
                                  squeeze=lambda shown, left_out: shorten(shown[-1]))
    assert left_out == 3 and shown == [shorten(views[-1])]


def test_a_history_that_cannot_shrink_enough_is_one_config_error():
    s = session(window=200)
    views = [{"text": "word " * 300}]
    with pytest.raises(ConfigError, match="the test prompt does not fit a 200-token window; use a larger --window"):
        fit_history(s, render, views, 50, shorten=lambda v: v, squeeze=lambda shown, left_out: None,
                    what="the test prompt")
    # A squeeze that changes nothing ends too, rather than looping.
    with pytest.raises(ConfigError, match="does not fit"):
        fit_history(s, render, views, 50, shorten=lambda v: v, squeeze=lambda shown, left_out: shown[-1], what="x")
