"""What `coa serve` sends back, on the wire: a run's answer as OpenAI's `chat.completion`, or as
the `chat.completion.chunk`s of a stream (in vLLM's format, with the calls' progress as
reasoning), and server-sent events (SSE): the stream's lines, and a job run's event stream."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

from coa.serve.runs import Run, Runner, trace
from coa.serve.store import ServeStore

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy holds events back
EVENT_ID = re.compile(r"[0-9]{1,18}")


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


# -- a job run's events ---------------------------------------------------------------------------
def last_event(header: str | None) -> int:
    """The number of the last event a client has (its Last-Event-ID header): 0 if none or malformed."""
    return int(header) if header and EVENT_ID.fullmatch(header.strip()) else 0


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
