"""Request bodies, and what a chat completion request asks: a document, a task and a strategy.

Bodies follow OpenAI's chat API; fields coa does not use are ignored, as vLLM ignores them.
coa's own settings come in one namespaced field, `coa`, where a misspelt key is an error.
Every field coa reads has a strict type: a JSON boolean is no number, a string no boolean.
A job request comes as JSON or as a multipart form, its document then an uploaded file.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from coa.budget import MIN_ANSWER_TOKENS
from coa.documents import decode_document
from coa.serve.errors import ApiError, bad_request, checked, validation_error
from coa.task import Kind, Task

TaskKind = Literal["qa", "mcq", "summarize", "code"]
Count = Annotated[int, Field(ge=1, le=10**9)]
Seed = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]  # what backends keep: a 64-bit integer
MAX_DEPTH = 32  # a request is a few levels deep; deeper is refused before anything walks it
SYSTEM_ROLES = ("system", "developer")  # instructions of the client, not part of a document
Body = TypeVar("Body", bound=BaseModel)


class Limits(BaseModel):
    """What one run may spend, and the window it may use (no larger than the server's)."""

    model_config = ConfigDict(extra="forbid", strict=True)
    window: Annotated[int, Field(ge=64, le=10**7)] | None = None
    max_calls: Count | None = None
    max_total_tokens: Count | None = None
    max_seconds: Annotated[float, Field(gt=0, le=10**6, allow_inf_nan=False)] | None = None


class CoaSettings(Limits):
    """The `coa` field of a chat completion request."""

    strategy: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    task: TaskKind = "qa"
    choices: list[str] = Field(default_factory=list)
    document: str | None = Field(None, description="an uploaded document's id (POST /v1/files)")
    trace: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    role: str
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)
    include_usage: bool = False


class ChatRequest(BaseModel):
    # Strict floats take JSON integers: clients send `"temperature": 0` and `1`.
    model_config = ConfigDict(extra="ignore", strict=True)
    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] | None = None
    seed: Seed | None = None
    # The answer's generation limit (Config.max_answer_tokens); coa's answering call needs at least 16.
    max_completion_tokens: Annotated[int, Field(ge=MIN_ANSWER_TOKENS, le=10**9)] | None = None
    max_tokens: Annotated[int, Field(ge=MIN_ANSWER_TOKENS, le=10**9)] | None = None  # the older name
    coa: CoaSettings = Field(default_factory=CoaSettings)


class RunRequest(Limits):
    """A job: a document (its text, or an uploaded one's id), a task and a strategy."""

    document: str | None = None
    document_id: str | None = None
    question: str | None = None
    task: TaskKind = "qa"
    choices: list[str] = Field(default_factory=list)
    strategy: str = "coa"
    options: dict[str, Any] = Field(default_factory=dict)


# -- bodies -----------------------------------------------------------------------------------------
def media_type(content_type: str | None, accepted: tuple[str, ...]) -> str:
    """The request's media type, one of `accepted` (parameters such as charset aside), or 415."""
    media = (content_type or "").partition(";")[0].strip().lower()
    if media not in accepted:
        given = f"Content-Type {media}" if media else "a body without a Content-Type"
        raise ApiError(415, f"{given} is not accepted here: send {' or '.join(accepted)}",
                       code="unsupported_media_type")
    return media


def parse_json(data: bytes | str, what: str = "the body", param: str | None = None) -> Any:
    """JSON text as Python values, or one 400 line: malformed, nested too deeply, or holding a number
    Python will not convert (over its integer digit limit, or beyond a float's range)."""
    def refuse(_: str) -> Any:
        raise ValueError("NaN and Infinity are not JSON")

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError(f"the number {text if len(text) <= 20 else text[:20] + '…'} is out of range")
        return value

    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    opened = data.count(b"[") + data.count(b"{")  # an upper bound on the depth: most bodies need no walk
    try:
        value = json.loads(data, parse_constant=refuse, parse_float=finite)
    except RecursionError:
        raise bad_request(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)", param) from None
    except json.JSONDecodeError:
        raise bad_request(f"{what} is not valid JSON", param) from None
    except UnicodeDecodeError:
        raise bad_request(f"{what} is not valid JSON (not UTF-8 text)", param) from None
    except ValueError as e:  # from Python's integer conversion, or from the two hooks above
        if "digits" in str(e):
            raise bad_request(f"{what} holds an integer of more than {sys.get_int_max_str_digits():,} digits",
                              param) from None
        raise bad_request(f"{what} is not valid JSON ({e})", param) from None
    if opened > MAX_DEPTH and depth_over(value, MAX_DEPTH):
        raise bad_request(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)", param)
    return value


def depth_over(value: Any, limit: int) -> bool:
    """Whether lists and objects nest deeper than `limit`, found without recursion."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, (dict, list)):
                if depth + 1 > limit:
                    return True
                stack.append((child, depth + 1))
    return False


def validated(model: type[Body], data: Any, *, strict: bool = True) -> Body:
    """`data` as the body `model`, or one 400 line naming the first fields at fault."""
    if not isinstance(data, dict):
        raise bad_request("the body must be a JSON object")
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


# -- chat -------------------------------------------------------------------------------------------
def text_of(message: Message, position: int) -> str:
    """A message's text: its content, or its text parts joined; other parts are refused."""
    if message.content is None:
        return ""
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type != "text" or part.text is None:
            raise bad_request(f"messages[{position}]: only text content is supported, not {part.type!r}",
                              f"messages[{position}].content")
        texts.append(part.text)
    return "".join(texts)


def split_conversation(messages: list[Message], *, uploaded: bool = False) -> tuple[str, str]:
    """(the document, the question): the last message must be the user's and holds the question;
    the messages before it, joined by blank lines, are the document. With an uploaded document
    (`uploaded`), the messages before the question may hold only system prompts: a document in
    them as well would be a second one, and which to read is not for the server to guess."""
    last = len(messages) - 1
    if messages[last].role != "user":
        raise bad_request(f"the last message must be the user's question, not a {messages[last].role!r} message",
                          "messages")
    texts = [text_of(m, i) for i, m in enumerate(messages)]
    if uploaded:
        if any(t.strip() and m.role not in SYSTEM_ROLES for m, t in zip(messages[:last], texts, strict=False)):
            raise bad_request("coa.document names the document, and the messages before the question hold one too: "
                              "send the document one way (only system messages may come before the question)",
                              "coa.document")
        return "", texts[last]
    return "\n\n".join(t for t in texts[:last] if t.strip()), texts[last]


def make_task(document: str, query: str | None, task: TaskKind, choices: list[str]) -> Task:
    """The Task a request asks for (its checks raise InputError); an empty query is none."""
    return Task(document, query or None, Kind(task), tuple(choices))


# -- jobs -------------------------------------------------------------------------------------------
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
        if isinstance(upload, UploadFile) and not upload.filename and not upload.size:
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


async def read_upload(upload: UploadFile | str) -> str:
    """An uploaded file's text, checked as `coa ask` checks a file. A part without a file name
    arrives as text: it is the document all the same."""
    if isinstance(upload, str):
        data, name = upload.encode(), "file"
    else:
        data, name = await upload.read(), upload.filename or "the upload"
    return checked(lambda: decode_document(data, name).text, "file")
