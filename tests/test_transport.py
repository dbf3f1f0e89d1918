"""The OpenAI-compatible backend's HTTP (coa.models.transport) through the `transport=` seam: an
in-process httpx.MockTransport instead of a server, for the faults where a socket adds nothing
(tests/test_faults.py has those where one does: hangs, trickles, resets)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from coa.errors import ContextOverflowError, ModelError, UnreachableError
from coa.models.openai import OpenAIModel

MESSAGES = [{"role": "user", "content": "Say something."}]
REPLY = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "an answer"}, "finish_reason": "stop"}],
         "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}}
OVERFLOW = {"error": {"message": "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens.",
                      "type": "invalid_request_error", "code": "context_length_exceeded"}}


class Server(httpx.MockTransport):
    """Chat replies from `chat(request, n)` (n: the chat requests so far, 1 first), 404 elsewhere;
    records every chat request, when it came, and whether (and on which thread) it was closed."""

    def __init__(self, chat: Callable[[httpx.Request, int], httpx.Response]) -> None:
        super().__init__(self.handle)
        self.chat = chat
        self.requests: list[tuple[float, httpx.Request]] = []
        self.closed_on: str | None = None

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/chat/completions"):
            return httpx.Response(404, json={"detail": "Not Found"})
        self.requests.append((time.monotonic(), request))
        reply = self.chat(request, len(self.requests))
        return await reply if asyncio.iscoroutine(reply) else reply

    async def aclose(self) -> None:
        self.closed_on = threading.current_thread().name


def model(server: Server, **settings) -> OpenAIModel:
    return OpenAIModel("m", base_url="http://backend.test/v1", transport=server, **settings)


def test_a_429_with_retry_after_is_retried_after_the_pause_and_the_next_reply_used():
    server = Server(lambda request, n: httpx.Response(429, headers={"Retry-After": "0.4"}) if n == 1
                    else httpx.Response(200, json=REPLY))
    with model(server) as backend:
        completion = backend.complete(MESSAGES, max_tokens=8)
    (first, sent), (second, again) = server.requests
    assert completion.text == "an answer" and (completion.prompt_tokens, completion.completion_tokens) == (12, 3)
    assert second - first >= 0.39 and sent.content == again.content


def test_a_context_overflow_is_its_own_error_and_not_retried():
    server = Server(lambda request, n: httpx.Response(400, json=OVERFLOW))
    with model(server) as backend, pytest.raises(ContextOverflowError, match="maximum context length is 2048"):
        backend.complete(MESSAGES, max_tokens=8)
    assert len(server.requests) == 1


def test_a_call_ends_at_its_deadline():
    async def hang(request, n):
        await asyncio.sleep(30)

    server = Server(hang)
    started = time.monotonic()
    with model(server, timeout=0.5) as backend, pytest.raises(ModelError, match="no complete reply within 0.5 s"):
        backend.complete(MESSAGES, max_tokens=8)
    assert time.monotonic() - started < 1.5


def test_a_retry_after_beyond_the_deadline_ends_at_the_deadline():
    server = Server(lambda request, n: httpx.Response(429, headers={"Retry-After": "3600"}))
    started = time.monotonic()
    with model(server, timeout=0.5) as backend, pytest.raises(ModelError, match="within 0.5 s; the last try: HTTP 429"):
        backend.complete(MESSAGES, max_tokens=8)
    assert time.monotonic() - started < 1.5 and len(server.requests) == 1


def test_an_unreachable_server_is_not_retried_and_the_key_stays_out_of_the_message():
    def refuse(request, n):
        raise httpx.ConnectError(f"refused, with {request.headers['authorization']}")

    server = Server(refuse)
    with model(server, api_key="sk-secret-1") as backend, pytest.raises(UnreachableError, match="cannot reach") as error:
        backend.complete(MESSAGES, max_tokens=8)
    assert len(server.requests) == 1 and "sk-secret-1" not in str(error.value)


def test_close_closes_the_client_on_the_loop_and_a_later_call_opens_another():
    server = Server(lambda request, n: httpx.Response(200, json=REPLY))
    backend = model(server)
    backend.complete(MESSAGES, max_tokens=8)
    client = backend._http.client
    backend.close()
    assert client.is_closed and server.closed_on == "coa-http"  # closed on the loop it ran on
    assert backend.complete(MESSAGES, max_tokens=8).text == "an answer"
    assert backend._http.client is not client
    backend.close()


def test_close_closes_the_embedders_clients_too():
    def embeddings(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": [{"index": 0, "embedding": [0.5, 1.0]}]})

    server = httpx.MockTransport(embeddings)
    with OpenAIModel("chat", base_url="http://backend.test/v1", transport=server) as backend:
        assert backend.embedder("embedder")(["a text"]) == [[0.5, 1.0]]
        embedder = backend._embedders["embedder"]
        client = embedder._http.client
    assert client.is_closed
