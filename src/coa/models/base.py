"""The model seam: complete a chat, count tokens, know the context window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Messages = list[dict[str, str]]  # [{"role": "system" | "user" | "assistant", "content": str}]

# Chat templates wrap every message in a few special tokens (ChatML, which SmolLM2
# uses, spends 5) and prime the reply with a few more. Prompts are budgeted with
# these conservative allowances so that no template can push a call past the window.
MESSAGE_OVERHEAD = 8
REPLY_OVERHEAD = 8


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finish_reason: str = "stop"  # "stop", "length" or "repetition"
    cached_tokens: int = 0  # prompt tokens the backend reused from its cache instead of evaluating
    prefill_seconds: float | None = None  # time spent evaluating the prompt, where the backend tells


@runtime_checkable
class Model(Protocol):
    name: str

    @property
    def context_window(self) -> int: ...

    def count_tokens(self, text: str) -> int: ...

    def complete(
        self, messages: Messages, *, max_tokens: int, temperature: float = 0.0, seed: int | None = None
    ) -> Completion: ...


def count_prompt(model: Model, messages: Messages) -> int:
    """Tokens a chat prompt occupies, template allowance included."""
    return REPLY_OVERHEAD + sum(MESSAGE_OVERHEAD + model.count_tokens(m["content"]) for m in messages)


def truncate_to_tokens(model: Model, text: str, limit: int, *, keep: str = "head") -> str:
    """The longest prefix (keep="head") or suffix (keep="tail") of `text` within `limit` tokens."""
    if model.count_tokens(text) <= limit:
        return text
    part = (lambda n: text[:n]) if keep == "head" else (lambda n: text[len(text) - n :])
    lo, hi = 0, len(text)  # binary search on the number of characters kept
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if model.count_tokens(part(mid)) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return part(lo)
