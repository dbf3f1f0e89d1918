import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_PLAY = REPO / "examples" / "macbeth-act1.txt"


def data_dir() -> Path:
    """The shared real data: COA_DATA_DIR, or ../shared/data beside the checkout."""
    return Path(os.environ.get("COA_DATA_DIR", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def books() -> Path:
    path = data_dir() / "books"
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set COA_DATA_DIR)")
    return path


# A skip is not a pass. Tests skip, with these words in their reason, where the shared data, Chromium or
# llama-server is missing; where CI is set, such a skip fails the test instead, so that a CI machine
# that lacks one cannot report the tests that need it as passed. Other skips stay skips.
MISSING = ("real data not found", "no Chromium installed", "Playwright cannot start", "no llama-server binary",
           "COA_LLAMA_SERVER=")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.skipped and in_ci() and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2]
        if any(words in reason for words in MISSING):
            report.outcome = "failed"
            report.longrepr = f"CI is set, and a skip is not a pass: {reason}"


@pytest.fixture(scope="session")
def embedded():
    from coa import load_model

    return load_model("embedded", window=2048)


@pytest.fixture
def story(tmp_path) -> Path:
    """A short numbered story: a document for the scripted model."""
    path = tmp_path / "story.txt"
    path.write_text(" ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(60)))
    return path


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="no Chromium installed (Debian package chromium; .ci/run installs it)")


def dump_dom(url: str, profile: Path, budget_ms: int) -> str:
    """The page's DOM after its scripts ran, from headless Chromium with no network chatter."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
         f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
        capture_output=True, encoding="utf-8", timeout=120,
    ).stdout


def run_cli(*args: str, stdin: bytes | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run the real `coa` command in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "coa", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", "OPENAI_API_KEY": "", "OPENAI_BASE_URL": ""},
    )


class JsonHandler(http.server.BaseHTTPRequestHandler):
    """Base for small HTTP servers in tests: JSON in, JSON out, no logging."""

    def read_json(self):
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except BrokenPipeError:  # the client was killed mid-request, as some tests do on purpose
            pass

    def log_message(self, *args):
        pass


@contextmanager
def serve(handler):
    """A real HTTP server on 127.0.0.1 for the duration; yields its /v1 base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1"
    finally:
        server.shutdown()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server_process(command: list[str], ready_url: str, log_dir: Path, *, name: str, timeout: float,
                   headers: dict[str, str] | None = None):
    """A model server started from `command`, waited for until `ready_url` answers 200 (a test
    failure with the end of its log if it dies or takes over `timeout` s), stopped afterwards."""
    import httpx

    log = (log_dir / "server.log").open("w+")  # a pipe would fill and stall it
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(ready_url, headers=headers).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.seek(0)
            pytest.fail(f"{name} did not start: {log.read()[-2000:]}")
        time.sleep(0.2)
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)


def sse_events(text: str) -> list[dict[str, str]]:
    """The events of a server-sent event stream, as {field: value}; comments left out. Lines end at
    "\n" alone, not wherever str.splitlines() would end them: the JSON of an event holds U+0085,
    U+2028 and U+2029 as they are, and SSE ends lines only at CR and LF."""
    events = []
    for block in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.split("\n") if ": " in line and not line.startswith(":"))
        if fields:
            events.append(fields)
    return events


@contextmanager
def running(model, tmp_path: Path, **settings):
    """`coa serve`'s app (window 512, its store in tmp_path) on a real socket on 127.0.0.1, uvicorn in
    a thread; yields (base URL, app)."""
    import uvicorn

    from coa.config import Config
    from coa.serve.app import create_app

    app = create_app(model, Config(window=512), tmp_path / "serve.sqlite", **settings)
    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}", app
    finally:
        server.should_exit = True
        thread.join(10)


class Recorder:
    """A plain TCP listener on 127.0.0.1 that records every connection and every byte it is sent.
    `reply(request bytes)` gives the bytes to answer each HTTP request with (None: close at once);
    each connection carries one request."""

    def __init__(self, reply=None) -> None:
        self.reply = reply
        self.connections: list[bytearray] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def seen(self) -> bytes:
        return b"".join(bytes(c) for c in self.connections)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:  # closed
                return
            received = bytearray()
            self.connections.append(received)
            threading.Thread(target=self._serve, args=(connection, received), daemon=True).start()

    def _serve(self, connection: socket.socket, received: bytearray) -> None:
        with connection:
            connection.settimeout(10)
            try:
                while b"\r\n\r\n" not in received:
                    piece = connection.recv(65536)
                    if not piece:
                        return
                    received += piece
                head, _, body = bytes(received).partition(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                while len(body) < length:
                    piece = connection.recv(65536)
                    if not piece:
                        return
                    received += piece
                    body += piece
                answer = self.reply(bytes(received)) if self.reply is not None else None
                if answer is not None:
                    connection.sendall(answer)
            except OSError:
                return

    def close(self) -> None:
        self.server.close()


def http_reply(status: int, body) -> bytes:
    """A whole HTTP/1.1 reply with a JSON body, closing its connection."""
    data = json.dumps(body).encode()
    return (f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n").encode() + data


def refuses_options(name: str, options: dict, message: str) -> None:
    """Bad strategy options are one ConfigError, `message`, when parsed and when the strategy is made."""
    from coa.errors import ConfigError
    from coa.models.scripted import ScriptedModel
    from coa.strategies import get_strategy
    from coa.strategies.options import parse_options

    with pytest.raises(ConfigError) as error:
        parse_options(get_strategy(name), options)
    assert str(error.value) == message
    with pytest.raises(ConfigError):
        get_strategy(name)(ScriptedModel(), options=options)


def refuses_non_questions(name: str, task, *, window: int) -> None:
    """A strategy for questions refuses any other task in one line, before any call."""
    from coa.config import Config
    from coa.errors import ConfigError
    from coa.models.scripted import ScriptedModel
    from coa.strategies import get_strategy

    model = ScriptedModel(context_window=window)
    with pytest.raises(ConfigError, match=f"^strategy {name} answers questions \\(qa and mcq tasks\\), not {task.kind} tasks$"):
        get_strategy(name)(model, Config(window=window)).run(task)
    assert not model.prompts
