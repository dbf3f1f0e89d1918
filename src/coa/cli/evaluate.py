"""`coa eval` and `coa report`: run strategies over a dataset, then read the results."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import click

from coa.cli.common import (
    Interrupts,
    cli,
    fail,
    max_answer_tokens_option,
    max_seconds_option,
    model_options,
    prompts_dir_option,
    stderr,
)
from coa.config import Config
from coa.errors import CoaError, ConfigError, InputError


def executor_options(command):
    """Options that choose where the pairs run: this process, or a Ray cluster."""
    options = [
        click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                     help="Run the pairs in this process, or on Ray workers that each build the model (the [ray] extra)."),
        click.option("--ray-address", metavar="ADDR",
                     help="The Ray cluster to join, e.g. HEAD:6379 [default: RAY_ADDRESS, else a Ray started for the run]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def run_limit_options(command):
    """Settings of each pair's run: its limits, the answer requirement and the prompt files."""
    options = [
        click.option("--requirement", help="Replace each task's answer requirement (as `coa ask --requirement`)."),
        click.option("--max-calls", type=click.IntRange(min=1),
                     help="Each pair makes at most this many model calls (coa answers from what it read by then)."),
        click.option("--max-total-tokens", type=click.IntRange(min=1),
                     help="Each pair spends at most this many prompt + completion tokens (likewise)."),
        partial(max_seconds_option, who="Each pair stops"),
        partial(max_answer_tokens_option, who="Each answer"),
        prompts_dir_option,
    ]
    for option in reversed(options):
        command = option(command)
    return command


def make_executor(executor: str, ray_address: str | None, concurrency: int, spec, local_model=None):
    """The executor the options name, for the model of `spec`; the local one runs on `local_model`
    (built from the spec if not given). A missing Ray is one line now, before any work."""
    from coa.eval.executors import LocalExecutor, RayExecutor

    if executor == "local":
        if ray_address:
            raise ConfigError("--ray-address goes with --executor ray")
        return LocalExecutor(local_model or spec.load(), concurrency)
    ray = RayExecutor(spec, concurrency, ray_address)
    ray.check()
    return ray


@cli.command("eval")
@click.option("--dataset", "-d", required=True, help="niah, hotpotqa, qmsum, leval:TASK, code, jsonl:PATH, longbench:PATH.")
@click.option("--strategies", "-s", default="coa,vanilla,rag", show_default=True,
              help="Comma-separated; options after colons, e.g. coa,coa:order=rtl,vanilla.")
@model_options
@run_limit_options
@click.option("--limit", "-n", type=click.IntRange(min=1), help="Use N examples, spread over the documents.")
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=1, show_default=True, help="Pairs in flight at once.")
@click.option("--out", "-o", "out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Run directory.")
@click.option("--resume", is_flag=True,
              help="Continue a run in --out: finished pairs are skipped, pairs whose example or settings changed run again.")
@click.option("--retry-errors", is_flag=True, help="With --resume, run failed pairs again.")
@click.option("--rerun", default="", metavar="STRATEGIES",
              help="Comma-separated strategies of --strategies whose stored pairs are dropped and run again, "
                   "e.g. after changing them (implies --resume).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the dataset generators and sampling.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), envvar="COA_DATA_DIR",
              help="Where the datasets live [env: COA_DATA_DIR; default: ~/.local/share/chainofagents/data].")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="A dataset option, e.g. length=6000 (repeatable).")
