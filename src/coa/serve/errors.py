"""Errors as OpenAI's API gives them: `{"error": {"message", "type", "param", "code"}}` with the
status that says what went wrong, never 200 with an error inside; the library's errors mapped
to them; the app's handlers that turn every exception into one (an unexpected one is logged,
with its traceback, on logger "coa.serve", and reaches the client as a bare 500); and the
OpenAPI schema made to say so."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from coa.errors import CoaError, ConfigError, LimitError, ModelError, UnreachableError

log = logging.getLogger("coa.serve")
T = TypeVar("T")


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param=param)


def not_found(what: str, name: str) -> ApiError:
    return ApiError(404, f"no {what} {name!r}", "not_found_error", code=f"{what.replace(' ', '_')}_not_found")


def interrupted() -> ApiError:
    """A run cut off by the server's stop: it ended, unfinished, and must not read as lost."""
    return ApiError(503, "the server stopped before the run finished", "server_error", code="interrupted")


def from_coa(error: CoaError, param: str | None = None) -> ApiError:
    """The API error for an error of the library: the same one line the CLI prints."""
    message = " ".join(str(error).split())  # backends keep keys and URL credentials out of their messages
    if isinstance(error, LimitError):
        return ApiError(422, message, "run_limit_error", code="run_limit_reached")
    if isinstance(error, UnreachableError):
        return ApiError(503, message, "backend_unavailable")
    if isinstance(error, ModelError):
        return ApiError(502, message, "backend_error")
    return ApiError(400, message, param=param)  # the input or the settings


def checked(make: Callable[[], T], param: str | None = None) -> T:
    """`make()`, with a library error as the API's error (the CLI's message, status 400)."""
    try:
        return make()
    except CoaError as e:
        raise from_coa(e, param) from None


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


def handle_errors(app: FastAPI) -> None:
    """Every error as OpenAI's error body with its status; nothing else (no traceback) reaches a client."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return error.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        return validation_error(error.errors()).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return ApiError(error.status_code, str(error.detail), kind).response()

    @app.exception_handler(ConfigError)
    async def coa_error(request: Request, error: CoaError) -> JSONResponse:
        return from_coa(error).response()

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        # The traceback is the operator's, in the log; the client learns only that it failed.
        log.error("internal error answering %s %s", request.method, request.url.path, exc_info=error)
        return ApiError(500, "internal error", "server_error").response()


# -- the schema --------------------------------------------------------------------------------------
ERROR_SCHEMA = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"],
    "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                   "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}


def describe_errors(app: FastAPI, schemas: dict[str, Any] | None = None) -> None:
    """The schema says what the server does: a malformed request is 400 with OpenAI's error body
    (FastAPI's default schema says 422 with its own). `schemas`: component schemas that bodies
    read by the routes themselves refer to."""
    build = app.openapi

    def schema() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    responses = operation.get("responses", {})
                    if responses.pop("422", None) is not None or "requestBody" in operation:
                        responses["400"] = {"description": "A malformed request: OpenAI's error body",
                                            "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            components = document.setdefault("components", {}).setdefault("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            components.update(schemas or {})
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = schema  # type: ignore[method-assign]


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
