"""Where the pairs of a run execute: in this process (asyncio) or on a Ray cluster.

The contract, shared by every executor: `run(dataset, config, pairs, on_row)` runs each
(position, example, strategy) pair once with `run_pair` and calls `on_row(row)` in the
caller's thread the moment a row is back, in whatever order rows finish. A pair's own
failure is its row's `error`, never an exception; `run` raises only when the executor
itself cannot go on (a cluster it cannot reach, a model its workers cannot build, a pair
lost with its workers again and again), and the rows already handed to `on_row` stand.
The caller stores each row as it comes, so a rerun skips what is done.

Models are not picklable (an httpx client, a llama.cpp context), so a Ray worker builds its
own from a `ModelSpec`, once, and keeps it for every pair it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from coa.config import Config
from coa.errors import CoaError, ConfigError
from coa.eval import metrics
from coa.eval.audit import audit
from coa.eval.datasets import Example
from coa.extras import ensure, require
from coa.models.base import Model
from coa.models.urls import redact, scrub
from coa.session import Progress
from coa.strategies import get_strategy
from coa.task import Call

if TYPE_CHECKING:
    from coa.eval.runner import StrategySpec

Pair = tuple[int, Example, "StrategySpec"]  # (the example's position in the dataset, the example, the strategy)
OnRow = Callable[[dict[str, Any]], None]


class Executor(Protocol):
    def run(self, dataset: str, config: Config, pairs: Sequence[Pair], on_row: OnRow) -> None: ...


@dataclass(frozen=True)
class ModelSpec:
    """What `load_model` needs to build the model anew, in another process or on another machine."""

    name: str
    window: int | None = None
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)  # never in a repr, a log line or an error
    timeout: float | None = None
    cache: Path | None = None  # the response cache file, where one is used

    def load(self) -> Model:
        from coa.models.registry import load_model

        return load_model(self.name, window=self.window, base_url=self.base_url, api_key=self.api_key,
                          timeout=self.timeout, cache=self.cache)

    def scrub(self, text: str) -> str:
        """`text` with the key and any credentials of the server URL hidden."""
        return scrub(text, self.base_url or "", self.api_key)


def blank_row(dataset: str, position: int, example: Example, spec: StrategySpec) -> dict[str, Any]:
    return {
        "dataset": dataset, "example": example.id, "strategy": spec.label, "position": position,
        "refs": example.references, "metric": example.metric, "meta": example.meta, "document_tokens": None,
        "prediction": None, "score": None, "calls": None, "prompt_tokens": None, "completion_tokens": None,
        "seconds": None, "trace": None, "error": None,
    }


def together(pairs: Sequence[Pair]) -> list[list[Pair]]:
    """The pairs grouped by strategy and document, in order: one group's questions share one read."""
    groups: dict[tuple[str, str], list[Pair]] = {}
    for pair in pairs:
        groups.setdefault((pair[2].label, pair[1].task.document), []).append(pair)
    return list(groups.values())


async def run_pair(dataset: str, position: int, example: Example, spec: StrategySpec, model: Model, config: Config) -> dict:
    """One strategy on one example, as a results row; a failure is recorded, not raised."""
    return (await run_group(dataset, [(position, example, spec)], model, config))[0]


async def run_group(dataset: str, group: Sequence[Pair], model: Model, config: Config) -> list[dict]:
    """One strategy on examples that share a document (`Strategy.arun_many`: CoA reads it once for all),
    as results rows; a failure is recorded in every row, with the calls that finished, not raised."""
    rows = [blank_row(dataset, *pair) for pair in group]
    spec = group[0][2]
    started = time.perf_counter()
    calls = _Calls()
    try:
        for row, (_, example, _) in zip(rows, group, strict=True):
            row["document_tokens"] = example.meta.get("tokens") or model.count_tokens(example.task.document)
        strategy = get_strategy(spec.name)(model, config, observer=calls, options=spec.options)
        results = await strategy.arun_many([example.task for _, example, _ in group])
    except Exception as e:  # a bug or a backend failure must not end a long run
        error = str(e) if isinstance(e, CoaError) else f"{type(e).__name__}: {e}"
        await calls.stop()
        return [{**row, **calls.failed(error, [example.id for _, example, _ in group]),
                 "seconds": time.perf_counter() - started} for row in rows]
    for row, (_, example, _), result in zip(rows, group, results, strict=True):
        row.update(prediction=result.answer, seconds=result.seconds)
        try:  # the answer is kept even where accounting or scoring fails
            usage = result.usage
            row.update(trace=result.to_dict(), calls=usage.calls, prompt_tokens=usage.prompt_tokens,
                       completion_tokens=usage.completion_tokens, seconds=usage.seconds)
            if example.references:  # a corpus without reference answers has nothing to score against
                context = {"choices": len(example.task.choices) or 4, "all_classes": example.meta.get("all_classes", [])}
                row["score"] = metrics.score(example.metric, result.answer, example.references, **context)
                # Right for the right reason: where the evidence was held, lost or missed (coa.eval.audit).
                row["trace"]["audit"] = audit(row["trace"], example.references, example.metric)
        except Exception as e:
            row["error"] = f"scoring failed: {type(e).__name__}: {e}"
    return rows


