"""Chain-of-Agents: long-context tasks with short-window language models.

    >>> import coa
    >>> result = coa.ask(open("hamlet.txt").read(), "Who kills Polonius?", window=2048)
    >>> result.answer, result.usage
"""

from __future__ import annotations

from coa.config import Config
from coa.errors import CoaError, ConfigError, ContextOverflowError, InputError, ModelError
from coa.models.base import Completion, Model
from coa.models.registry import load_model
from coa.models.scripted import ScriptedModel
from coa.strategies import Strategy, get_strategy
from coa.strategies.chain import ChainOfAgents
from coa.task import Call, Kind, Result, Task, Usage

__all__ = [
    "Call",
    "ChainOfAgents",
    "CoaError",
    "Completion",
    "Config",
    "ConfigError",
    "ContextOverflowError",
    "InputError",
    "Kind",
    "Model",
    "ModelError",
    "Result",
    "ScriptedModel",
    "Strategy",
    "Task",
    "Usage",
    "ask",
    "ask_many",
    "get_strategy",
    "load_model",
    "run",
    "run_many",
    "summarize",
]


def run(
    task: Task, model: Model | str = "embedded", *, strategy: str = "coa", options: dict | None = None, **settings
) -> Result:
    """Solve `task` with a strategy (default: Chain of Agents).

    `options` are the strategy's own (see `coa strategies`); `settings` are `Config`
    fields (window, max_cu_tokens, temperature, seed, concurrency, prompts_dir).
    """
    return run_many([task], model, strategy=strategy, options=options, **settings)[0]


def run_many(
    tasks: list[Task], model: Model | str = "embedded", *, strategy: str = "coa", options: dict | None = None,
    **settings,
) -> list[Result]:
    """Solve each task; tasks over one document (several questions) share one read of it with CoA."""
    config = Config(**settings)
    if isinstance(model, str):
        model = load_model(model, window=config.window)
    return get_strategy(strategy)(model, config, options=options).run_many(tasks)


def ask(document: str, question: str, *, choices=(), model: Model | str = "embedded", **settings) -> Result:
    """Answer `question` about `document` (multiple-choice when `choices` are given)."""
    return ask_many(document, [question], choices=choices, model=model, **settings)[0]


def ask_many(
    document: str, questions: list[str], *, choices=(), model: Model | str = "embedded", **settings
) -> list[Result]:
    """Answer each of `questions` about `document`, reading it once for all of them."""
    kind = Kind.MCQ if choices else Kind.QA
    return run_many([Task(document, q, kind, tuple(choices)) for q in questions], model, **settings)


def summarize(document: str, query: str | None = None, *, model: Model | str = "embedded", **settings) -> Result:
    """Summarize `document`, focused on `query` if given."""
    return run(Task(document, query, Kind.SUMMARIZE), model, **settings)
