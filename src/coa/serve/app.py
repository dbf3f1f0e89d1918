"""The FastAPI application of `coa serve`: OpenAI's chat completions and models, uploaded
documents, the job API with its event stream, and the page. docs/serve.md describes the API."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import FastAPI, File, Form, Header, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import ValidationError
from starlette.datastructures import UploadFile as FormFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from coa.config import Config
from coa.documents import decode_document
from coa.errors import CoaError, ConfigError
from coa.models.base import Model
from coa.serve.errors import ApiError, bad_request, from_coa, not_found
from coa.serve.protocol import ChatRequest, RunRequest, make_task, split_conversation
from coa.serve.runs import Run, Runner
from coa.serve.store import ServeStore
from coa.strategies.base import STRATEGIES, Strategy, get_strategy, parse_options

STATIC = files("coa.serve") / "static"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
EVENT_ID = re.compile(r"[0-9]{1,18}")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy holds events back


def create_app(model: Model, config: Config, store: Path, *, api_keys: list[str] | tuple[str, ...] = (),
               max_request_bytes: int = 16 * 2**20, max_concurrent: int = 4,
               allowed_hosts: list[str] | None = None) -> FastAPI:
    """The app; `allowed_hosts`: the host names requests may name (None: any)."""
    served = ServeStore(store)
    runner = Runner(model, config, served, max_concurrent)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await runner.shutdown()
        served.close()

    app = FastAPI(title="coa serve", version="1", lifespan=lifespan,
                  description="Long-context answers from a short-window model: see docs/serve.md.")
    app.state.runner = runner  # for a look at the runs in flight
    app.add_middleware(Guard, keys=list(api_keys), max_bytes=max_request_bytes, hosts=allowed_hosts)
    handle_errors(app)
    describe_errors(app)

    # -- the page and health ------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    # -- OpenAI-compatible ----------------------------------------------------------------------
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": f"coa/{entry.name}", "object": "model", "created": started, "owned_by": "chainofagents",
                 "description": entry.description, "window": config.window, "max_document_bytes": max_request_bytes}
                for entry in STRATEGIES.items()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatRequest, request: Request) -> Response | dict[str, Any]:
        owner, settings = request.state.owner, body.coa
        strategy = strategy_for(body.model, settings.strategy)
        options = checked_options(strategy, settings.options, "coa.options")
        document, question = split_conversation(body.messages)
        if settings.document is not None:
            document = uploaded(served, owner, settings.document, "coa.document")
        if not document.strip():
            raise bad_request("no document: send it in the messages before the question, or upload it "
                              "(POST /v1/files) and give its id as coa.document", "messages")
        task = checked(lambda: make_task(document, question, settings.task, settings.choices))
        run_config = runner.config_for(settings.window, max_calls=settings.max_calls,
                                       max_total_tokens=settings.max_total_tokens, temperature=body.temperature,
                                       seed=body.seed)
        run = runner.start(owner, strategy, options, task, run_config, stored=False)
        completion = Completion(run, body.model, settings.trace)
        if body.stream:
            usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(completion.stream(runner, usage), media_type="text/event-stream",
                                     headers=SSE_HEADERS)
        if not await finished_or_gone(request, run):
            runner.cancel(run)
            return Response(status_code=499)  # nobody reads it: the client went away
        if run.failure is not None:
            raise run.failure
        return completion.reply()

    # -- documents ----------------------------------------------------------------------------------
    @app.post("/v1/files")
    async def upload_file(request: Request, file: Annotated[UploadFile | str, File()],
                          purpose: Annotated[str, Form()] = "coa") -> dict[str, Any]:
        text = await read_upload(file)
        filename = file.filename if not isinstance(file, str) else ""
        record = {"id": f"file-{secrets.token_hex(12)}", "owner": request.state.owner, "filename": filename or "",
                  "purpose": purpose, "bytes": len(text.encode()), "created_at": int(time.time())}
        served.add_file(record, text)
        return served.file(record["owner"], record["id"]) or {}

    @app.get("/v1/files/{file_id}")
    async def get_file(file_id: str, request: Request) -> dict[str, Any]:
        return served.file(request.state.owner, file_id) or raise_(not_found("file", file_id))

    @app.delete("/v1/files/{file_id}")
    async def delete_file(file_id: str, request: Request) -> dict[str, Any]:
        if not served.delete_file(request.state.owner, file_id):
            raise not_found("file", file_id)
        return {"id": file_id, "object": "file", "deleted": True}

    # -- jobs -----------------------------------------------------------------------------------------
    @app.post("/v1/runs", status_code=202, openapi_extra={"requestBody": {"required": True, "content": {
        "application/json": {"schema": RunRequest.model_json_schema()},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"},
            **{k: {"type": "string"} for k in RunRequest.model_fields if k != "document"}}}}}}})
    async def create_run(request: Request) -> dict[str, Any]:
        owner = request.state.owner
        spec, text = await run_request(request)
        strategy = checked(lambda: get_strategy(spec.strategy), "strategy")
        options = checked_options(strategy, spec.options, "options")
        if spec.document_id is not None:
            text = uploaded(served, owner, spec.document_id, "document_id")
        if text is None:
            raise bad_request("give the document: its text as `document`, a `file` upload, or an uploaded "
                              "document's id as `document_id`", "document")
        task = checked(lambda: make_task(text, spec.question, spec.task, spec.choices))
        run_config = runner.config_for(spec.window, max_calls=spec.max_calls, max_total_tokens=spec.max_total_tokens)
        return runner.start(owner, strategy, options, task, run_config, stored=True).view()

    @app.get("/v1/runs")
    async def list_runs(request: Request, limit: int = 20) -> dict[str, Any]:
        return {"object": "list", "data": served.runs(request.state.owner, max(1, min(limit, 100)))}

    @app.get("/v1/runs/{run_id}")
    async def get_run(run_id: str, request: Request) -> dict[str, Any]:
        run = runner.get(request.state.owner, run_id)
        return run.view() if run else served.run(request.state.owner, run_id) or raise_(not_found("run", run_id))

    @app.delete("/v1/runs/{run_id}")
    async def delete_run(run_id: str, request: Request) -> dict[str, Any]:
        run = runner.get(request.state.owner, run_id)
        if run is not None:  # in flight: cancel it, and show how it ended
            runner.cancel(run)
            await run.wait()
            return run.view()
        if not served.delete_run(request.state.owner, run_id):
            raise not_found("run", run_id)
        return {"id": run_id, "object": "coa.run.deleted", "deleted": True}

    @app.get("/v1/runs/{run_id}/events")
    async def run_events(run_id: str, request: Request,
                         last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
        after = int(last_event_id) if last_event_id and EVENT_ID.fullmatch(last_event_id.strip()) else 0
        run = runner.get(request.state.owner, run_id)
        if run is None and served.run(request.state.owner, run_id, result=False) is None:
            raise not_found("run", run_id)
        return StreamingResponse(event_stream(run, served, run_id, after), media_type="text/event-stream",
                                 headers=SSE_HEADERS)

    return app


# -- chat completions -------------------------------------------------------------------------------
class Completion:
    """A run's answer as a `chat.completion`, or as the chunks of a stream, in vLLM's format."""

    def __init__(self, run: Run, model: str, trace: bool) -> None:
        self.run = run
        self.model = model
        self.trace = trace
        self.id = f"chatcmpl-{secrets.token_hex(12)}"
        self.created = int(time.time())

    def usage(self) -> dict[str, Any]:
        usage = self.run.usage or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cached_tokens": 0}
        return {"prompt_tokens": usage["prompt_tokens"], "completion_tokens": usage["completion_tokens"],
                "total_tokens": usage["total_tokens"], "prompt_tokens_details": {"cached_tokens": usage["cached_tokens"]}}

    def finish_reason(self) -> str:
        calls = self.run.result.calls if self.run.result else []
        return "length" if calls and calls[-1].finish_reason == "length" else "stop"

    def extra(self) -> dict[str, Any]:
        """coa's own part of the reply: what the run did, the evidence, and the trace on request."""
        result = self.run.result
        assert result is not None
        extra: dict[str, Any] = {"strategy": result.strategy, "calls": len(result.calls),
                                 "seconds": round(result.seconds, 3),
                                 "citations": [vars(c) for c in result.citations], "warnings": result.warnings}
        if self.trace:
            extra["result"] = result.to_dict()
        return extra

    def reply(self) -> dict[str, Any]:
        message = {"role": "assistant", "content": self.run.answer}
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason()}],
                "usage": self.usage(), "coa": self.extra()}

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        body: dict[str, Any] = {"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                                "model": self.model, "choices": choices}
        if usage is not None:  # as vLLM: a chunk carries `usage` only where it is set (the last, when asked for)
            body["usage"] = usage
        return f"data: {sse_json(body)}\n\n"

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> str:
        return self.chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])

    async def stream(self, runner: Runner, with_usage: bool) -> AsyncIterator[str]:
        run = self.run
        try:
            yield self.delta({"role": "assistant", "content": ""})
            async for event in run.follow():
                if event is None:
                    yield ": ping\n\n"
                elif event[1] == "call" and event[2]["type"] == "finished":
                    yield self.delta({"reasoning_content": progress_line(event[2])})
            if run.failure is not None:
                yield f"data: {sse_json(run.failure.body())}\n\n"
            else:
                for piece in pieces(run.answer or ""):
                    yield self.delta({"content": piece})
                yield self.delta({"content": ""}, self.finish_reason())
                if with_usage:
                    yield self.chunk([], self.usage())
            yield "data: [DONE]\n\n"
        finally:  # the client went away (or the stream ended): nothing more to compute
            runner.cancel(run)


