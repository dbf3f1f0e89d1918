"""The model seam: complete a chat, count tokens, know the context window; and, where a backend
can, the optional capabilities, each off by default."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    from_cache: bool = False  # answered by the response cache (coa.models.cache), not the model


Embed = Callable[[list[str]], list[list[float]]]  # texts in, one vector each, in order


class Model(ABC):
    """What a backend is to coa. Every backend completes a chat, counts tokens and knows its
    context window. The capabilities below the line are optional: each default says the backend
    lacks it, and callers fall back (counting blocks of text, no prefill, an embedding server of
    the operator's).

    Thread safety: a run calls `complete`, `count_tokens` and `token_offsets` from several threads
    at once (independent calls run concurrently, up to --concurrency). A backend must be safe so
    called, and serialise inside where it cannot serve calls in parallel (the embedded model holds
    a lock around its one llama.cpp context).
    """

    name: str
    token_counter: str | None = None  # how tokens are counted, for the trace ("model tokenizer", "tiktoken", ...)
    warnings: Sequence[str] = ()  # what went wrong without failing a call (a tokenizer given up)

    @property
    @abstractmethod
    def context_window(self) -> int:
        """Tokens of one call, prompt and output together."""

    @abstractmethod
    def count_tokens(self, text: str) -> int: ...

    @abstractmethod
    def complete(
        self, messages: Messages, *, max_tokens: int, temperature: float = 0.0, seed: int | None = None
    ) -> Completion: ...

    # -- optional capabilities -----------------------------------------------------------------
    def token_offsets(self, text: str) -> Sequence[int] | np.ndarray:
        """Where each token of `text` starts, in characters, from one pass of the tokenizer."""
        raise NotImplementedError

    def prefill(self, messages: Messages) -> int:
        """Evaluate a prompt prefix into the backend's cache without generating; the tokens evaluated."""
        raise NotImplementedError

    def embedder(self, model: str) -> Embed:
        """Embeddings from `model` on this backend's own server (so the texts go nowhere else)."""
        from coa.errors import ConfigError

        raise ConfigError(f"dense retrieval with {self.name}, which is not on a server, needs --opt embed_url=URL")

    def identity(self, digest: Callable[[Path], str]) -> str:
        """What makes this backend's completions what they are, for the response cache's key (never a
        secret); `digest(path)` gives a file's SHA-256. By default the backend's name."""
        return self.name

    def close(self) -> None:  # noqa: B027  (optional: most backends hold nothing to release)
        """Release what the backend holds (connections, files); it may be used again after."""

    def scoped(self, scope: str) -> Model:
        """This backend for one client of a server (the response cache keeps clients apart)."""
        return self


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
