"""Any OpenAI-compatible chat server: OpenAI, vLLM, Ollama, llama.cpp's server, LM Studio."""

from __future__ import annotations

import math
import os
import time
from functools import cached_property, lru_cache
from urllib.parse import urlsplit

import httpx
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from coa.errors import ContextOverflowError, ModelError
from coa.models.base import Completion, Messages, count_prompt

DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Without a tokenizer, count a token per 3 characters: English prose averages about
# 4 characters a token with BPE vocabularies, so this over-counts and stays inside the window.
CHARS_PER_TOKEN_ESTIMATE = 3
OVERFLOW_HINTS = ("context length", "context window", "maximum context", "too many tokens", "exceed", "too long")


class _Transient(Exception):
    """A reply worth retrying (rate limit, server hiccup)."""


def _retryable(error: BaseException) -> bool:
    return isinstance(error, (_Transient, httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError))


class OpenAIModel:
    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        window: int | None = None,
        timeout: float = 600.0,
    ) -> None:
        self.model = model
        self.name = f"openai:{model}"
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        api_key = api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._requested_window = window
        self._client = httpx.Client(headers=headers, timeout=httpx.Timeout(timeout, connect=10.0))
        self.token_counter = "unknown"  # which way tokens are counted, once known

    # -- HTTP -------------------------------------------------------------------------------
    @property
    def _root(self) -> str:
        """The server root, where vLLM and llama.cpp put their tokenize endpoints."""
        return self.base_url.removesuffix("/v1")

    @retry(
        retry=retry_if_exception(_retryable),
        stop=stop_after_attempt(3),
        wait=wait_exponential(multiplier=0.5, max=4),
        reraise=True,
    )
    def _request(self, method: str, url: str, **kwargs) -> httpx.Response:
        try:
            response = self._client.request(method, url, **kwargs)
        except httpx.ConnectError as e:
            raise ModelError(f"cannot reach the model server at {self.base_url} ({e})") from None
        if response.status_code == 429 or response.status_code >= 500:
            raise _Transient(f"HTTP {response.status_code}")
        return response

    def _post_json(self, url: str, payload: dict) -> dict:
        try:
            response = self._request("POST", url, json=payload)
        except _Transient as e:
            raise ModelError(f"the model server at {self.base_url} kept failing ({e})") from None
        except httpx.HTTPError as e:
            raise ModelError(f"the model server at {self.base_url} failed: {e}") from None
        if response.status_code in (401, 403):
            raise ModelError(
                f"the model server at {self.base_url} rejected the API key (HTTP {response.status_code}); "
                "check --api-key or OPENAI_API_KEY"
            )
        if response.status_code >= 400:
            detail = response.text[:300].replace("\n", " ")
            if response.status_code in (400, 413) and any(h in detail.lower() for h in OVERFLOW_HINTS):
                raise ContextOverflowError(f"the server says the prompt is too long: {detail}")
            raise ModelError(f"the model server answered HTTP {response.status_code}: {detail}")
        try:
            return response.json()
        except ValueError:
            raise ModelError(f"the model server at {self.base_url} did not answer with JSON") from None

    # -- the Model protocol -----------------------------------------------------------------
    def complete(
        self, messages: Messages, *, max_tokens: int, temperature: float = 0.0, seed: int | None = None
    ) -> Completion:
        payload = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        if seed is not None:
            payload["seed"] = seed
        started = time.perf_counter()
        data = self._post_json(f"{self.base_url}/chat/completions", payload)
        seconds = time.perf_counter() - started
        try:
            choice = data["choices"][0]
            text = choice["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise ModelError(f"unexpected reply from {self.base_url}: {str(data)[:200]}") from None
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            prompt_tokens=usage.get("prompt_tokens") or count_prompt(self, messages),
            completion_tokens=usage.get("completion_tokens") or self.count_tokens(text),
            seconds=seconds,
            finish_reason=choice.get("finish_reason") or "stop",
        )

    def count_tokens(self, text: str) -> int:
        return self._count(text)

    def embed(self, texts: list[str]) -> list[list[float]]:
        """Embeddings from the server's /embeddings endpoint, in the order of `texts`."""
        data = self._post_json(f"{self.base_url}/embeddings", {"model": self.model, "input": texts})
        try:
            rows = sorted(data["data"], key=lambda row: row.get("index", 0))
            return [row["embedding"] for row in rows]
        except (KeyError, TypeError):
            raise ModelError(f"unexpected embeddings reply from {self.base_url}: {str(data)[:200]}") from None

    @cached_property
    def context_window(self) -> int:
        from coa.config import DEFAULT_WINDOW

        served = self._served_window()
        requested = self._requested_window or DEFAULT_WINDOW
        return min(requested, served) if served else requested

    # -- discovery ----------------------------------------------------------------------------
    def _served_window(self) -> int | None:
        """The server's context length where it tells (vLLM's models list, llama.cpp's /props)."""
        for url, path in (
            (f"{self.base_url}/models", ("max_model_len",)),
            (f"{self.base_url}/models", ("meta", "n_ctx_train")),
            (f"{self._root}/props", ("default_generation_settings", "n_ctx")),
        ):
            try:
                response = self._client.get(url)
                entries = response.json().get("data") if url.endswith("/models") else [response.json()]
            except (httpx.HTTPError, ValueError, AttributeError):
                continue
            for entry in entries or []:
                if url.endswith("/models") and entry.get("id") not in (self.model, None):
                    continue
                value = entry
                for key in path:
                    value = value.get(key) if isinstance(value, dict) else None
                if isinstance(value, int) and value > 0:
                    return value
        return None

    @cached_property
    def _count(self):
        """Pick the best token counter this server offers, once."""
        if urlsplit(self.base_url).hostname == "api.openai.com":
            encoding = _tiktoken_encoding(self.model)
            if encoding is not None:
                self.token_counter = "tiktoken"
                return lru_cache(maxsize=4096)(lambda text: len(encoding.encode(text, disallowed_special=())))
        for url, payload, read in (
            (f"{self._root}/extras/tokenize/count", lambda t: {"input": t, "model": self.model}, lambda d: d["count"]),
            (f"{self._root}/tokenize", lambda t: {"model": self.model, "prompt": t}, lambda d: d["count"]),
            (f"{self._root}/tokenize", lambda t: {"content": t}, lambda d: len(d["tokens"])),
        ):
            try:
                response = self._client.post(url, json=payload("probe"))
                read(response.json())
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue
            if response.status_code == 200:
                self.token_counter = url.removeprefix(self._root)
                return lru_cache(maxsize=4096)(
                    lambda text, url=url, payload=payload, read=read: read(self._post_json(url, payload(text)))
                )
        self.token_counter = "estimate"
        return lambda text: math.ceil(len(text) / CHARS_PER_TOKEN_ESTIMATE)


def _tiktoken_encoding(model: str):
    try:
        import tiktoken

        try:
            return tiktoken.encoding_for_model(model)
        except KeyError:
            return tiktoken.get_encoding("o200k_base")
    except Exception:  # tiktoken fetches its tables once; offline that fails and we estimate
        return None
