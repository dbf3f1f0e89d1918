"""The FastAPI application of `coa serve` and its routes: OpenAI's chat completions and models,
uploaded documents, the job API with its event stream, the page and health. docs/serve.md
describes the API.

`create_app` puts together what the routes share (a `Serving`, in app.state), the middleware
(guard.py), the error handlers and schema (errors.py), and the routes below, which read
requests (protocol.py) and answer in OpenAI's wire format (wire.py).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, Form, Header, Request, UploadFile
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from coa.config import Config
from coa.models.base import Model
from coa.serve.errors import (
    ApiError,
    bad_request,
    checked,
    component_schemas,
    describe_errors,
    handle_errors,
    json_body,
    not_found,
)
from coa.serve.guard import BODY_TIMEOUT, Guard, check_keys
from coa.serve.options import operator_options, request_options
from coa.serve.protocol import (
    ChatRequest,
    RunRequest,
    make_task,
    media_type,
    parse_json,
    read_upload,
    run_request,
    split_conversation,
    validated,
)
from coa.serve.runs import Run, Runner
from coa.serve.store import ServeStore
from coa.serve.wire import SSE_HEADERS, Completion, event_stream, last_event
from coa.strategies.base import STRATEGIES, Strategy, get_strategy

STATIC = files("coa.serve") / "static"
PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}


@dataclass
class Serving:
    """What the routes share: the runs, the store, the server's settings and the operator's options."""

    runner: Runner
    store: ServeStore
    config: Config
    preset: dict[str, dict[str, Any]]  # the operator's options (`--opt`), by strategy
    max_request_bytes: int
    started: int  # when the server started (the models' `created`)

    def options_for(self, strategy: type[Strategy], given: dict[str, Any], param: str) -> Any:
        return request_options(strategy, given, self.preset.get(strategy.name, {}), param)

    def uploaded(self, owner: str, file_id: str, param: str) -> str:
        text = self.store.file_text(owner, file_id)
        if text is None:
            raise ApiError(404, f"no uploaded document {file_id!r}", "not_found_error", param=param,
                           code="file_not_found")
        return text


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

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await runner.shutdown()
        served.close()

    # FastAPI's own /docs and /redoc pages load their scripts from a CDN: off, and /docs is ours.
    app = FastAPI(title="coa serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None,
                  description="Long-context answers from a short-window model: see docs/serve.md.")
    app.state.serving = Serving(runner, served, config, preset, max_request_bytes, int(time.time()))
    app.state.runner = runner  # for a look at the runs in flight
    app.add_middleware(Guard, keys=list(api_keys), max_bytes=max_request_bytes, hosts=allowed_hosts,
                       body_timeout=body_timeout)
    handle_errors(app)
    describe_errors(app, component_schemas(ChatRequest, RunRequest))
    app.include_router(pages)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")
    if docs:
        app.add_api_route("/docs", api_docs, methods=["GET"], include_in_schema=False)
    app.include_router(api)
    return app


def serving(request: Request) -> Serving:
    return request.app.state.serving


# -- the page, health and the API's description -----------------------------------------------------
pages = APIRouter()


@pages.get("/", include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)


async def api_docs() -> HTMLResponse:  # a page of our own: it loads nothing from elsewhere
    return HTMLResponse((STATIC / "docs.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)


api = APIRouter()


@api.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


# -- OpenAI-compatible ------------------------------------------------------------------------------
@api.get("/v1/models")
async def models(request: Request) -> dict[str, Any]:
    serve = serving(request)
    data = [{"id": f"coa/{entry.name}", "object": "model", "created": serve.started, "owned_by": "chainofagents",
             "description": entry.description, "window": serve.config.window,
             "max_document_bytes": serve.max_request_bytes}
            for entry in STRATEGIES.items()]
    return {"object": "list", "data": data}


@api.post("/v1/chat/completions", response_model=None, openapi_extra=json_body("ChatRequest"))
async def chat_completions(request: Request) -> Response | dict[str, Any]:
    serve = serving(request)
    runner = serve.runner
    media_type(request.headers.get("content-type"), ("application/json",))
    body = validated(ChatRequest, parse_json(await request.body()))
    owner, settings = request.state.owner, body.coa
    strategy = strategy_for(body.model, settings.strategy)
    options = serve.options_for(strategy, settings.options, "coa.options")
    document, question = split_conversation(body.messages, uploaded=settings.document is not None)
    if settings.document is not None:
        document = serve.uploaded(owner, settings.document, "coa.document")
    if not document.strip():
        raise bad_request("no document: send it in the messages before the question, or upload it "
                          "(POST /v1/files) and give its id as coa.document", "messages")
    task = checked(lambda: make_task(document, question, settings.task, settings.choices))
    run_config = runner.config_for(settings.window, max_calls=settings.max_calls,
                                   max_total_tokens=settings.max_total_tokens, max_seconds=settings.max_seconds,
                                   temperature=body.temperature, seed=body.seed,
                                   max_answer_tokens=body.max_completion_tokens or body.max_tokens)
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


def strategy_for(model: str, name: str | None) -> type[Strategy]:
    """The strategy a chat request names: `coa.strategy`, else the model's name `coa/STRATEGY`."""
    if name is not None:
        return checked(lambda: get_strategy(name), "coa.strategy")
    prefix, _, rest = model.partition("/")
    if prefix != "coa" or rest not in STRATEGIES:
        raise ApiError(404, f"no model {model!r}: the models are coa/STRATEGY (GET /v1/models lists them)",
                       "not_found_error", param="model", code="model_not_found")
    return get_strategy(rest)


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


