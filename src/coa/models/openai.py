"""Any OpenAI-compatible chat server: OpenAI, vLLM, Ollama, llama.cpp's server, LM Studio.

Requests run on one background event loop so that `asyncio.timeout` can bound a whole call,
retries and waits included: httpx's own timeouts bound each socket read, which a hung server
trips only late and a server that trickles bytes never trips. The Model methods stay
synchronous and thread-safe; each waits in its own thread for its request on that loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import cached_property, lru_cache
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from coa.errors import CoaError, ConfigError, ContextOverflowError, ModelError
from coa.models.base import Completion, Messages, count_prompt
from coa.models.urls import redact, scrub

DEFAULT_TIMEOUT = 120.0  # seconds for one call, every retry included
DISCOVERY_TIMEOUT = 10.0  # seconds for each probe of what the server offers (context length, tokenizer)
MAX_TRIES = 5
RETRY_AFTER_CAP = 30.0  # seconds: a longer Retry-After is waited only this long
# Without a server's Retry-After: a random pause of up to 0.5, 1, 2, 4 s ("full jitter"), so that
# concurrent callers do not retry in lockstep.
BACKOFF = wait_random_exponential(multiplier=0.5, max=8)
# Without a tokenizer, count a token per 3 characters: English prose averages about
# 4 characters a token with BPE vocabularies, so this over-counts and stays inside the window.
CHARS_PER_TOKEN_ESTIMATE = 3
OVERFLOW_HINTS = ("context length", "context window", "maximum context", "too many tokens", "exceed", "too long")

log = logging.getLogger(__name__)
T = TypeVar("T")


class _Retry(Exception):
    """A failure worth another try: rate limit, server error, dropped connection, malformed reply."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after  # seconds the server asked us to wait, if it said


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _run(coroutine):
    """Run `coroutine` on the shared background loop and wait for its result in this thread."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="coa-http", daemon=True).start()
    future = asyncio.run_coroutine_threadsafe(coroutine, _loop)
    try:
        return future.result()
    except BaseException:  # an interrupted caller: stop its request too
        future.cancel()
        raise


class OpenAIModel:
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        window: int | None = None,
        timeout: float | None = None,
    ) -> None:
        # No built-in host: prompts and keys go only where the user pointed.
        base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or "").strip().rstrip("/")
        if not base_url:
            raise ConfigError(
                f"openai:{model} needs the server's URL: pass --base-url URL or set OPENAI_BASE_URL "
                "(for OpenAI itself: --base-url https://api.openai.com/v1)"
            )
        try:
            parts = urlsplit(base_url)
            _ = parts.port  # a malformed port raises here rather than at the first request
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"the server URL {redact(base_url)} is not an http:// or https:// URL")
        timeout = DEFAULT_TIMEOUT if timeout is None else timeout
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ConfigError(f"the timeout must be a number of seconds above 0, not {timeout}")
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = base_url
        self.timeout = float(timeout)
        self._api_key = api_key or os.environ.get("OPENAI_API_KEY") or None
        self._where = f"the model server at {redact(base_url)}"  # credentials never shown
        self._requested_window = window
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        # No per-read timeout: a long generation sends nothing until it is done. The whole call
        # is bounded by `timeout` instead (see _send); only connecting has its own short limit.
        self._client = httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(None, connect=DISCOVERY_TIMEOUT))
        self.token_counter = "unknown"  # which way tokens are counted, once known
        self.warnings: list[str] = []  # what went wrong without failing a call (a tokenizer given up)
        self._tokenizer_lost = False
        self._lock = threading.Lock()

    def with_model(self, model: str) -> OpenAIModel:
        """Another model on the same server with the same key and timeout (embeddings for RAG)."""
        return OpenAIModel(model, base_url=self.base_url, api_key=self._api_key, timeout=self.timeout)

    # -- the Model protocol -----------------------------------------------------------------
    def complete(
        self, messages: Messages, *, max_tokens: int, temperature: float = 0.0, seed: int | None = None
    ) -> Completion:
        payload = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            payload["seed"] = seed
        started = time.perf_counter()
        text, finish_reason, usage = self._call(f"{self.base_url}/chat/completions", payload, _chat_reply)
        seconds = time.perf_counter() - started
        return Completion(
            text=text,
            prompt_tokens=usage.get("prompt_tokens") or count_prompt(self, messages),
            completion_tokens=usage.get("completion_tokens") or self.count_tokens(text),
            seconds=seconds,
            finish_reason=finish_reason or "stop",
        )

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Embeddings from the server's /embeddings endpoint, in the order of `texts`."""
        payload = {"model": self.model, "input": texts}
        return self._call(f"{self.base_url}/embeddings", payload, lambda data: _embeddings(data, len(texts)))

    @cached_property
    def context_window(self) -> int:
        from coa.config import DEFAULT_WINDOW

        served = self._served_window()
        requested = self._requested_window or DEFAULT_WINDOW
        return min(requested, served) if served else requested

    # -- HTTP -------------------------------------------------------------------------------
    @property
    def _root(self) -> str:
        """The server root, where vLLM and llama.cpp put their tokenize endpoints."""
        return self.base_url.removesuffix("/v1")

    def _call(self, url: str, payload: dict, parse: Callable[[Any], T]) -> T:
        """POST `payload`, retrying what is worth retrying, within the call's deadline."""
        try:
            return _run(self._send(url, payload, parse))
        except CoaError as e:  # one last pass, so that no secret can leave in a message
            raise type(e)(scrub(str(e), self.base_url, self._api_key)) from None

    async def _send(self, url: str, payload: dict, parse: Callable[[Any], T]) -> T:
        last: list[_Retry] = []  # the latest retried failure, to name if time runs out

        def pause(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            assert isinstance(error, _Retry)  # the only failure that is retried
            last[:] = [error]
            return error.retry_after if error.retry_after is not None else BACKOFF(state)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(_Retry), stop=stop_after_attempt(MAX_TRIES), wait=pause, reraise=True
        )
        try:
            async with asyncio.timeout(self.timeout):
                return await retrying(self._attempt, url, payload, parse)
        except TimeoutError:
            cause = f"; the last try: {last[0]}" if last else ""
            raise ModelError(f"{self._where} gave no complete reply within {self.timeout:g} s{cause}") from None
        except _Retry as e:
            raise ModelError(f"{self._where} failed {MAX_TRIES} tries; the last: {e}") from None

    async def _attempt(self, url: str, payload: dict, parse: Callable[[Any], T]) -> T:
        try:
            response = await self._client.post(url, json=payload)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise ModelError(f"cannot reach {self._where} ({str(e) or type(e).__name__})") from None
        except httpx.TransportError as e:  # reset, dropped or cut-off connection
            raise _Retry(f"the connection failed ({str(e) or type(e).__name__})") from None
        status = response.status_code
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status}", _retry_after(response.headers.get("retry-after")))
        if status in (401, 403):
            raise ModelError(f"{self._where} rejected the API key (HTTP {status}); check --api-key or OPENAI_API_KEY")
        if status >= 400:
            # Scrub before cutting, so that no part of a key the server echoes survives.
            detail = " ".join(scrub(response.text, self.base_url, self._api_key).split())[:300]
            if status in (400, 413) and any(h in detail.lower() for h in OVERFLOW_HINTS):
                raise ContextOverflowError(f"the server says the prompt is too long: {detail}")
            raise ModelError(f"{self._where} answered HTTP {status}: {detail}")
        try:
            data = response.json()
        except ValueError:
            raise _Retry("a reply that is not complete JSON") from None
        return parse(data)

    def _probe(self, method: str, url: str, payload: dict | None = None) -> tuple[int, Any]:
        """One quick request whose failure only means "not offered": (status, JSON) or (0, None)."""

        async def probe():
            async with asyncio.timeout(min(DISCOVERY_TIMEOUT, self.timeout)):
                response = await self._client.request(method, url, json=payload)
                return response.status_code, response.json()

        try:
            return _run(probe())
        except (httpx.HTTPError, ValueError, TimeoutError):
            return 0, None

    # -- discovery ----------------------------------------------------------------------------
    def _served_window(self) -> int | None:
        """The server's context length where it tells (vLLM's models list, llama.cpp's /props)."""
        _, listing = self._probe("GET", f"{self.base_url}/models")
        entries = listing.get("data") if isinstance(listing, dict) else None
        entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
        for path in (("max_model_len",), ("meta", "n_ctx_train")):
            for entry in entries:
                if entry.get("id") in (self.model, None) and _is_count(value := _dig(entry, path)) and value > 0:
                    return value
        _, props = self._probe("GET", f"{self._root}/props")
        value = _dig(props, ("default_generation_settings", "n_ctx"))
        return value if _is_count(value) and value > 0 else None

    @cached_property
    def _count(self):
        """Pick the best token counter this server offers, once."""
        if urlsplit(self.base_url).hostname == "api.openai.com":
            encoding = _tiktoken_encoding(self.model)
            if encoding is not None:
                self.token_counter = "tiktoken"
                return lru_cache(maxsize=4096)(lambda text: len(encoding.encode(text, disallowed_special=())))
        for url, payload, read in (
            (f"{self._root}/extras/tokenize/count", lambda t: {"input": t, "model": self.model}, _token_count),
            (f"{self._root}/tokenize", lambda t: {"model": self.model, "prompt": t}, _token_count),
            (f"{self._root}/tokenize", lambda t: {"content": t}, _token_list_length),
        ):
            status, data = self._probe("POST", url, payload("probe"))
            try:
                read(data)
            except _Retry:
                continue
            if status == 200:
                self.token_counter = url.removeprefix(self._root)
                return lru_cache(maxsize=4096)(
                    lambda text, url=url, payload=payload, read=read: self._server_count(text, url, payload(text), read)
                )
        self.token_counter = "estimate"
        return _estimate

    def _server_count(self, text: str, url: str, payload: dict, read) -> int:
        """The server's count; if its tokenizer fails for good, the estimate from then on, with a warning."""
        if not self._tokenizer_lost:
            try:
                return self._call(url, payload, read)
            except ModelError as e:
                with self._lock:
                    if not self._tokenizer_lost:
                        self._tokenizer_lost = True
                        self.token_counter = "estimate"
                        warning = f"{e}; token counts are estimated from here on (a token per {CHARS_PER_TOKEN_ESTIMATE} characters)"
                        self.warnings.append(warning)
                        log.warning(warning)
        return _estimate(text)


