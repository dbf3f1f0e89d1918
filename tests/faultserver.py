"""An OpenAI-compatible chat server on 127.0.0.1 that misbehaves on purpose.

Raw sockets rather than http.server, so that a reply can be anything a broken server or
network sends: a reset, a connection cut mid-body, truncated JSON, bytes trickled forever,
silence. Chat replies are a hash of the messages, so every answer is reproducible and a
faulty reply that slips through as an answer changes what comes after it.

    with FaultServer() as server:
        server.script.extend(["503", "null content"])  # the next chat replies; then good ones
        server.rate = 0.2                          # or: a seeded share of random faults
        server.inject(OVERFLOW, nth=3)             # or: a fault on a chosen request
        server.inject(OVERFLOW, when=containing("too long to show"))  # (CoA's manager prompts)
        model = OpenAIModel("m", base_url=server.base_url)

Most faults (RETRIED) are worth another try, and the client's retry hides them. A context
overflow (OVERFLOW) is not: it is the server's verdict on the prompt, which the caller must
shorten, so it may change what comes after it.
"""

from __future__ import annotations

import hashlib
import json
import random
import socket
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Action = Callable[[socket.socket, threading.Event], None]  # writes a reply (or does not) on a connection


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: Any  # the JSON body, or None
    at: float  # time.monotonic() when it arrived
    fault: str | None = None  # the fault it was answered with, by name (a chat request's)

    @property
    def prompt(self) -> str:
        """A chat request's message texts, one after another."""
        messages = (self.body or {}).get("messages") or []
        return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))


# -- replies ----------------------------------------------------------------------------------
def respond(status: int = 200, body: Any = None, *, headers: dict[str, str] | None = None, raw: bytes | None = None) -> Action:
    data = raw if raw is not None else json.dumps(body).encode()

    def act(conn, stop):
        conn.sendall(_head(status, len(data), headers) + data)

    return act