# -- documents --------------------------------------------------------------------------------------
@api.post("/v1/files")
async def upload_file(request: Request, file: Annotated[UploadFile | str, File()],
                      purpose: Annotated[str, Form()] = "coa") -> dict[str, Any]:
    store = serving(request).store
    text = await read_upload(file)
    filename = file.filename if not isinstance(file, str) else ""
    record = {"id": f"file-{secrets.token_hex(12)}", "owner": request.state.owner, "filename": filename or "",
              "purpose": purpose, "bytes": len(text.encode()), "created_at": int(time.time())}
    store.add_file(record, text)
    return store.file(record["owner"], record["id"]) or {}


@api.get("/v1/files/{file_id}")
async def get_file(file_id: str, request: Request) -> dict[str, Any]:
    return serving(request).store.file(request.state.owner, file_id) or raise_(not_found("file", file_id))


@api.delete("/v1/files/{file_id}")
async def delete_file(file_id: str, request: Request) -> dict[str, Any]:
    if not serving(request).store.delete_file(request.state.owner, file_id):
        raise not_found("file", file_id)
    return {"id": file_id, "object": "file", "deleted": True}


# -- jobs -------------------------------------------------------------------------------------------
RUN_BODY = {"requestBody": {"required": True, "content": {
    **json_body("RunRequest")["requestBody"]["content"],
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "string", "format": "binary"},
        **{k: {"type": "string"} for k in RunRequest.model_fields if k != "document"}}}}}}}


@api.post("/v1/runs", status_code=202, openapi_extra=RUN_BODY)
async def create_run(request: Request) -> dict[str, Any]:
    serve, owner = serving(request), request.state.owner
    spec, text = await run_request(request)
    strategy = checked(lambda: get_strategy(spec.strategy), "strategy")
    options = serve.options_for(strategy, spec.options, "options")
    if spec.document_id is not None:
        text = serve.uploaded(owner, spec.document_id, "document_id")
    if text is None:
        raise bad_request("give the document: its text as `document`, a `file` upload, or an uploaded "
                          "document's id as `document_id`", "document")
    document = text
    task = checked(lambda: make_task(document, spec.question, spec.task, spec.choices))
    run_config = serve.runner.config_for(spec.window, max_calls=spec.max_calls, max_total_tokens=spec.max_total_tokens,
                                         max_seconds=spec.max_seconds)
    return serve.runner.start(owner, strategy, options, task, run_config, stored=True).view()


@api.get("/v1/runs")
async def list_runs(request: Request, limit: int = 20) -> dict[str, Any]:
    return {"object": "list", "data": serving(request).store.runs(request.state.owner, max(1, min(limit, 100)))}


@api.get("/v1/runs/{run_id}")
async def get_run(run_id: str, request: Request) -> dict[str, Any]:
    serve, owner = serving(request), request.state.owner
    run = serve.runner.get(owner, run_id)
    return run.view() if run else serve.store.run(owner, run_id) or raise_(not_found("run", run_id))


@api.delete("/v1/runs/{run_id}")
async def delete_run(run_id: str, request: Request) -> dict[str, Any]:
    serve, owner = serving(request), request.state.owner
    run = serve.runner.get(owner, run_id)
    if run is not None:  # in flight: cancel it, and show how it ended
        serve.runner.cancel(run)
        await run.wait()
        return run.view()
    if not serve.store.delete_run(owner, run_id):
        raise not_found("run", run_id)
    return {"id": run_id, "object": "coa.run.deleted", "deleted": True}


@api.get("/v1/runs/{run_id}/events")
async def run_events(run_id: str, request: Request,
                     last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
    serve, owner = serving(request), request.state.owner
    run = serve.runner.get(owner, run_id)
    if run is None and serve.store.run(owner, run_id, result=False) is None:
        raise not_found("run", run_id)
    return StreamingResponse(event_stream(run, serve.store, run_id, last_event(last_event_id)),
                             media_type="text/event-stream", headers=SSE_HEADERS)


def raise_(error: Exception) -> Any:
    raise error
