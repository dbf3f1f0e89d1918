"""HTTP to one server: the shared background event loop, the deadline of a call, its retries.

Requests run on one background event loop so that `asyncio.timeout` can bound a whole call,
retries and waits included: httpx's own timeouts bound each socket read, which a hung server
trips only late and a server that trickles bytes never trips. Callers stay synchronous and
thread-safe; each waits in its own thread for its request on that loop.

A failure worth another try (a rate limit, a server error, a dropped connection, a reply the
caller finds malformed) is `Retry`: it is tried again after the server's Retry-After, else
after a random pause ("full jitter"), up to MAX_TRIES times, all within the deadline.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import threading
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from coa.errors import ModelError, UnreachableError

DEFAULT_TIMEOUT = 120.0  # seconds for one call, every retry included
DISCOVERY_TIMEOUT = 10.0  # seconds for each probe of what the server offers (context length, tokenizer)
MAX_TRIES = 5
RETRY_AFTER_CAP = 30.0  # seconds: a longer Retry-After is waited only this long
# Without a server's Retry-After: a random pause of up to 0.5, 1, 2, 4 s ("full jitter"), so that
# concurrent callers do not retry in lockstep.
BACKOFF = wait_random_exponential(multiplier=0.5, max=8)

T = TypeVar("T")


class Retry(Exception):
    """A failure worth another try: rate limit, server error, dropped connection, malformed reply."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after  # seconds the server asked us to wait, if it said


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def run(coroutine: Coroutine[Any, Any, T]) -> T:
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


def retry_after(value: str | None) -> float | None:
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


class Transport:
    """Requests to one server, each call bounded by `timeout` seconds, its retries included.

    `where` names the server in error messages (without credentials); `headers` go with every
    request; `wire` is httpx's transport underneath: None for real connections, or an in-process
    one (`httpx.MockTransport`) for tests. The client opens at the first request; `close()`
    closes it on the loop (a later request opens a new one).
    """

    def __init__(self, where: str, *, timeout: float = DEFAULT_TIMEOUT, headers: Mapping[str, str] | None = None,
                 wire: httpx.AsyncBaseTransport | None = None) -> None:
        self.where = where
        self.timeout = timeout
        self.wire = wire
        self._headers = dict(headers or {})
        self._client: httpx.AsyncClient | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> httpx.AsyncClient:
        with self._lock:
            if self._client is None or self._client.is_closed:
                # No per-read timeout: a long generation sends nothing until it is done. The whole
                # call is bounded by `timeout` instead; only connecting has its own short limit.
                self._client = httpx.AsyncClient(headers=self._headers, transport=self.wire,
                                                 timeout=httpx.Timeout(None, connect=DISCOVERY_TIMEOUT))
            return self._client

    def close(self) -> None:
        """Close the client and its connections (on the loop it ran on)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None and not client.is_closed:
            run(client.aclose())

    def post(self, url: str, payload: Any, read: Callable[[httpx.Response], T]) -> T:
        """POST `payload` as JSON and `read` the reply, retrying what is worth retrying, within the
        deadline. Failed connections and HTTP 429 and 5xx are handled here; `read` judges every other
        reply, and raises `Retry` for one worth another try."""

        async def attempt(client: httpx.AsyncClient) -> T:
            try:
                response = await client.post(url, json=payload)
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                raise UnreachableError(f"cannot reach {self.where} ({str(e) or type(e).__name__})") from None
            except httpx.TransportError as e:  # reset, dropped or cut-off connection
                raise Retry(f"the connection failed ({str(e) or type(e).__name__})") from None
            status = response.status_code
            if status == 429 or status >= 500:
                raise Retry(f"HTTP {status}", retry_after(response.headers.get("retry-after")))
            return read(response)

        return self.call(attempt)

    def call(self, attempt: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
        """`attempt(client)`, tried again on `Retry` up to MAX_TRIES times, all within the deadline."""
        return run(self._retried(attempt, self.client))

    async def _retried(self, attempt: Callable[[httpx.AsyncClient], Awaitable[T]], client: httpx.AsyncClient) -> T:
        last: list[Retry] = []  # the latest retried failure, to name if time runs out

        def pause(state: RetryCallState) -> float:
            error = state.outcome.exception() if state.outcome else None
            assert isinstance(error, Retry)  # the only failure that is retried
            last[:] = [error]
            return error.retry_after if error.retry_after is not None else BACKOFF(state)

        retrying = AsyncRetrying(
            retry=retry_if_exception_type(Retry), stop=stop_after_attempt(MAX_TRIES), wait=pause, reraise=True
        )
        try:
            async with asyncio.timeout(self.timeout):
                return await retrying(attempt, client)
        except TimeoutError:
            cause = f"; the last try: {last[0]}" if last else ""
            raise ModelError(f"{self.where} gave no complete reply within {self.timeout:g} s{cause}") from None
        except Retry as e:
            raise ModelError(f"{self.where} failed {MAX_TRIES} tries; the last: {e}") from None

    def probe(self, method: str, url: str, payload: Any = None) -> tuple[int, Any]:
        """One quick request whose failure only means "not offered": (status, JSON) or (0, None)."""

        async def probe(client: httpx.AsyncClient) -> tuple[int, Any]:
            async with asyncio.timeout(min(DISCOVERY_TIMEOUT, self.timeout)):
                response = await client.request(method, url, json=payload)
                return response.status_code, response.json()

        try:
            return run(probe(self.client))
        except (httpx.HTTPError, ValueError, TimeoutError):
            return 0, None
