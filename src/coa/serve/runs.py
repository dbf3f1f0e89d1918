"""Runs on the server's event loop: each is an asyncio task that solves one Task with a strategy,
records an event per call, and wakes whoever follows it. Job runs are also written to the store
as they go; a chat completion's run lives only as long as its request."""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from coa.config import Config
from coa.errors import CoaError
from coa.models.base import Model
from coa.models.urls import redact
from coa.serve.errors import ApiError, from_coa, interrupted
from coa.serve.store import ServeStore
from coa.session import Progress
from coa.strategies.base import STRATEGIES, Strategy
from coa.strategies.options import places
from coa.task import Result, Task

FINISHED = ("succeeded", "failed", "cancelled")
PING_SECONDS = 15.0  # the longest silence on an event stream; proxies and clients give up after 30-60 s

log = logging.getLogger("coa.serve")


@dataclass
class Run:
    id: str
    owner: str
    strategy: str
    task: Task
    stored: bool  # a job run, kept in the store
    created_at: int = field(default_factory=lambda: int(time.time()))
    started_at: int | None = None
    finished_at: int | None = None
    status: str = "queued"
    answer: str | None = None
    error: dict[str, Any] | None = None
    result: Result | None = None
    failure: ApiError | None = None  # why it did not succeed, as the API reports it
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    job: asyncio.Task | None = None
    stop: threading.Event = field(default_factory=threading.Event)  # set: no further call of this run begins
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def usage(self) -> dict[str, Any] | None:
        if self.result is None:
            return None
        usage = self.result.usage
        return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.prompt_tokens + usage.completion_tokens, "cached_tokens": usage.cached_tokens,
                "calls": usage.calls, "seconds": round(usage.seconds, 3)}

    def view(self, *, result: bool = True) -> dict[str, Any]:
        """The run as the API shows it."""
        view = {"id": self.id, "object": "coa.run", "created_at": self.created_at, "started_at": self.started_at,
                "finished_at": self.finished_at, "status": self.status, "strategy": self.strategy,
                "task": str(self.task.kind), "question": self.task.query, "answer": self.answer, "error": self.error,
                "usage": self.usage,
                # The evidence, as offsets into the document the run was given (code points).
                "citations": [vars(c) for c in self.result.citations] if self.result else [],
                "supported": self.result.supported if self.result else None}
        if result:
            view["result"] = trace(self.result) if self.result else None
        return view

    async def follow(self, after: int = 0) -> AsyncIterator[tuple[int, str, dict[str, Any]] | None]:
        """Events numbered above `after`, as they come, until the run has finished; None after each
        PING_SECONDS without one (for a keep-alive)."""
        while True:
            wake = self._wake
            while after < len(self.events):
                after += 1
                yield self.events[after - 1]
            if self.finished:
                return
            try:
                await asyncio.wait_for(wake.wait(), PING_SECONDS)
            except TimeoutError:
                yield None

    async def wait(self) -> None:
        async for _ in self.follow(len(self.events)):
            pass


def trace(result: Result) -> dict[str, Any]:
    """A run's trace as clients see it: its settings hold the operator's places (`--opt`), shown
    without the credentials a URL may carry."""
    data = result.to_dict()
    settings = data.get("settings") or {}
    strategy = next((entry.obj for entry in STRATEGIES.items() if entry.name == result.strategy), None)
    for key in places(strategy) if strategy is not None else ():
        if isinstance(settings.get(key), str):
            settings[key] = redact(settings[key])
    return data


