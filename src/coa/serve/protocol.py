"""Request bodies, and what a chat completion request asks: a document, a task and a strategy.

Bodies follow OpenAI's chat API; fields coa does not use are ignored, as vLLM ignores them.
coa's own settings come in one namespaced field, `coa`, where a misspelt key is an error.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from coa.serve.errors import bad_request
from coa.task import Kind, Task

TaskKind = Literal["qa", "mcq", "summarize", "code"]
Count = Annotated[int, Field(ge=1, le=10**9)]


class Limits(BaseModel):
    """What one run may spend, and the window it may use (no larger than the server's)."""

    model_config = ConfigDict(extra="forbid")
    window: Annotated[int, Field(ge=64, le=10**7)] | None = None
    max_calls: Count | None = None
    max_total_tokens: Count | None = None


class CoaSettings(Limits):
    """The `coa` field of a chat completion request."""

    strategy: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    task: TaskKind = "qa"
    choices: list[str] = Field(default_factory=list)
    document: str | None = Field(None, description="an uploaded document's id (POST /v1/files)")
    trace: bool = False


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: str
    content: str | list[TextPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    messages: Annotated[list[Message], Field(min_length=1)]
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)] | None = None
    seed: int | None = None
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


def split_conversation(messages: list[Message]) -> tuple[str, str]:
    """(the document, the question): the last message must be the user's and holds the question;
    the messages before it, joined by blank lines, are the document."""
    last = len(messages) - 1
    if messages[last].role != "user":
        raise bad_request(f"the last message must be the user's question, not a {messages[last].role!r} message",
                          "messages")
    texts = [text_of(m, i) for i, m in enumerate(messages)]
    return "\n\n".join(t for t in texts[:last] if t.strip()), texts[last]


def make_task(document: str, query: str | None, task: TaskKind, choices: list[str]) -> Task:
    """The Task a request asks for (its checks raise InputError); an empty query is none."""
    return Task(document, query or None, Kind(task), tuple(choices))
