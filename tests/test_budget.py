"""The window's arithmetic, on numbers alone: what fits, what is kept for the CU and the answer."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coa import budget
from coa.budget import MIN_ANSWER_TOKENS, MIN_CHUNK_TOKENS, SAFETY_TOKENS
from coa.errors import ConfigError, ContextOverflowError

sizes = st.integers(min_value=0, max_value=20_000)


@given(window=sizes, prompt=sizes, reserve=sizes)
def test_text_added_within_the_room_never_overflows(window, prompt, reserve):
    try:
        text = budget.text_budget(window, prompt, reserve, "worker")
    except ConfigError:
        assert window - prompt - reserve - SAFETY_TOKENS < MIN_CHUNK_TOKENS
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


@given(window=sizes, prompt=sizes, wanted=st.integers(min_value=1, max_value=4000))
def test_a_split_shares_the_room_between_input_and_answer(window, prompt, wanted):
    try:
        text, limit = budget.split(window, prompt, wanted, "rag")
    except ConfigError:
        return
    assert MIN_ANSWER_TOKENS <= limit <= wanted and text >= MIN_CHUNK_TOKENS
    assert prompt + text + limit + SAFETY_TOKENS == window  # the input takes all the answer leaves
    assert limit == min(wanted, (window - prompt - SAFETY_TOKENS) // 2)


def test_check_fits_refuses_one_token_over():
    budget.check_fits(100, 60, 40)
    with pytest.raises(ContextOverflowError, match="need 101 tokens, the window is 100"):
        budget.check_fits(100, 61, 40)
