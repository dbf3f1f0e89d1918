"""`coa ask`, `coa summarize`, `coa complete`: one document, one strategy."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import click

from coa.cli import cli, model_options, stderr
from coa.config import Config
from coa.documents import read_document
from coa.errors import CoaError, InputError
from coa.progress import CallPrinter
from coa.task import Kind, Result, Task


def run_options(command):
    """Options shared by every command that runs a strategy on one document."""
    options = [
        click.option("--strategy", "-s", default="coa", show_default=True, help="How to process the document (see `coa strategies`)."),
        click.option("--opt", "-o", "opts", multiple=True, metavar="KEY=VALUE", help="A strategy option (repeatable), e.g. order=rtl."),
        click.option("--requirement", help="Replace the task requirement given to the answering call."),
        click.option("--seed", type=int, help="Sampling seed; also seeds permutations."),
        click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="Independent model calls in flight at once."),
        click.option("--prompts-dir", type=click.Path(file_okay=False, path_type=Path), help="Directory of prompt files overriding the packaged ones."),
        click.option("--json", "as_json", is_flag=True, help="Print the answer and the full trace as one JSON object."),
        click.option("--trace", type=click.Path(dir_okay=False, path_type=Path), help="Also write the trace as JSON to this file."),
        click.option("--verbose", "-v", is_flag=True, help="Print every worker's output as the chain runs."),
    ]
    for option in reversed(options):
        command = option(command)
    return model_options(command)


@cli.command()
@click.argument("file")
@click.argument("question")
@click.option("--choices", "-c", multiple=True, help="An option of a multiple-choice question (repeat for each).")
@run_options
def ask(file: str, question: str, choices: tuple[str, ...], **options) -> None:
    """Answer QUESTION about FILE ("-" reads stdin)."""
    kind = Kind.MCQ if choices else Kind.QA
    _run(file, lambda text: Task(text, question, kind, choices, options["requirement"]), **options)


@cli.command()
@click.argument("file")
@click.option("--query", "-q", help="Focus the summary on this query.")
@run_options
def summarize(file: str, query: str | None, **options) -> None:
    """Summarize FILE ("-" reads stdin)."""
    _run(file, lambda text: Task(text, query, Kind.SUMMARIZE, requirement=options["requirement"]), **options)


@cli.command()
@click.argument("file")
@run_options
def complete(file: str, **options) -> None:
    """Write the next line of the code in FILE ("-" reads stdin)."""
    _run(file, lambda text: Task(text, None, Kind.CODE, requirement=options["requirement"]), **options)


def _run(file: str, make_task, *, strategy, opts, model, base_url, api_key, window, max_cu_tokens, requirement,
         temperature, seed, concurrency, prompts_dir, as_json, trace, verbose) -> None:
    from coa.models.registry import load_model
    from coa.strategies import get_strategy
    from coa.strategies.base import parse_options, parse_pairs

    if trace is not None and not trace.parent.is_dir():
        raise InputError(f"--trace {trace}: directory {trace.parent} does not exist")
    if prompts_dir is not None and not prompts_dir.is_dir():
        raise InputError(f"--prompts-dir {prompts_dir}: no such directory")
    solver = get_strategy(strategy)
    options = parse_options(solver, parse_pairs(opts))  # checked before any work
    document = read_document(file)
    for warning in document.warnings:
        stderr.print(f"warning: {warning}")
    task = make_task(document.text)
    backend = load_model(model, window=window, base_url=base_url, api_key=api_key)
    config = Config(window=window, max_cu_tokens=max_cu_tokens, temperature=temperature, seed=seed,
                    concurrency=concurrency, prompts_dir=prompts_dir)
    with CallPrinter(stderr, verbose=verbose) as printer:
        try:
            result = solver(backend, config, observer=printer, options=options).run(task)
        except (CoaError, KeyboardInterrupt) as e:
            if trace is not None and printer.calls:  # keep the work done before the failure
                partial = {"error": str(e) or type(e).__name__, "calls": [asdict(c) for c in printer.calls]}
                trace.write_text(json.dumps(partial, indent=2, ensure_ascii=False), encoding="utf-8")
                raise type(e)(f"{e} (the {len(printer.calls)} calls made are in {trace})") from None
            raise
    result.warnings.extend(document.warnings)
    _print(result, as_json)
    if trace is not None:
        trace.write_text(result.to_json(), encoding="utf-8")


def _print(result: Result, as_json: bool) -> None:
    if as_json:
        click.echo(result.to_json())
    else:
        click.echo(result.answer)