def sse_json(data: Any) -> str:
    """JSON for an event's data line: UTF-8, with the characters that some line readers take for a
    line break escaped (SSE lines end only at CR or LF, but not every client reads them so)."""
    text = json.dumps(data, ensure_ascii=False)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029").replace("\x85", "\\u0085")


def progress_line(call: dict[str, Any]) -> str:
    """A finished call as a line of the stream's reasoning: who, which tokens, and what it passed on."""
    span = f" tokens {call['span'][0]:,}-{call['span'][1]:,}" if call.get("span") else ""
    passed = " ".join((call["cu"] if call.get("cu") is not None else call.get("output") or "").split())
    if len(passed) > 400:
        passed = passed[:400] + "…"
    return (f"{call['role']} {call['index'] + 1}/{call['total']}{span}: {call['prompt_tokens']:,} → "
            f"{call['completion_tokens']:,} tokens, {call['seconds']:.1f} s. {passed or '(nothing passed on)'}\n")


def pieces(answer: str) -> list[str]:
    """The answer as content deltas: a word (and the space after it) each."""
    words, start = [], 0
    for i, char in enumerate(answer):
        if char.isspace() and i + 1 < len(answer) and not answer[i + 1].isspace():
            words.append(answer[start : i + 1])
            start = i + 1
    return [*words, answer[start:]] if answer[start:] else words


