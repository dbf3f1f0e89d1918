"""The window's arithmetic, on numbers alone: what fits, what is kept for the CU and the answer."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coa import budget
from coa.budget import MIN_ANSWER_TOKENS, MIN_CHUNK_TOKENS, SAFETY_TOKENS
from coa.errors import ConfigError, ContextOverflowError

sizes = st.integers(min_value=0, max_value=20_000)
# The window is drawn as what the prompt (and output) leave over, so that most cases fit and the
# refusals are the few near the edge (test_refusals_are_the_few_cases_near_the_edge).
extras = st.integers(min_value=0, max_value=20_000)


def refuses(call, *args) -> bool:
    try:
        call(*args)
    except ConfigError:
        return True
    return False


@given(prompt=sizes, reserve=sizes, extra=extras)
def test_text_added_within_the_room_never_overflows(prompt, reserve, extra):
    window = prompt + reserve + extra
    try:
        text = budget.text_budget(window, prompt, reserve, "worker")
    except ConfigError:
        assert window - prompt - reserve - SAFETY_TOKENS < MIN_CHUNK_TOKENS  # refused only where too little is left
        return
    assert text >= MIN_CHUNK_TOKENS
    budget.check_fits(window, prompt + text + SAFETY_TOKENS, reserve)  # even with the template's shift


def test_the_worker_keeps_room_for_the_cu_in_and_out():
    # 2048 window, a 200-token prompt, a 256-token CU read and a 256-token CU written.
    assert budget.text_budget(2048, 200, 2 * 256, "worker") == 2048 - 200 - 512 - SAFETY_TOKENS


def test_a_window_too_small_says_what_to_change():
    with pytest.raises(ConfigError, match=r"window 300 is too small: the worker prompt takes 200 tokens and 64 are kept"):
        budget.text_budget(300, 200, 64, "worker")
    with pytest.raises(ConfigError, match="too small for the answering prompt"):
        budget.answer_limit(230, 200, 500)


def test_the_answer_gets_the_tasks_limit_or_what_is_left():
    assert budget.answer_limit(8192, 500, 300) == 300
    assert budget.answer_limit(1000, 500, 800) == 1000 - 500 - SAFETY_TOKENS
    assert budget.answer_limit(1000, 500, 800, reserve=100) == 1000 - 500 - 100 - SAFETY_TOKENS


@given(prompt=sizes, extra=extras, wanted=st.integers(min_value=1, max_value=4000))
def test_a_split_shares_the_room_between_input_and_answer(prompt, extra, wanted):
    window = prompt + extra
    left = window - prompt - SAFETY_TOKENS
    try:
        text, limit = budget.split(window, prompt, wanted, "rag")
    except ConfigError:
        # Refused only where the room, shared as split shares it, gives the answer or the input too little.
        share = min(wanted, left // 2)
        assert share < MIN_ANSWER_TOKENS or left - share < MIN_CHUNK_TOKENS
        return
    assert MIN_ANSWER_TOKENS <= limit <= wanted and text >= MIN_CHUNK_TOKENS
    assert prompt + text + limit + SAFETY_TOKENS == window  # the input takes all the answer leaves
    assert limit == min(wanted, left // 2)


def test_refusals_are_the_few_cases_near_the_edge():
    """The properties above prove little if most of their cases are refusals: over a grid of what they
    draw, only the cases that leave (next to) nothing are refused, a small share of the range."""
    grid = [(prompt, extra) for prompt in range(0, 20_001, 1000) for extra in range(0, 20_001, 250)]
    for wanted in (MIN_ANSWER_TOKENS, 64, 4000):
        refused = [(p, e) for p, e in grid if refuses(budget.split, p + e, p, wanted, "rag")]
        assert 0 < len(refused) <= 0.05 * len(grid) and all(e == 0 for _, e in refused)
    # A task that wants an answer shorter than the minimum is refused however large the window.
    assert all(refuses(budget.split, p + e, p, MIN_ANSWER_TOKENS - 1, "rag") for p, e in grid)
    for reserve in (0, 300, 20_000):
        refused = [(p, e) for p, e in grid if refuses(budget.text_budget, p + reserve + e, p, reserve, "worker")]
        assert 0 < len(refused) <= 0.05 * len(grid) and all(e == 0 for _, e in refused)


def test_check_fits_refuses_one_token_over():
    budget.check_fits(100, 60, 40)
    with pytest.raises(ContextOverflowError, match="need 101 tokens, the window is 100"):
        budget.check_fits(100, 61, 40)
