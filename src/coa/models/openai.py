"""Any OpenAI-compatible chat server: OpenAI, vLLM, Ollama, llama.cpp's llama-server, LM Studio.

The protocol: the requests of chat completions, embeddings and token counts, their replies
judged (a malformed one retried, an overflow told from other refusals), keys kept out of every
message, and the best token counter the server offers. The HTTP under it (the background loop,
the deadline of a call, retries and Retry-After) is coa.models.transport's; `transport=` puts an
in-process httpx transport under it (tests).

llama-server is recognised (coa.models.discovery) and used for what it adds: prompt caching
across requests, a tokenizer that gives every token's text, prefill without generation.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from functools import cached_property, lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx

from coa.errors import CoaError, ConfigError, ContextOverflowError, ModelError
from coa.models.base import Completion, Embed, Messages, Model, count_prompt
from coa.models.discovery import (
    CHARS_PER_TOKEN_ESTIMATE,
    Server,
    estimate,
    identify,
    listed_window,
    piece_offsets,
    tiktoken_encoding,
    tokenizers,
)
from coa.models.replies import Malformed, chat_reply, embeddings
from coa.models.transport import DEFAULT_TIMEOUT, Retry, Transport
from coa.models.transport import MAX_TRIES as MAX_TRIES  # re-exported: the tries a failed call names
from coa.models.urls import redact, scrub

OVERFLOW_HINTS = ("context length", "context window", "maximum context", "too many tokens", "exceed", "too long")

log = logging.getLogger(__name__)
T = TypeVar("T")


class OpenAIModel(Model):
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        window: int | None = None,
        timeout: float | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """`transport`: httpx's transport for the requests; None for real connections, or an
        in-process one (`httpx.MockTransport`) in tests. with_model's models share it."""
        # No built-in host: prompts and keys go only where the user pointed. OPENAI_API_KEY is the key
        # of OPENAI_BASE_URL's server: it is taken only where the URL was too, so a URL given in code
        # (an embedding server's) never receives it.
        from_env = not base_url
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
        self._api_key = api_key or (os.environ.get("OPENAI_API_KEY") if from_env else None) or None
        self._where = f"the model server at {redact(base_url)}"  # credentials never shown
        self._requested_window = window
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        self._http = Transport(self._where, timeout=self.timeout, headers=headers, wire=transport)
        self.token_counter = "unknown"  # which way tokens are counted, once known
        self.warnings: list[str] = []  # what went wrong without failing a call (a tokenizer given up)
        self._tokenizer_lost = False
        self._lock = threading.Lock()
        self._embedders: dict[str, OpenAIModel] = {}

    def with_model(self, model: str) -> OpenAIModel:
        """Another model on the same server with the same key and timeout."""
        return OpenAIModel(model, base_url=self.base_url, api_key=self._api_key, timeout=self.timeout,
                           transport=self._http.wire)

    def close(self) -> None:
        """Close the HTTP clients, this model's and its embedders', and their connections. A later
        call opens a new client."""
        with self._lock:
            embedders = list(self._embedders.values())
        for embedder in embedders:
            embedder.close()
        self._http.close()

    def __enter__(self) -> OpenAIModel:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def identity(self, digest: Callable[[Path], str]) -> str:
        parts = urlsplit(self.base_url)  # no user name, password or query: no secret
        host = parts.hostname or ""
        return f"openai:{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}:{self.model}"

    def embedder(self, model: str) -> Embed:
        """Embeddings from `model` on this server, with this key: one client per model, reused."""
        with self._lock:
            if model not in self._embedders:
                self._embedders[model] = self.with_model(model)
            return self._embedders[model].embed

    # -- the Model seam -----------------------------------------------------------------
    def complete(
        self, messages: Messages, *, max_tokens: int, temperature: float = 0.0, seed: int | None = None
    ) -> Completion:
        payload = self._chat_payload(messages, max_tokens)
        payload["temperature"] = temperature
        if seed is not None:
            payload["seed"] = seed
        started = time.perf_counter()
        reply = self._call(f"{self.base_url}/chat/completions", payload, chat_reply)
        seconds = time.perf_counter() - started
        return Completion(
            text=reply.text,
            prompt_tokens=reply.usage.get("prompt_tokens") or count_prompt(self, messages),
            completion_tokens=reply.usage.get("completion_tokens") or self.count_tokens(reply.text),
            seconds=seconds,
            finish_reason=reply.finish_reason or "stop",
            cached_tokens=reply.cached or 0,
            prefill_seconds=reply.prefill_seconds,
        )

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    # -- what llama-server adds -------------------------------------------------------------
    @cached_property
    def server(self) -> Server:
        """Which server this is (asked once, from GET {root}/props)."""
        _, props = self._probe("GET", f"{self._root}/props")
        return identify(props)

    @property
    def slots(self) -> int | None:
        """How many requests the server decodes together (llama-server's -np), where it says."""
        return self.server.slots

    def token_offsets(self, text: str) -> list[int]:
        """The character offset in `text` at which each of its tokens starts, in one request.

        llama-server only (its /tokenize gives every token's text); elsewhere, or where the
        tokenizer fails for good, NotImplementedError, and the caller counts instead.
        """
        if not self.server.is_llama_server or self._tokenizer_lost:
            raise NotImplementedError(f"{self._where} gives no token offsets")
        payload = {"content": text, "with_pieces": True}
        if self.token_counter == "unknown":
            self.token_counter = "/tokenize"  # the endpoint counting would use
        try:
            return self._call(f"{self._root}/tokenize", payload, lambda data: piece_offsets(text, data))
        except ModelError as e:
            self._give_up_tokenizer(e)
            raise NotImplementedError(f"{self._where} gives no token offsets") from None

    def prefill(self, messages: Messages) -> int:
        """Evaluate the prompt of `messages` into a free llama-server slot's cache, so that a
        later prompt extending it finds it cached. Returns how many prompt tokens were
        evaluated (those not cached already). NotImplementedError elsewhere.
        """
        if not self.server.is_llama_server:
            raise NotImplementedError(f"{self._where} cannot prefill a prompt")
        # max_tokens 0: the prompt is evaluated and kept; llama-server still samples one token
        # (a single decoding step), which is dropped.
        payload = self._chat_payload(messages, 0)
        reply = self._call(f"{self.base_url}/chat/completions", payload, chat_reply)
        if reply.evaluated is not None:
            return reply.evaluated
        return max(0, (reply.usage.get("prompt_tokens") or 0) - (reply.cached or 0))

    def _chat_payload(self, messages: Messages, max_tokens: int) -> dict:
        payload: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens}
        if self.server.is_llama_server:
            # Only here: vLLM and OpenAI may refuse a field they do not know.
            payload["cache_prompt"] = True
        return payload

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Embeddings from the server's /embeddings endpoint, in the order of `texts`."""
        payload = {"model": self.model, "input": texts}
        return self._call(f"{self.base_url}/embeddings", payload, lambda data: embeddings(data, len(texts)))

    @cached_property
    def context_window(self) -> int:
        from coa.config import DEFAULT_WINDOW

        served = self.server.window if self.server.is_llama_server else self._served_window()
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
            return self._http.post(url, payload, lambda response: self._read(response, parse))
        except CoaError as e:  # one last pass, so that no secret can leave in a message
            raise type(e)(scrub(str(e), self.base_url, self._api_key)) from None

    def _read(self, response: httpx.Response, parse: Callable[[Any], T]) -> T:
        """A reply other than 429 and 5xx (the transport's to retry): refused, or parsed."""
        status = response.status_code
        if status in (401, 403):
            raise ModelError(f"{self._where} rejected the API key (HTTP {status}); "
                             "check the backend's key (--api-key; for coa serve, --backend-api-key) or OPENAI_API_KEY")
        if status >= 400:
            # Classify the server's own words, then scrub before cutting, so that no part of a key
            # the server echoes survives (and a scrubbed word cannot hide an overflow).
            overflow = status in (400, 413) and any(h in response.text.lower() for h in OVERFLOW_HINTS)
            detail = " ".join(scrub(response.text, self.base_url, self._api_key).split())[:300]
            if overflow:
                raise ContextOverflowError(f"the server says the prompt is too long: {detail}")
            raise ModelError(f"{self._where} answered HTTP {status}: {detail}")
        try:
            data = response.json()
        except ValueError:
            raise Retry("a reply that is not complete JSON") from None
        try:
            return parse(data)
        except Malformed as e:
            raise Retry(str(e)) from None

    def _probe(self, method: str, url: str, payload: dict | None = None) -> tuple[int, Any]:
        """One quick request whose failure only means "not offered": (status, JSON) or (0, None)."""
        return self._http.probe(method, url, payload)

    # -- discovery ----------------------------------------------------------------------------
    def _served_window(self) -> int | None:
        """The server's context length where it tells (vLLM's models list, else /props)."""
        _, listing = self._probe("GET", f"{self.base_url}/models")
        return listed_window(listing, self.model) or self.server.window

    @cached_property
    def _count(self):
        """Pick the best token counter this server offers, once."""
        if urlsplit(self.base_url).hostname == "api.openai.com":
            encoding = tiktoken_encoding(self.model)
            if encoding is not None:
                self.token_counter = "tiktoken"
                return lru_cache(maxsize=4096)(lambda text: len(encoding.encode(text, disallowed_special=())))
        for path, payload, read in tokenizers(self.model, self.server.is_llama_server):
            url = self._root + path
            status, data = self._probe("POST", url, payload("probe"))
            try:
                read(data)
            except Malformed:
                continue
            if status == 200:
                self.token_counter = url.removeprefix(self._root)
                return lru_cache(maxsize=4096)(
                    lambda text, url=url, payload=payload, read=read: self._server_count(text, url, payload(text), read)
                )
        self.token_counter = "estimate"
        return estimate

    def _server_count(self, text: str, url: str, payload: dict, read) -> int:
        """The server's count; if its tokenizer fails for good, the estimate from then on, with a warning."""
        if not self._tokenizer_lost:
            try:
                return self._call(url, payload, read)
            except ModelError as e:
                self._give_up_tokenizer(e)
        return estimate(text)

    def _give_up_tokenizer(self, error: ModelError) -> None:
        with self._lock:
            if not self._tokenizer_lost:
                self._tokenizer_lost = True
                self.token_counter = "estimate"
                warning = f"{error}; token counts are estimated from here on (a token per {CHARS_PER_TOKEN_ESTIMATE} characters)"
                self.warnings.append(warning)
                log.warning(warning)


@lru_cache(maxsize=8)
def embedding_server(base_url: str, model: str, api_key: str | None) -> OpenAIModel:
    """The embedding server the operator named (rag's embed_url), with its own key only: one
    client for each, reused across retrievals."""
    return OpenAIModel(model, base_url=base_url, api_key=api_key)