class Runner:
    """Starts runs with the served model, counts each owner's runs in flight, and keeps job runs in
    the store."""

    def __init__(self, model: Model, config: Config, store: ServeStore, max_concurrent: int) -> None:
        self.model = model
        self.config = config
        self.store = store
        self.max_concurrent = max_concurrent
        self.live: dict[str, Run] = {}
        self.stopping = False
        # Each run has a thread and an event loop of its own: strategies count tokens synchronously
        # (a tokenizer, or a server's /tokenize), which must never stall the server's loop.
        self.threads = ThreadPoolExecutor(max_workers=max(32, 4 * max_concurrent), thread_name_prefix="coa-run")

    def in_flight(self, owner: str) -> int:
        return sum(1 for run in self.live.values() if run.owner == owner)

    def admit(self, owner: str) -> None:
        """Refuse a new run to an owner with `max_concurrent` in flight: 429 before any body is sent."""
        if self.in_flight(owner) >= self.max_concurrent:
            raise ApiError(429, f"{self.max_concurrent} runs are in flight for this key; retry when one has finished",
                           "rate_limit_error", code="too_many_runs",
                           headers={"Retry-After": "5", "x-ratelimit-limit-requests": str(self.max_concurrent),
                                    "x-ratelimit-remaining-requests": "0"})

    def config_for(self, window: int | None = None, **settings: Any) -> Config:
        """The server's settings with a request's own: a window no larger than the server's, limits
        (a request may tighten the operator's limits, never loosen them), sampling (None keeps the server's)."""
        given = {key: value for key, value in settings.items() if value is not None}
        for key in ("max_calls", "max_total_tokens", "max_seconds"):
            if key in given and getattr(self.config, key) is not None:
                given[key] = min(given[key], getattr(self.config, key))
        return replace(self.config, window=min(window or self.config.window, self.config.window), **given)

    def start(self, owner: str, strategy: type[Strategy], options: Any, task: Task, config: Config, *,
              stored: bool) -> Run:
        self.admit(owner)
        model = self.model.scoped(owner)  # before the run exists: a failure here leaves no run queued for ever
        run = Run(id=f"run_{secrets.token_hex(12)}", owner=owner, strategy=strategy.name, task=task, stored=stored)
        if stored:
            self.store.add_run(owner, run.view(result=False))
        self.live[run.id] = run
        loop = asyncio.get_running_loop()

        def observe(event: Progress) -> None:  # called in the run's thread, as each call begins and ends
            if run.stop.is_set() and event.call is None:  # a call about to begin: a stopped run makes none
                raise asyncio.CancelledError
            loop.call_soon_threadsafe(self._observe, run, event)

        solver = strategy(model, config, options=options, observer=observe)  # a cache keeps clients apart
        run.job = asyncio.create_task(self._execute(run, solver))
        return run

    def get(self, owner: str, id: str) -> Run | None:
        run = self.live.get(id)
        return run if run is not None and run.owner == owner else None

    def cancel(self, run: Run) -> None:
        if run.job is not None and not run.finished:
            run.stop.set()
            run.job.cancel()

    async def _execute(self, run: Run, solver: Strategy) -> None:
        self._change(run, status="running", started_at=int(time.time()))
        inner: list[tuple[asyncio.AbstractEventLoop, asyncio.Task]] = []  # the run's own loop and task

        def solve() -> list[Result]:
            async def main() -> list[Result]:
                inner.append((asyncio.get_running_loop(), asyncio.current_task()))  # type: ignore[arg-type]
                return await solver.arun_many([run.task])
            return asyncio.run(main())

        try:
            (result,) = await asyncio.get_running_loop().run_in_executor(self.threads, solve)
            run.result, run.answer = result, result.answer
            self._finish(run, "succeeded")
        except asyncio.CancelledError:
            # No call begins after this (the observer refuses to start one), and the run's own task is
            # cancelled where it waits; a call in flight ends in its thread, unread.
            run.stop.set()
            for loop, task in inner:
                loop.call_soon_threadsafe(task.cancel)
            if self.stopping:  # cut off by the server's stop, not by its client
                self._fail(run, interrupted())
            else:
                run.failure = ApiError(499, "the run was cancelled", "cancelled", code="cancelled")
                self._finish(run, "cancelled")
        except CoaError as e:
            self._fail(run, from_coa(e))
        except Exception:  # a fault in a strategy or backend: the run fails, the server goes on
            # The traceback in the server's log; the client learns only that it was ours.
            log.exception("run %s (%s) failed", run.id, run.strategy)
            self._fail(run, ApiError(500, "internal error", "server_error"))

    def _fail(self, run: Run, failure: ApiError) -> None:
        run.failure, run.error = failure, failure.body()["error"]
        self._finish(run, "failed")

    def _observe(self, run: Run, event: Progress) -> None:
        data: dict[str, Any] = {"type": "started" if event.call is None else "finished", "role": event.role,
                                "index": event.index, "total": event.total}
        if event.call is not None:
            call = event.call
            data |= {"span": list(call.span) if call.span else None, "prompt_tokens": call.prompt_tokens,
                     "completion_tokens": call.completion_tokens, "cached_tokens": call.cached_tokens,
                     "seconds": round(call.seconds, 3), "output": call.output, "cu": call.cu, "note": call.note}
        self._emit(run, "call", data)

    def _change(self, run: Run, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(run, key, value)
        if run.stored:
            self.store.update_run(run.id, changes)
        self._emit(run, "status", {"status": run.status})

    def _finish(self, run: Run, status: str) -> None:
        self.live.pop(run.id, None)
        run.status, run.finished_at = status, int(time.time())
        if run.stored:
            view = run.view()
            self.store.update_run(run.id, {k: view[k] for k in ("status", "finished_at", "answer", "error", "usage", "citations", "supported", "result")})
        self._emit(run, "status", {"status": status})
        self._emit(run, "done", run.view(result=False))

    def _emit(self, run: Run, type: str, data: dict[str, Any]) -> None:
        seq = len(run.events) + 1
        run.events.append((seq, type, data))
        if run.stored:
            self.store.add_event(run.id, seq, type, data)
        wake, run._wake = run._wake, asyncio.Event()
        wake.set()

    async def shutdown(self) -> None:
        """Stop what is in flight: those runs end as failed, interrupted by the server's stop."""
        self.stopping = True
        jobs = [run.job for run in self.live.values() if run.job is not None]
        for job in jobs:
            job.cancel()
        await asyncio.gather(*jobs, return_exceptions=True)
        self.threads.shutdown(wait=False, cancel_futures=True)