def completion(content: Any, *, usage: Any = None, finish_reason: Any = "stop") -> dict:
    return {
        "id": "chatcmpl-1", "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish_reason}],
        "usage": usage if usage is not None else {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }


def reset(conn, stop):
    """Close with a TCP reset (SO_LINGER 0) before any reply."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def hang(conn, stop):
    """Read the request and never answer."""
    stop.wait()


def trickle(*, head: bool, every: float = 0.2) -> Action:
    """A byte every `every` seconds, forever: from the status line on (head) or after the headers."""

    def act(conn, stop):
        if head:
            data = b"HTTP/1.1 200 OK\r\nX-Padding: " + b"x" * 100_000
        else:
            conn.sendall(_head(200, 1_000_000))
            data = b" " * 1_000_000  # whitespace is valid JSON padding, so only the clock can stop it
        for byte in data:
            if stop.wait(every):
                return
            conn.sendall(bytes([byte]))

    return act


def cut(body: Any) -> Action:
    """Headers promise the whole body; half of it comes, then the connection closes."""
    data = json.dumps(body).encode()

    def act(conn, stop):
        conn.sendall(_head(200, len(data)) + data[: len(data) // 2])

    return act


def truncated(body: Any) -> Action:
    """A complete HTTP reply whose JSON stops halfway."""
    data = json.dumps(body).encode()
    return respond(raw=data[: len(data) // 2])


def _head(status: int, length: int, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"HTTP/1.1 {status} X", "Content-Type: application/json", f"Content-Length: {length}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# A faulty chat reply that a client should retry, by name, given the good reply's text. Hangs and
# trickles are not here: they are failures only a deadline ends, tested on their own.
RETRIED: dict[str, Callable[[str], Action]] = {
    "429": lambda text: respond(429, {"error": {"message": "rate limited"}}),
    "500": lambda text: respond(500, {"error": {"message": "internal error"}}),
    "503": lambda text: respond(503, {"error": {"message": "overloaded"}}),
    "reset": lambda text: reset,
    "cut off": lambda text: cut(completion(text)),
    "truncated JSON": lambda text: truncated(completion(text)),
    "not JSON": lambda text: respond(raw=b"<html><body>502 Bad Gateway</body></html>"),
    "empty choices": lambda text: respond(200, {**completion(text), "choices": []}),
    "no message": lambda text: respond(200, {"choices": [{"index": 0, "finish_reason": "stop"}]}),
    "null content": lambda text: respond(200, completion(None)),
    "wrong content type": lambda text: respond(200, completion([{"type": "text", "text": text}])),
    "usage as strings": lambda text: respond(200, completion(text, usage={"prompt_tokens": "12", "completion_tokens": "3"})),
    "finish reason a number": lambda text: respond(200, completion(text, finish_reason=1)),
}

# The prompt does not fit, as vLLM and OpenAI say it: retrying the same prompt cannot help.
OVERFLOW = "context overflow"
OVERFLOW_ERROR = {"error": {
    "message": "This model's maximum context length is 2048 tokens. However, you requested 2100 tokens "
               "(2036 in the messages, 64 in the completion). Please reduce the length of the messages or completion.",
    "type": "invalid_request_error", "param": "messages", "code": "context_length_exceeded"}}

# Every fault by name: the set a seeded rate draws from.
FAULTS: dict[str, Callable[[str], Action]] = {**RETRIED, OVERFLOW: lambda text: respond(400, OVERFLOW_ERROR)}


def containing(marker: str) -> Callable[[Request], bool]:
    """Chat requests whose prompt contains `marker`; for `FaultServer.inject`."""
    return lambda request: marker in request.prompt


@dataclass
class _Injection:
    fault: str | Action
    when: Callable[[Request], bool]
    times: int | None  # replies left to fault; None: every match


def answer(body: Any) -> str:
    """The good reply to a chat request: a digest of its messages."""
    return "note " + hashlib.sha256(json.dumps(body.get("messages")).encode()).hexdigest()[:12]


class FaultServer:
    """Chat completions with scripted or seeded faults; every other path answers by `routes`, else 404."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.base_url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/v1"
        self.requests: list[Request] = []
        self.script: deque = deque()  # the next chat replies: fault names, actions or "ok"
        self.rate = 0.0  # the share of other chat replies that are faults, drawn from `rng`
        self.rng = random.Random(0)
        self.faults: Counter = Counter()  # faults sent, by name
        self.routes: dict[str, Callable[[Request], Action]] = {}  # path suffix -> reply
        self._injections: list[_Injection] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def seed(self, seed: int, rate: float) -> None:
        with self._lock:
            self.rng, self.rate = random.Random(seed), rate

    def inject(self, fault: str | Action, *, nth: int | None = None, when: Callable[[Request], bool] | None = None,
               times: int | None = 1) -> None:
        """Answer chosen chat requests with `fault`, ahead of the script and the seeded rate: the `nth`
        chat request from now (1 is the next), or up to `times` requests (None: all) for which `when`
        holds."""
        if (nth is None) == (when is None):
            raise ValueError("give nth or when")
        with self._lock:
            if nth is not None:
                target = len(self.received()) + nth
                when = lambda request: len(self.received()) == target  # noqa: E731  (the request is in the list by now)
            self._injections.append(_Injection(fault, when, times))

    @property
    def pending(self) -> int:
        """Injected faults not sent yet (those of `times=None` aside)."""
        with self._lock:
            return sum(i.times or 0 for i in self._injections)

    def replay(self, requests: list[Request]) -> None:
        """Refuse as too long, once each, the prompts among `requests` that met a context overflow: a
        fault-free run then meets the overflows a faulty one met, and should answer as it did."""
        for request in requests:
            if request.fault == OVERFLOW:
                self.inject(OVERFLOW, when=lambda r, messages=request.body["messages"]: r.body["messages"] == messages)

    def received(self, path: str = "/chat/completions") -> list[Request]:
        return [r for r in self.requests if r.path.endswith(path)]

    def __enter__(self) -> FaultServer:
        self._threads.append(threading.Thread(target=self._serve, daemon=True))
        self._threads[0].start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._threads[0].join(timeout=5)  # no new connections after this
        for thread in self._threads[1:]:
            thread.join(timeout=5)
        self._listener.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                request = _read_request(conn)
                if request is None:
                    return
                with self._lock:
                    self.requests.append(request)
                    action = self._reply(request)
                action(conn, self._stop)
            except OSError:  # the client gave up (its deadline) or was reset by us
                pass

    def _reply(self, request: Request) -> Action:
        for suffix, route in self.routes.items():
            if request.path.endswith(suffix):
                return route(request)
        if not request.path.endswith("/chat/completions"):
            return respond(404, {"detail": "Not Found"})
        text = answer(request.body)
        step = self._injected(request)
        if step is None and self.script:
            step = self.script.popleft()
        if step is None and self.rate and self.rng.random() < self.rate:
            step = self.rng.choice(sorted(FAULTS))
        if callable(step):
            request.fault = getattr(step, "__name__", "action")
            return step
        if step in FAULTS:
            self.faults[step] += 1
            request.fault = step
            return FAULTS[step](text)
        return respond(200, completion(text))

    def _injected(self, request: Request) -> str | Action | None:
        for injection in self._injections:
            if injection.times != 0 and injection.when(request):
                if injection.times is not None:
                    injection.times -= 1
                return injection.fault
        return None


def _read_request(conn: socket.socket) -> Request | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    method, path, _ = request_line.split(" ", 2)
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in header_lines)}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return Request(method, path, headers, json.loads(body) if body else None, time.monotonic())
