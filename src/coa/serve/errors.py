"""Errors as OpenAI's API gives them: `{"error": {"message", "type", "param", "code"}}` with the
status that says what went wrong, never 200 with an error inside; and the app's handlers that
turn every exception into one."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from coa.errors import CoaError, ConfigError, LimitError, ModelError, UnreachableError


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
        return ApiError(500, "internal error", "server_error").response()


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
