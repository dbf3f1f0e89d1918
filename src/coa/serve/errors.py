"""Errors as OpenAI's API gives them: `{"error": {"message", "type", "param", "code"}}` with the
status that says what went wrong, never 200 with an error inside."""

from __future__ import annotations

from typing import Any

from coa.errors import CoaError, LimitError, ModelError, UnreachableError


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