@executor_options
def evaluate(dataset, strategies, model, base_url, api_key, embed_api_key, cache, window, max_cu_tokens, temperature, timeout,
             requirement, max_calls, max_total_tokens, max_seconds, max_answer_tokens, prompts_dir, limit, concurrency, out, resume, retry_errors, rerun, seed, data_dir,
             opts, executor, ray_address) -> None:
    """Run strategies over a dataset; results stream into OUT/results.sqlite."""
    from coa.eval.executors import ModelSpec
    from coa.eval.report import markdown
    from coa.eval.runner import Evaluation
    from coa.eval.runner import evaluate as run
    from coa.strategies.options import parse_pairs

    config = Config(window=window, max_cu_tokens=max_cu_tokens, temperature=temperature, seed=seed, max_calls=max_calls,
                    max_total_tokens=max_total_tokens, max_seconds=max_seconds, max_answer_tokens=max_answer_tokens,
                    prompts_dir=prompts_dir, embed_api_key=embed_api_key)
    evaluation = Evaluation(
        dataset=dataset, strategies=comma_list(strategies), model=model, config=config, requirement=requirement,
        limit=limit, concurrency=concurrency, out=out, resume=resume, retry_errors=retry_errors,
        rerun=comma_list(rerun), data_dir=data_dir, options=parse_pairs(opts), base_url=base_url, api_key=api_key,
    )
    with Interrupts() as interrupts, store_errors(out):
        try:
            # The backend loads once, at the largest window a strategy asks for (vanilla:window=N, the full context).
            spec = ModelSpec(model, window=largest_window(window, evaluation.strategies), base_url=base_url,
                             api_key=api_key, timeout=timeout, cache=cache)
            backend = spec.load()  # here too with Ray: it measures the lengths of generated examples
            runner = make_executor(executor, ray_address, concurrency, spec, backend)
            outcome = run(evaluation, backend, executor=runner, console=stderr)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM; finished pairs are committed one by one: say how to go on
            fail(f"{interrupts.what}; {left_in(out, dataset)}", interrupts.exit_code)
        click.echo(markdown(outcome.store))
    stderr.print(f"{outcome.summary()}; results in {outcome.store.path}", markup=False, soft_wrap=True)
    if outcome.all_failed:  # a run that produced no result is not a success, though its errors are kept
        fail(f"all {outcome.ran} pairs failed; first error: {outcome.errors[0]}", 1)


def largest_window(window: int, strategies: list[str]) -> int:
    """The run's window, or a larger one that a strategy's own `window` option asks for."""
    from coa.eval.runner import StrategySpec

    asked = [StrategySpec.parse(s).options.get("window", "") for s in strategies]
    return max([window, *(int(w) for w in asked if w.isdigit())])


def left_in(out: Path, dataset: str) -> str:
    """What an interrupted run left in `out`, and how to go on."""
    from coa.eval.store import Store

    try:
        store = Store(out, read_only=True)
        if store.config(dataset) is not None:
            return (f"the {len(store.finished(dataset))} finished pairs are kept in {store.path}; "
                    "run the same command with --resume to go on")
    except (CoaError, sqlite3.Error):
        pass
    return "no results were stored"


@contextmanager
def store_errors(out: Path) -> Iterator[None]:
    """A results file that breaks while it is read or written (corrupt, locked) as one line."""
    try:
        yield
    except sqlite3.DatabaseError as e:
        raise InputError(f"{out / 'results.sqlite'}: {e}") from None


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the figures as a JSON list instead of tables.")
@click.option("--html", "as_html", is_flag=True, help="Also write RUN_DIR/report.html with plots and a trace browser.")
def report(run_dir: Path, as_json: bool, as_html: bool) -> None:
    """Tables (and RUN_DIR/report.md), plots (PNG) and optionally an HTML page for a run.

    The store is only read, so a run directory that cannot be written still gets its tables
    on stdout; the files that could not be written are then one error line (exit code 2)."""
    from coa.eval.report import html_page, markdown, plots, summary
    from coa.eval.store import Store

    with store_errors(run_dir):
        store = Store(run_dir, read_only=True)
        text = markdown(store)
        figures = summary(store) if as_json else None
        unwritable: OSError | None = None
        try:
            (run_dir / "report.md").write_text(text, encoding="utf-8")
            images = plots(store, run_dir)
            if as_html:
                (run_dir / "report.html").write_text(html_page(store, images), encoding="utf-8")
        except OSError as e:
            unwritable = e
    click.echo(json.dumps(figures, indent=2) if as_json else text)
    if unwritable is not None:
        raise InputError(f"cannot write the report files in {run_dir} ({unwritable.strerror}); "
                         f"the {'figures' if as_json else 'tables'} are on stdout only")
    if not as_json:
        written = ["report.md", *(p.name for p in images)] + (["report.html"] if as_html else [])
        stderr.print(f"wrote {', '.join(written)} in {run_dir}")
