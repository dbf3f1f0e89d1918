"""Replies of OpenAI-compatible servers, validated: anything malformed raises `Malformed`,
a failure the client retries, never an answer."""

from __future__ import annotations

import math
from typing import Any, NamedTuple


class Malformed(Exception):
    """A reply that is not what the endpoint promises."""


def malformed(what: str, value: Any) -> Malformed:
    shown = "null" if value is None else repr(value)[:60]
    return Malformed(f"a malformed reply: {what} is {shown}")


def is_count(value: Any) -> bool:
    return type(value) is int and value >= 0  # bool is an int subclass, and no count


def dig(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


class Reply(NamedTuple):
    text: str
    finish_reason: str | None
    usage: dict
    cached: int | None  # prompt tokens the server reused from its cache, where it says
    evaluated: int | None  # prompt tokens it computed (llama-server's timings.prompt_n)
    prefill_seconds: float | None  # the time it took (llama-server's timings.prompt_ms)


def chat_reply(data: Any) -> Reply:
    choices = dig(data, ("choices",))
    if not isinstance(choices, list) or not choices:
        raise malformed("choices", choices)
    content = dig(choices[0], ("message", "content"))
    if not isinstance(content, str):
        raise malformed("choices[0].message.content", content)
    finish_reason = choices[0].get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise malformed("choices[0].finish_reason", finish_reason)
    usage = data.get("usage") or {}
    if not isinstance(usage, dict):
        raise malformed("usage", usage)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        if key in usage and usage[key] is not None and not is_count(usage[key]):
            raise malformed(f"usage.{key}", usage[key])
    # Cached tokens: usage.prompt_tokens_details.cached_tokens (OpenAI, vLLM, llama-server),
    # else llama-server's timings.cache_n.
    details, timings = usage.get("prompt_tokens_details"), data.get("timings")
    cached = count_in(details, "usage.prompt_tokens_details", "cached_tokens")
    cache_n = count_in(timings, "timings", "cache_n")
    evaluated = count_in(timings, "timings", "prompt_n")
    prompt_ms = dig(timings, ("prompt_ms",))
    if prompt_ms is not None and not (type(prompt_ms) in (int, float) and 0 <= prompt_ms < math.inf):
        raise malformed("timings.prompt_ms", prompt_ms)
    seconds = None if prompt_ms is None else prompt_ms / 1000
    return Reply(content, finish_reason, usage, cache_n if cached is None else cached, evaluated, seconds)


def count_in(parent: Any, where: str, key: str) -> int | None:
    """parent[key], a count, where both are there."""
    if parent is None:
        return None
    if not isinstance(parent, dict):
        raise malformed(where, parent)
    value = parent.get(key)
    if value is not None and not is_count(value):
        raise malformed(f"{where}.{key}", value)
    return value


def embeddings(data: Any, expected: int) -> list[list[float]]:
    rows = dig(data, ("data",))
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise malformed("data", rows)
    if len(rows) != expected:
        raise Malformed(f"a malformed reply: {len(rows)} embeddings for {expected} inputs")
    vectors = [row.get("embedding") for row in sorted(rows, key=lambda row: row.get("index", 0))]
    for vector in vectors:
        if not isinstance(vector, list) or not vector or not all(isinstance(x, (int, float)) for x in vector):
            raise malformed("an embedding", vector)
    return vectors