async def finished_or_gone(request: Request, run: Run) -> bool:
    """Wait for the run; False if the client disconnected first."""
    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    done, watch = asyncio.create_task(run.wait()), asyncio.create_task(gone())
    await asyncio.wait({done, watch}, return_when=asyncio.FIRST_COMPLETED)
    watch.cancel()
    if not done.done():
        done.cancel()
        return False
    return True


# -- job runs -----------------------------------------------------------------------------------------
async def run_request(request: Request) -> tuple[RunRequest, str | None]:
    """The job request from a JSON body or a multipart form (with the document as `file`)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        try:
            form = await request.form()
        except Exception as e:  # the multipart parser's own errors: the body is malformed
            raise bad_request(f"the multipart body cannot be read ({e})") from None
        data: dict[str, Any] = {key: value for key, value in form.items() if isinstance(value, str)}
        for key in ("options", "choices"):
            if key in data:
                try:
                    data[key] = json.loads(data[key])
                except ValueError:
                    raise bad_request(f"{key}: not valid JSON", key) from None
        upload = form.get("file")
        text = await read_upload(upload) if upload is not None and not isinstance(upload, str) else None
    else:
        try:
            data = json.loads(await request.body())
        except ValueError:
            raise bad_request("the body is not valid JSON") from None
        text = None
    try:
        spec = RunRequest.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None
    return spec, text if spec.document is None else spec.document


async def event_stream(run: Run | None, served: ServeStore, run_id: str, after: int) -> AsyncIterator[str]:
    """A run's events after number `after` as server-sent events: live ones from the run in flight,
    recorded ones from the store."""
    events = run.follow(after) if run is not None else _recorded(served, run_id, after)
    async for event in events:
        if event is None:
            yield ": ping\n\n"
        else:
            seq, type, data = event
            yield f"id: {seq}\nevent: {type}\ndata: {sse_json(data)}\n\n"


async def _recorded(served: ServeStore, run_id: str, after: int) -> AsyncIterator[tuple[int, str, dict[str, Any]] | None]:
    for event in served.events(run_id, after):
        yield event


# -- shared checks ------------------------------------------------------------------------------------
def strategy_for(model: str, name: str | None) -> type[Strategy]:
    """The strategy a chat request names: `coa.strategy`, else the model's name `coa/STRATEGY`."""
    if name is not None:
        return checked(lambda: get_strategy(name), "coa.strategy")
    prefix, _, rest = model.partition("/")
    if prefix != "coa" or rest not in STRATEGIES:
        raise ApiError(404, f"no model {model!r}: the models are coa/STRATEGY (GET /v1/models lists them)",
                       "not_found_error", param="model", code="model_not_found")
    return get_strategy(rest)


def checked_options(strategy: type[Strategy], options: dict[str, Any], param: str) -> Any:
    return checked(lambda: parse_options(strategy, options), param)


def checked(make: Any, param: str | None = None) -> Any:
    """`make()`, with a library error as the API's error (the CLI's message, status 400)."""
    try:
        return make()
    except CoaError as e:
        raise from_coa(e, param) from None


