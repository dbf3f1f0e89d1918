"""The FastAPI application of `coa serve`: OpenAI's chat completions and models, uploaded
documents, the job API with its event stream, and the page. docs/serve.md describes the API."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Header, Request, UploadFile
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.datastructures import UploadFile as FormFile

from coa.config import Config
from coa.documents import decode_document
from coa.errors import CoaError
from coa.models.base import Model
from coa.serve.errors import ApiError, bad_request, describe_errors, from_coa, handle_errors, not_found
from coa.serve.guard import BODY_TIMEOUT, Guard, check_keys
from coa.serve.options import operator_options, request_options
from coa.serve.protocol import ChatRequest, RunRequest, make_task, media_type, parse_json, split_conversation, validated
from coa.serve.runs import Run, Runner, trace
from coa.serve.store import ServeStore
from coa.strategies.base import STRATEGIES, Strategy, get_strategy

STATIC = files("coa.serve") / "static"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}
EVENT_ID = re.compile(r"[0-9]{1,18}")
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy holds events back


def create_app(model: Model, config: Config, store: Path, *, api_keys: list[str] | tuple[str, ...] = (),
               max_request_bytes: int = 16 * 2**20, max_concurrent: int = 4,
               allowed_hosts: list[str] | None = None, options: Mapping[str, Any] | None = None,
               docs: bool = False, body_timeout: float = BODY_TIMEOUT) -> FastAPI:
    """The app; `allowed_hosts`: the host names requests may name (None: any); `options`: the
    operator's strategy options (`--opt`), each for every strategy that has it; `docs`: serve
    the API's description at /docs and /openapi.json; `body_timeout`: the longest wait, in
    seconds, for the next piece of a request body."""
    check_keys(api_keys)  # here, at once: the middleware is made at the first request
    preset = operator_options(options or {})  # before anything is opened: a bad --opt is the whole error
    served = ServeStore(store)
    runner = Runner(model, config, served, max_concurrent)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await runner.shutdown()
        served.close()

    # FastAPI's own /docs and /redoc pages load their scripts from a CDN: off, and /docs is ours.
    app = FastAPI(title="coa serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None,
                  description="Long-context answers from a short-window model: see docs/serve.md.")
    app.state.runner = runner  # for a look at the runs in flight
    app.add_middleware(Guard, keys=list(api_keys), max_bytes=max_request_bytes, hosts=allowed_hosts,
                       body_timeout=body_timeout)
    handle_errors(app)
    describe_errors(app, component_schemas(ChatRequest, RunRequest))

    def options_for(strategy: type[Strategy], given: dict[str, Any], param: str) -> Any:
        return request_options(strategy, given, preset.get(strategy.name, {}), param)

    # -- the page and health ------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    if docs:
        @app.get("/docs", include_in_schema=False)
        async def api_docs() -> HTMLResponse:  # a page of our own: it loads nothing from elsewhere
            return HTMLResponse((STATIC / "docs.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    # -- OpenAI-compatible ----------------------------------------------------------------------
    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        data = [{"id": f"coa/{entry.name}", "object": "model", "created": started, "owned_by": "chainofagents",
                 "description": entry.description, "window": config.window, "max_document_bytes": max_request_bytes}
                for entry in STRATEGIES.items()]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions", response_model=None, openapi_extra=json_body("ChatRequest"))
    async def chat_completions(request: Request) -> Response | dict[str, Any]:
        media_type(request.headers.get("content-type"), ("application/json",))
        body = validated(ChatRequest, parse_json(await request.body()))
        owner, settings = request.state.owner, body.coa
        strategy = strategy_for(body.model, settings.strategy)
        options = options_for(strategy, settings.options, "coa.options")
        document, question = split_conversation(body.messages, uploaded=settings.document is not None)
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
        **json_body("RunRequest")["requestBody"]["content"],
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "string", "format": "binary"},
            **{k: {"type": "string"} for k in RunRequest.model_fields if k != "document"}}}}}}})
    async def create_run(request: Request) -> dict[str, Any]:
        owner = request.state.owner
        spec, text = await run_request(request)
        strategy = checked(lambda: get_strategy(spec.strategy), "strategy")
        options = options_for(strategy, spec.options, "options")
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
            extra["result"] = trace(result)
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
    """The job request from a JSON body or a multipart form (with the document as `file`), and the
    document's text where the request holds it."""
    media = media_type(request.headers.get("content-type"), ("application/json", "multipart/form-data"))
    upload: Any = None
    if media == "multipart/form-data":
        try:
            form = await request.form()
        except Exception as e:  # the multipart parser's own errors: the body is malformed
            raise bad_request(f"the multipart body cannot be read ({' '.join(str(e).split())})") from None
        data: dict[str, Any] = {key: value for key, value in form.items() if isinstance(value, str)}
        for key in ("options", "choices"):
            if key in data:
                data[key] = parse_json(data[key], key, key)
        upload = form.get("file")
        if isinstance(upload, FormFile) and not upload.filename and not upload.size:
            upload = None  # what a browser sends for a file field left empty
        # A form's fields are text: its numbers are read from it, where JSON's must be numbers.
        spec = validated(RunRequest, data, strict=False)
    else:
        spec = validated(RunRequest, parse_json(await request.body()))
    text = await read_upload(upload) if upload is not None else None
    given = [name for name, value in (("document", spec.document), ("file", text), ("document_id", spec.document_id))
             if value is not None]
    if len(given) > 1:
        raise bad_request(f"the document is given as both {given[0]} and {given[1]}: give it one way", given[1])
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


def json_body(name: str) -> dict[str, Any]:
    """The schema of a JSON body that a route reads itself (so that every fault in it is one 400 line)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}}}}


def component_schemas(*models: type[BaseModel]) -> dict[str, Any]:
    """The models' JSON schemas, and those of the models they hold, as OpenAPI components."""
    found: dict[str, Any] = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        found |= schema.pop("$defs", {})
        found[model.__name__] = schema
    return found