class _Calls:
    """Observer of a group's run that keeps every finished call, so that a failed pair's row keeps the
    work paid for. The calls of a group's questions cannot be told apart once its run has failed
    (they share an observer), so each row of a failed group gets them all."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.tasks: set[asyncio.Task] = set()  # those that began a call
        self.stopped = False

    def __call__(self, event: Progress) -> None:
        if event.call is not None:
            self.calls.append(event.call)
        elif self.stopped:  # a concurrent call of a run that has failed: it would be paid for in vain
            raise CoaError("the run failed; no more calls")
        elif (task := asyncio.current_task()) is not None:
            self.tasks.add(task)

    async def stop(self) -> None:
        """Refuse further calls and wait for those in flight (a failed call in `asyncio.gather`
        leaves its siblings running), so that the calls they finish are kept too."""
        self.stopped = True
        waiting = [t for t in self.tasks if t is not asyncio.current_task() and not t.done()]
        if waiting:
            await asyncio.wait(waiting)

    def failed(self, error: str, examples: list[str]) -> dict[str, Any]:
        """The columns of a failed row: the error, and the finished calls in its trace and counts."""
        trace: dict[str, Any] = {"error": error, "calls": [asdict(c) for c in self.calls]}
        if len(examples) > 1:
            trace["shared_by"] = examples  # the calls are those of all these questions together
        return {"error": error, "trace": trace, "calls": len(self.calls),
                "prompt_tokens": sum(c.prompt_tokens for c in self.calls),
                "completion_tokens": sum(c.completion_tokens for c in self.calls)}


@dataclass
class LocalExecutor:
    """Pairs as asyncio tasks in this process, `concurrency` of them in flight, on one model."""

    model: Model
    concurrency: int = 1

    def run(self, dataset: str, config: Config, pairs: Sequence[Pair], on_row: OnRow) -> None:
        asyncio.run(self._run(dataset, config, pairs, on_row))

    async def _run(self, dataset: str, config: Config, pairs: Sequence[Pair], on_row: OnRow) -> None:
        slots = asyncio.Semaphore(max(1, self.concurrency))

        async def one(group: list[Pair]) -> None:
            async with slots:
                for row in await run_group(dataset, group, self.model, config):
                    on_row(row)

        await asyncio.gather(*(one(group) for group in together(pairs)))


class _Worker:
    """A Ray actor: one model built from the spec, one pair at a time. Ray restarts it elsewhere
    when its node is lost (the model is built again) and retries the pair it was running."""

    def __init__(self, spec: ModelSpec, dataset: str, config: Config) -> None:
        self.dataset, self.config = dataset, config
        self.model: Model | None = None
        self.problem: str | None = None
        try:  # kept, not raised: the driver reports it in one line, without Ray's traceback
            self.model = spec.load()
        except CoaError as e:
            self.problem = spec.scrub(str(e))
        except Exception as e:
            self.problem = spec.scrub(f"{type(e).__name__}: {e}")

    def ready(self) -> str | None:
        return self.problem

    def run(self, group: list[Pair]) -> list[dict]:
        if self.model is None:  # a restart on a node that cannot build the model
            return [{**blank_row(self.dataset, *pair), "error": f"the model did not load: {self.problem}"} for pair in group]
        return asyncio.run(run_group(self.dataset, group, self.model, self.config))

    def __repr__(self) -> str:  # Ray shows it in logs and errors: the spec (and its key) stays out
        return "coa-worker"


@dataclass
class RayExecutor:
    """Pairs on a pool of `concurrency` Ray actors, spread over the cluster's nodes; rows come back
    to the driver as they finish (`ray.wait`). Connects to `address` where given, else starts a
    local Ray (or joins the one RAY_ADDRESS names, as Ray itself does)."""

    spec: ModelSpec
    concurrency: int = 1
    address: str | None = None
    restarts: int = 4  # per actor: nodes lost under it before Ray gives it up
    attempts: int = 2  # per pair, on fresh actors, once Ray's own retries are spent

    def check(self) -> None:
        """Fail now, in one line, where the cluster's port is closed or Ray is not installed: Ray's
        own connect retries for minutes on an address that does not answer. The address is
        --ray-address, else RAY_ADDRESS (which ray.init reads itself)."""
        given, name = (self.address, "--ray-address") if self.address else (os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS")
        host, _, port = (given or "").removeprefix("ray://").rpartition(":")
        if host and port.isdigit():
            try:
                socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
            except OSError as e:
                raise ConfigError(f"{name} {redact(given or '')}: cannot connect "
                                  f"({e.strerror or type(e).__name__})") from None
        ensure("ray", "ray", "--executor ray")

    def run(self, dataset: str, config: Config, pairs: Sequence[Pair], on_row: OnRow) -> None:
        if not pairs:
            return
        ray = require("ray", "ray", "--executor ray")
        # Ray prints its notices (a task retried, a node lost) on stdout, which is the command's
        # result (a summary, a table): while Ray runs they go to stderr with the progress bar.
        with contextlib.redirect_stdout(sys.stderr):
            started = self._connect(ray)
            try:
                self._run(ray, dataset, config, pairs, on_row)
            finally:
                if started:
                    ray.shutdown()

    def _connect(self, ray) -> bool:
        """Join or start Ray; False where this process was connected already (a library caller's)."""
        if ray.is_initialized():
            return False
        # ray.init makes SIGTERM exit at once; the caller's handler (the CLI's: stop as Ctrl-C does,
        # say what is stored) is put back.
        main = threading.current_thread() is threading.main_thread()
        previous = signal.getsignal(signal.SIGTERM) if main else None
        try:
            # Workers' and raylets' logs stay in Ray's session directory: stdout is the command's own.
            ray.init(address=self.address, logging_level="warning", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            env = os.environ.get("RAY_ADDRESS")
            where = (f"--ray-address {redact(self.address)}" if self.address else
                     f"RAY_ADDRESS {redact(env)}" if env else "a local Ray")
            raise ConfigError(f"cannot start or reach {where}: {_one_line(str(e))}") from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        return True

    def _run(self, ray, dataset: str, config: Config, pairs: Sequence[Pair], on_row: OnRow) -> None:
        # No CPU reserved: a worker mostly waits on a model server, and a pool that asked for more
        # than the cluster has would wait forever. A pair whose worker is lost is retried for as long
        # as Ray restarts the worker (`restarts` times), so a crash that repeats still ends.
        actor = ray.remote(_Worker).options(num_cpus=0, max_restarts=self.restarts, max_task_retries=-1,
                                            scheduling_strategy="SPREAD")

        def start() -> Any:
            return actor.remote(self.spec, dataset, config)

        groups = together(pairs)  # a group's questions share one read of their document
        pool = [start() for _ in range(min(self.concurrency, len(groups)))]  # idle actors
        running: dict[Any, tuple[Any, int]] = {}  # pending rows -> (their actor, their group's index)
        queue = deque(range(len(groups)))  # indices, so that a lost group is counted and sent again
        tries = [0] * len(groups)
        lost: list[str] = []
        try:
            problems = [p for p in self._get(ray, [a.ready.remote() for a in pool]) if p]
            if problems:
                raise ConfigError(f"a Ray worker could not build the model: {problems[0]}")
            while running or (queue and not lost):
                while pool and queue and not lost:
                    worker, n = pool.pop(), queue.popleft()
                    running[worker.run.remote(groups[n])] = (worker, n)
                (ref,), _ = ray.wait(list(running), num_returns=1)
                worker, n = running.pop(ref)
                try:
                    rows = ray.get(ref)
                except ray.exceptions.RayError as e:  # run_group never raises: the worker itself is gone
                    ray.kill(worker, no_restart=True)
                    pool.append(start())
                    tries[n] += 1
                    if tries[n] < self.attempts:
                        queue.appendleft(n)
                    else:  # what is in flight still lands in the store; then the run stops
                        lost.append(self.spec.scrub(_one_line(str(e))))
                    continue
                pool.append(worker)
                for row in rows:
                    on_row(row)
        finally:
            for worker in pool + [w for w, _ in running.values()]:
                ray.kill(worker, no_restart=True)
        if lost:
            raise ConfigError(f"{len(lost)} groups of pairs were lost with their Ray workers ({lost[0]}); "
                              "the finished ones are stored: run the same command with --resume to go on")

    def _get(self, ray, refs: list) -> list:
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as e:
            raise ConfigError(f"a Ray worker did not start: {self.spec.scrub(_one_line(str(e)))}") from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _one_line(text: str) -> str:
    """Ray's messages run over many lines (tracebacks, advice); the first says what happened."""
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return lines[0] if lines else "no details"