def uploaded(served: ServeStore, owner: str, file_id: str, param: str) -> str:
    text = served.file_text(owner, file_id)
    if text is None:
        raise ApiError(404, f"no uploaded document {file_id!r}", "not_found_error", param=param, code="file_not_found")
    return text


async def read_upload(upload: FormFile | str) -> str:
    """An uploaded file's text, checked as `coa ask` checks a file. A part without a file name
    arrives as text: it is the document all the same."""
    if isinstance(upload, str):
        data, name = upload.encode(), "file"
    else:
        data, name = await upload.read(), upload.filename or "the upload"
    return checked(lambda: decode_document(data, name).text, "file")


def raise_(error: Exception) -> Any:
    raise error


# -- errors and the guard --------------------------------------------------------------------------------
def handle_errors(app: FastAPI) -> None:
    """Every error as OpenAI's error body with its status."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), error.status, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return await api_error(request, validation_error(error.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return await api_error(request, ApiError(error.status_code, str(error.detail), kind))

    @app.exception_handler(ConfigError)
    async def coa_error(request: Request, error: CoaError) -> JSONResponse:
        return await api_error(request, from_coa(error))

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(ApiError(500, "internal error", "server_error").body(), 500)


ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def describe_errors(app: FastAPI) -> None:
    """The schema says what the server does: a malformed request is 400 with OpenAI's error body
    (FastAPI's default schema says 422 with its own)."""
    build = app.openapi

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None:
                        responses["400"] = {"description": "A malformed request: OpenAI's error body",
                                            "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for name in ("HTTPValidationError", "ValidationError"):
                document.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]


def validation_error(errors: Any) -> ApiError:
    """A malformed body in one line: where, and what is wrong (the first few problems)."""
    if any(error["type"] == "json_invalid" for error in errors):
        return bad_request("the body is not valid JSON")
    described = []
    for error in list(errors)[:3]:
        where = ".".join(str(part) for part in error["loc"] if part != "body")
        described.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    first = ".".join(str(part) for part in errors[0]["loc"] if part != "body") if errors else None
    return bad_request("; ".join(described) or "the request is malformed", first or None)


class Guard:
    """ASGI middleware in front of everything: the Host a request names (on a loopback server,
    loopback names only: a web page whose name was rebound to 127.0.0.1 reaches nothing), the
    Origin of a browser's request (this page's own, or none: another site's page cannot post runs
    with the user's browser), the API key on /v1 paths (the page, its files and /health are
    public), and the body size limit, checked before any route reads the body."""

    def __init__(self, app: Any, keys: list[str], max_bytes: int, hosts: list[str] | None) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.max_bytes = max_bytes
        self.hosts = {host.lower().strip("[]") for host in hosts} if hosts is not None else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]}
        try:
            owner = self.admit(scope["path"], headers)
        except ApiError as refused:
            return await JSONResponse(refused.body(), refused.status, headers=refused.headers)(scope, receive, send)
        scope.setdefault("state", {})["owner"] = owner
        too_large = ApiError(413, f"the request body is over the server's limit of {self.max_bytes:,} bytes "
                                  "(--max-request-bytes)", code="request_too_large")
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await JSONResponse(too_large.body(), 413, headers={"Connection": "close"})(scope, receive, send)
        body, more = bytearray(), True
        while more:  # read the body here, up to the limit, so a route never reads past it
            message = await receive()
            if message["type"] != "http.request":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await JSONResponse(too_large.body(), 413, headers={"Connection": "close"})(scope, receive, send)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: the disconnect, when it comes
            replayed = True
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)

    def admit(self, path: str, headers: dict[str, str]) -> str:
        """The request's owner (a digest of its key; "" where the API is open), or the refusal."""
        host = urlsplit(f"//{headers.get('host', '')}").hostname or ""
        if self.hosts is not None and host.lower() not in self.hosts:
            raise ApiError(403, f"this server does not answer for the host {host!r} (--allowed-host)",
                           "permission_error", code="host_not_allowed")
        origin = headers.get("origin")
        if origin is not None and urlsplit(origin).netloc.lower() != headers.get("host", "").lower():
            raise ApiError(403, "requests from another site's pages are refused", "permission_error",
                           code="cross_origin")
        if not self.keys or not path.startswith("/v1"):
            return ""
        scheme, _, given = headers.get("authorization", "").encode("latin-1").partition(b" ")
        key = next((k for k in self.keys if scheme.lower() == b"bearer" and hmac.compare_digest(k, given.strip())), None)
        if key is None:
            raise ApiError(401, "a valid API key is needed: send it as `Authorization: Bearer KEY`",
                           "authentication_error", code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return hashlib.sha256(key).hexdigest()[:16]  # runs and files belong to a key, which is never stored