# -- replies: anything malformed is a failure worth retrying, never an answer -----------------
def _malformed(what: str, value: Any) -> _Retry:
    shown = "null" if value is None else repr(value)[:60]
    return _Retry(f"a malformed reply: {what} is {shown}")


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0  # bool is an int subclass, and no count


def _dig(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        data = data.get(key) if isinstance(data, dict) else None
    return data


def _chat_reply(data: Any) -> tuple[str, str | None, dict]:
    """(text, finish_reason, usage) of a chat completion."""
    choices = _dig(data, ("choices",))
    if not isinstance(choices, list) or not choices:
        raise _malformed("choices", choices)
    content = _dig(choices[0], ("message", "content"))
    if not isinstance(content, str):
        raise _malformed("choices[0].message.content", content)
    finish_reason = choices[0].get("finish_reason")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise _malformed("choices[0].finish_reason", finish_reason)
    usage = data.get("usage") or {}
    if not isinstance(usage, dict):
        raise _malformed("usage", usage)
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        if key in usage and usage[key] is not None and not _is_count(usage[key]):
            raise _malformed(f"usage.{key}", usage[key])
    return content, finish_reason, usage


def _embeddings(data: Any, expected: int) -> list[list[float]]:
    rows = _dig(data, ("data",))
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise _malformed("data", rows)
    if len(rows) != expected:
        raise _Retry(f"a malformed reply: {len(rows)} embeddings for {expected} inputs")
    vectors = [row.get("embedding") for row in sorted(rows, key=lambda row: row.get("index", 0))]
    for vector in vectors:
        if not isinstance(vector, list) or not vector or not all(isinstance(x, (int, float)) for x in vector):
            raise _malformed("an embedding", vector)
    return vectors


def _token_count(data: Any) -> int:  # vLLM, llama-cpp-python: {"count": n, ...}
    count = _dig(data, ("count",))
    if not _is_count(count):
        raise _malformed("count", count)
    return count


def _token_list_length(data: Any) -> int:  # llama.cpp: {"tokens": [...]}
    tokens = _dig(data, ("tokens",))
    if not isinstance(tokens, list):
        raise _malformed("tokens", tokens)
    return len(tokens)


def _estimate(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), capped."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


def _tiktoken_encoding(model: str):
    try:
        import tiktoken

        try:
            return tiktoken.encoding_for_model(model)
        except KeyError:
            return tiktoken.get_encoding("o200k_base")
    except Exception:  # tiktoken fetches its tables once; offline that fails and we estimate
        return None
