"""`coa eval`: every (example, strategy) pair once, results streamed into the run's store."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from coa.config import Config
from coa.errors import CoaError, ConfigError
from coa.eval import metrics
from coa.eval.datasets import Example, load
from coa.eval.store import Store
from coa.models.base import Model
from coa.strategies import get_strategy
from coa.strategies.base import parse_options, parse_pairs

# Settings that must match for a resumed run to extend the same experiment.
FIXED = ("model", "window", "max_cu_tokens", "temperature", "seed", "options")


@dataclass(frozen=True)
class StrategySpec:
    """A strategy with options, written "coa" or "coa:order=rtl:manager=false"."""

    label: str
    name: str
    options: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> StrategySpec:
        name, *pairs = text.strip().split(":")
        options = parse_pairs(pairs)
        parse_options(get_strategy(name), options)  # checked now, not after hours of running
        return cls(text.strip(), name, options)


@dataclass
class Evaluation:
    dataset: str
    strategies: list[str]
    model: str = "embedded"
    window: int = 8192
    max_cu_tokens: int | None = None
    temperature: float = 0.0
    seed: int = 0
    limit: int | None = None
    concurrency: int = 1  # pairs in flight at once
    out: Path = Path("runs/latest")
    resume: bool = False
    retry_errors: bool = False
    rerun: list[str] = field(default_factory=list)  # strategies whose stored pairs are dropped first (implies resume)
    data_dir: Path | None = None
    options: dict[str, str] = field(default_factory=dict)  # the dataset's options
    base_url: str | None = None
    api_key: str | None = None


def run_config(evaluation: Evaluation) -> dict[str, Any]:
    return {
        "dataset": evaluation.dataset,
        "model": evaluation.model,
        "window": evaluation.window,
        "max_cu_tokens": evaluation.max_cu_tokens,
        "temperature": evaluation.temperature,
        "seed": evaluation.seed,
        "options": evaluation.options,
        "limit": evaluation.limit,
        "strategies": evaluation.strategies,
        "version": metadata.version("chainofagents"),
        "git": git_hash(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def git_hash() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@dataclass
class Outcome:
    """What one `evaluate` call did: the store with every result of the run, and the pairs it ran."""

    store: Store
    ran: int = 0
    errors: list[str] = field(default_factory=list)  # of the pairs it ran, in the dataset's order

    @property
    def all_failed(self) -> bool:
        return self.ran > 0 and len(self.errors) == self.ran


def evaluate(evaluation: Evaluation, model: Model, *, console: Console | None = None) -> Outcome:
    """Run every pending pair. Settings are stored once the dataset has loaded, so a command
    that fails before then leaves nothing that the corrected command would trip over."""
    specs = [StrategySpec.parse(s) for s in evaluation.strategies]
    if not specs:
        raise ConfigError("give at least one strategy")
    rerun = {s.strip() for s in evaluation.rerun}
    if unknown := rerun - {s.label for s in specs}:
        raise ConfigError(f"--rerun names {', '.join(sorted(unknown))}, which --strategies does not")
    resuming = evaluation.resume or bool(rerun)
    flag = "--resume" if evaluation.resume else "--rerun"
    if resuming and not (evaluation.out / Store.FILE).is_file():
        raise ConfigError(f"{flag}: {evaluation.out} holds no run to resume (leave out {flag} to start one)")
    store = Store(evaluation.out)
    config = run_config(evaluation)
    previous = store.config(evaluation.dataset)
    if previous is not None and not resuming and store.finished(evaluation.dataset):
        raise ConfigError(f"{evaluation.out} already holds results for {evaluation.dataset}; use --resume or another --out")
    if previous is None and resuming:
        raise ConfigError(f"{flag}: {evaluation.out} holds no run of {evaluation.dataset} to resume "
                          f"(leave out {flag} to start one)")
    if previous is not None and resuming:
        changed = [k for k in FIXED if previous.get(k) != config[k]]
        if changed:
            raise ConfigError(f"cannot resume {evaluation.out}: {', '.join(changed)} differ from the stored run")
        config["strategies"] = list(dict.fromkeys(previous["strategies"] + config["strategies"]))
        config["started"] = previous["started"]
        config["git"] = ", ".join(dict.fromkeys(h for h in [*(previous.get("git") or "").split(", "), config["git"]] if h))
    examples = load(evaluation.dataset, data_dir=evaluation.data_dir, options=evaluation.options,
                    seed=evaluation.seed, count_tokens=model.count_tokens, limit=evaluation.limit)
    store.set_config(evaluation.dataset, config)  # only once the data loaded
    store.forget(evaluation.dataset, rerun)  # likewise: a bad --data-dir drops nothing
    done = store.finished(evaluation.dataset, errors=not evaluation.retry_errors)
    pending = [(i, e, s) for i, e in enumerate(examples) for s in specs if (e.id, s.label) not in done]
    run_settings = Config(window=evaluation.window, max_cu_tokens=evaluation.max_cu_tokens,
                          temperature=evaluation.temperature, seed=evaluation.seed)
    rows = asyncio.run(_run(pending, evaluation, model, run_settings, store, console or Console(stderr=True)))
    return Outcome(store, len(rows), [r["error"] for r in rows if r["error"] is not None])


async def _run(pending, evaluation: Evaluation, model: Model, config: Config, store: Store,
               console: Console) -> list[dict]:
    slots = asyncio.Semaphore(max(1, evaluation.concurrency))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task(f"{evaluation.dataset}", total=len(pending))

        async def one(position: int, example: Example, spec: StrategySpec) -> dict:
            async with slots:
                row = await run_pair(evaluation.dataset, position, example, spec, model, config)
                store.save(row)
            progress.advance(bar)
            return row

        return list(await asyncio.gather(*(one(*pair) for pair in pending)))


async def run_pair(dataset: str, position: int, example: Example, spec: StrategySpec, model: Model, config: Config) -> dict:
    """One strategy on one example, as a results row; a failure is recorded, not raised."""
    row: dict[str, Any] = {
        "dataset": dataset, "example": example.id, "strategy": spec.label, "position": position,
        "refs": example.references, "metric": example.metric, "meta": example.meta, "document_tokens": None,
        "prediction": None, "score": None, "calls": None, "prompt_tokens": None, "completion_tokens": None,
        "seconds": None, "trace": None, "error": None,
    }
    started = time.perf_counter()
    try:
        row["document_tokens"] = example.meta.get("tokens") or model.count_tokens(example.task.document)
        strategy = get_strategy(spec.name)(model, config, options=spec.options)
        result = await strategy.arun(example.task)
    except CoaError as e:
        return {**row, "error": str(e), "seconds": time.perf_counter() - started}
    except Exception as e:  # a bug or a backend failure must not end a long run
        return {**row, "error": f"{type(e).__name__}: {e}", "seconds": time.perf_counter() - started}
    row.update(prediction=result.answer, seconds=time.perf_counter() - started)
    try:  # the answer is kept even where accounting or scoring fails
        usage = result.usage
        row.update(trace=result.to_dict(), calls=usage.calls, prompt_tokens=usage.prompt_tokens,
                   completion_tokens=usage.completion_tokens, seconds=usage.seconds)
        context = {"choices": len(example.task.choices) or 4, "all_classes": example.meta.get("all_classes", [])}
        row["score"] = metrics.score(example.metric, result.answer, example.references, **context)
    except Exception as e:
        row["error"] = f"scoring failed: {type(e).__name__}: {e}"
    return row
