"""The strategy interface and its registry. A strategy runs on the kernel (`coa.session`),
takes its `--opt` settings from `options` and its shared pieces from `toolbox`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from coa.config import Config
from coa.models.base import Model
from coa.registry import Registry
from coa.session import Observer, Session, ignore
from coa.strategies.options import NoOptions, Options, parse_options
from coa.strategies.options import Options as BaseOptions
from coa.task import Result, Task


class Strategy:
    """A way to solve a Task with a model. Subclasses set `name`, `description`,
    `Options` (an `Options` model of their `--opt` settings) and implement `solve`, or
    `solve_many` where tasks over one document can share work."""

    name: ClassVar[str]
    description: ClassVar[str]
    Options: ClassVar[type[Options]] = NoOptions
    # The prompt sets (directories under prompts/) the strategy reads besides common/ and tasks.yaml;
    # default: its own name's. A stored result is reused only while these files are unchanged.
    prompt_sets: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        model: Model,
        config: Config = Config(),  # noqa: B008  (frozen: one shared default is safe)
        observer: Observer = ignore,
        options: Mapping[str, Any] | BaseOptions | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.observer = observer
        # Any: each strategy reads its own Options subclass's fields.
        self.options: Any = options if isinstance(options, self.Options) else parse_options(
            self, options.model_dump() if isinstance(options, BaseOptions) else options or {}
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("prompt_sets") and "name" in cls.__dict__:
            cls.prompt_sets = (cls.name,)
        # Each default calls the other: a strategy with neither would recurse for ever on its first run.
        if cls.solve is Strategy.solve and cls.solve_many is Strategy.solve_many:
            raise TypeError(f"strategy {cls.__qualname__} must define solve or solve_many")

    def run(self, task: Task) -> Result:
        return asyncio.run(self.arun(task))

    def run_many(self, tasks: Sequence[Task]) -> list[Result]:
        return asyncio.run(self.arun_many(tasks))

    async def arun(self, task: Task) -> Result:
        return (await self.arun_many([task]))[0]

    async def arun_many(self, tasks: Sequence[Task]) -> list[Result]:
        """A result for each task; tasks that share a document (several questions) may share the reading."""
        runs = [(Session(self.model, self.run_config(), self.observer), task) for task in tasks]
        outcomes = await self.solve_many(runs)
        return [
            session.result(answer, self.name, task, {**self.options.model_dump(), **settings})
            for (session, task), (answer, settings) in zip(runs, outcomes, strict=True)
        ]

    def run_config(self) -> Config:
        """The run's settings, with the strategy's own `window` option where it has one."""
        window = getattr(self.options, "window", None)
        return replace(self.config, window=window) if window else self.config

    async def solve_many(self, runs: list[tuple[Session, Task]]) -> list[tuple[str, dict[str, Any]]]:
        """`solve` for each run in turn; a strategy that can share work across tasks overrides this."""
        outcomes = []
        for session, task in runs:
            session.started = time.perf_counter()  # each run's wall time is its own
            outcomes.append(await self.solve(session, task))
        return outcomes

    async def solve(self, session: Session, task: Task) -> tuple[str, dict[str, Any]]:
        """The raw answer and the settings worth recording."""
        return (await self.solve_many([(session, task)]))[0]


STRATEGIES: Registry[type[Strategy]] = Registry("strategy", "chainofagents.strategies", package="coa.strategies")


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator of the built-in strategies: registers `cls` under its `name`."""
    return STRATEGIES.register(cls.name, cls.description)(cls)


def get_strategy(name: str) -> type[Strategy]:
    return STRATEGIES.get(name)
