"""How one context window is shared out: the prompt, the text added to it, and the output kept free.

Pure arithmetic on token counts, so that each rule is tested on its own; `Session` counts the
prompts and calls these. Every function either returns a size that fits or raises a one-line
error that says what to change.
"""

from __future__ import annotations

from coa.errors import ConfigError, ContextOverflowError

SAFETY_TOKENS = 16  # joining text into a template, and chunk counts taken from the whole text, shift counts a little
MIN_CHUNK_TOKENS = 32  # below this a call sees too little text to be worth making
MIN_ANSWER_TOKENS = 16


def room(window: int, prompt: int, reserve: int) -> int:
    """Tokens left for more text in a prompt of `prompt` tokens once `reserve` are kept for output."""
    return window - prompt - reserve - SAFETY_TOKENS


def text_budget(window: int, prompt: int, reserve: int, what: str) -> int:
    """`room` for the text a call reads, or a clear error when it is too small to be useful."""
    left = room(window, prompt, reserve)
    if left < MIN_CHUNK_TOKENS:
        raise ConfigError(
            f"window {window} is too small: the {what} prompt takes {prompt} tokens and {reserve} are kept "
            f"for output, leaving {max(left, 0)} for text; use a larger --window or a smaller --max-cu-tokens"
        )
    return left


def answer_limit(window: int, prompt: int, wanted: int, reserve: int = 0) -> int:
    """Generation limit of a final answer: `wanted` (the task's), or what is left in the window;
    `reserve`: tokens of text still to be added to the prompt."""
    left = room(window, prompt, reserve)
    if left < MIN_ANSWER_TOKENS:
        raise ConfigError(
            f"window {window} is too small for the answering prompt ({prompt} tokens); "
            "use a larger --window or a shorter requirement"
        )
    return min(wanted, left)


def split(window: int, prompt: int, wanted: int, what: str) -> tuple[int, int]:
    """(tokens for input text, generation limit) of a call that answers from text added to its
    prompt: the answer gets `wanted`, or half the room where the window is small."""
    left = room(window, prompt, 0)
    limit = min(wanted, left // 2)
    if limit < MIN_ANSWER_TOKENS or left - limit < MIN_CHUNK_TOKENS:
        raise ConfigError(
            f"window {window} is too small: the {what} prompt takes {prompt} tokens, "
            "leaving too little for its input and answer; use a larger --window"
        )
    return left - limit, limit


def check_fits(window: int, prompt: int, max_tokens: int) -> None:
    """Never send what cannot fit: a prompt and its generation limit within the window."""
    if prompt + max_tokens > window:
        raise ContextOverflowError(f"prompt and output need {prompt + max_tokens} tokens, the window is {window}")
