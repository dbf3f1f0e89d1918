"""`coa ask`, `coa summarize`, `coa complete`: one document, one strategy."""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
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
from coa.cli.progress import CallPrinter
from coa.config import Config
from coa.documents import read_document
from coa.errors import CoaError, InputError
from coa.task import Call, Kind, Result, Task


def run_options(command):
    """Options shared by every command that runs a strategy on one document."""
    options = [
        click.option("--strategy", "-s", default="coa", show_default=True, help="How to process the document (see `coa strategies`)."),
        click.option("--opt", "-o", "opts", multiple=True, metavar="KEY=VALUE", help="A strategy option (repeatable), e.g. order=rtl."),
        click.option("--requirement", help="Replace the task requirement given to the answering call."),
        click.option("--seed", type=int, help="Sampling seed; also seeds permutations."),
        click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="Independent model calls in flight at once."),
        click.option("--max-calls", type=click.IntRange(min=1), help="Make at most this many model calls (coa answers from what it read by then)."),
        click.option("--max-total-tokens", type=click.IntRange(min=1), help="Spend at most this many prompt + completion tokens (likewise)."),
        max_seconds_option,
        max_answer_tokens_option,
        prompts_dir_option,
        click.option("--json", "as_json", is_flag=True, help="Print the answer and the full trace as one JSON object."),
        click.option("--trace", type=click.Path(dir_okay=False, path_type=Path), help="Also write the trace as JSON to this file."),
        click.option("--verbose", "-v", is_flag=True, help="Print every worker's output as the chain runs."),
    ]
    for option in reversed(options):
        command = option(command)
    return model_options(command)


@cli.command()
@click.argument("file")
@click.argument("question", required=False)
@click.option("--question", "-q", "more", multiple=True, help="A question (repeatable): questions share one read of FILE.")
@click.option("--choices", "-c", multiple=True, help="An option of a multiple-choice question (repeat for each).")
@run_options
def ask(file: str, question: str | None, more: tuple[str, ...], choices: tuple[str, ...], **options) -> None:
    """Answer QUESTION (or each -q QUESTION) about FILE ("-" reads stdin)."""
    questions = [q for q in (question, *more) if q is not None]
    if not questions:
        raise click.UsageError("give a question: coa ask FILE QUESTION, or -q QUESTION (repeatable)")
    kind = Kind.MCQ if choices else Kind.QA
    _run(file, lambda text: [Task(text, q, kind, choices, options["requirement"]) for q in questions], **options)


@cli.command()
@click.argument("file")
@click.option("--query", "-q", help="Focus the summary on this query.")
@run_options
def summarize(file: str, query: str | None, **options) -> None:
    """Summarize FILE ("-" reads stdin)."""
    _run(file, lambda text: [Task(text, query, Kind.SUMMARIZE, requirement=options["requirement"])], **options)


@cli.command()
@click.argument("file")
@run_options
def complete(file: str, **options) -> None:
    """Write the next line of the code in FILE ("-" reads stdin)."""
    _run(file, lambda text: [Task(text, None, Kind.CODE, requirement=options["requirement"])], **options)


def _run(file: str, make_tasks, **settings) -> None:
    with Interrupts() as interrupts:
        try:
            _solve(file, make_tasks, interrupts, **settings)
        except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM
            fail(str(e) or interrupts.what, interrupts.exit_code)


def _solve(file: str, make_tasks, interrupts: Interrupts, *, strategy, opts, model, base_url, api_key, embed_api_key, cache, window,
           max_cu_tokens, requirement, temperature, timeout, seed, concurrency, max_calls, max_total_tokens, max_seconds,
           max_answer_tokens, prompts_dir, as_json, trace, verbose) -> None:
    from coa.models.registry import load_model
    from coa.prompts import task_format
    from coa.strategies import get_strategy
    from coa.strategies.options import parse_options, parse_pairs

    if trace is not None:
        check_writable(trace, "--trace")
    solver = get_strategy(strategy)
    options = parse_options(solver, parse_pairs(opts))  # checked before any work
    document = read_document(file)
    for warning in document.warnings:
        stderr.print(f"warning: {warning}")
    tasks = make_tasks(document.text)
    task_format(tasks[0].kind, prompts_dir)  # a broken tasks.yaml override fails before the model loads
    backend = load_model(model, window=window, base_url=base_url, api_key=api_key, timeout=timeout, cache=cache)
    config = Config(window=window, max_cu_tokens=max_cu_tokens, temperature=temperature, seed=seed,
                    concurrency=concurrency, prompts_dir=prompts_dir, max_calls=max_calls, max_total_tokens=max_total_tokens,
                    max_seconds=max_seconds, max_answer_tokens=max_answer_tokens, embed_api_key=embed_api_key)
    with CallPrinter(stderr, verbose=verbose) as printer:
        try:
            results = solver(backend, config, observer=printer, options=options).run_many(tasks)
        except (CoaError, KeyboardInterrupt) as e:
            # Keep the work done before the failure, which a rerun would pay for again: in --trace, or
            # without one, in a file of its own.
            if printer.calls:
                message = str(e) or interrupts.what
                saved = save_partial(printer.calls, message, trace)
                raise type(e)(f"{message}; the {len(printer.calls)} calls made are in {saved}") from None
            raise
        finally:
            backend.close()
    for warning in dict.fromkeys(w for result in results for w in result.warnings):  # the run's own, once each
        stderr.print(f"warning: {warning}", markup=False)
    for result in results:
        result.warnings.extend(document.warnings)
    _print(results, [t.query for t in tasks], as_json)
    if trace is not None:
        try:
            trace.write_text(_json(results), encoding="utf-8")
        except OSError as e:
            raise InputError(f"--trace {trace}: cannot write ({e.strerror})") from None


def check_writable(path: Path, option: str) -> None:
    """Fail now rather than after the run when `path` cannot be written; leaves no new file behind."""
    try:  # the checks too: in a directory that may not be searched, even asking whether a path exists fails
        if not path.parent.is_dir():
            raise InputError(f"{option} {path}: directory {path.parent} does not exist")
        existed = path.exists()
        with path.open("a", encoding="utf-8"):  # append: an existing file keeps its content until the run ends
            pass
        if not existed:
            path.unlink()
    except OSError as e:
        raise InputError(f"{option} {path}: cannot write ({e.strerror})") from None


def save_partial(calls: list[Call], error: str, trace: Path | None) -> Path:
    """Write the calls made so far to `trace`, or where no --trace was given, to
    coa-partial-TIME-PID.json in the temporary directory (not the current one, which may be a
    repository that a stray file would clutter; the error line says where it went)."""
    data = json.dumps({"error": error, "calls": [asdict(c) for c in calls]}, indent=2, ensure_ascii=False)
    path = trace or Path(tempfile.gettempdir()) / f"coa-partial-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json"
    try:
        path.write_text(data, encoding="utf-8")
    except OSError as e:
        raise InputError(f"{error}; the {len(calls)} calls made could not be saved in {path} ({e.strerror})") from None
    return path


def _json(results: list[Result]) -> str:
    """One result as an object; several (one per question) as a list of them."""
    if len(results) == 1:
        return results[0].to_json()
    return json.dumps([r.to_dict() for r in results], indent=2, ensure_ascii=False)


def _print(results: list[Result], questions: list[str | None], as_json: bool) -> None:
    if as_json:
        click.echo(_json(results))
    elif len(results) == 1:
        click.echo(results[0].answer)
    else:
        click.echo("\n\n".join(f"Q: {q}\nA: {r.answer}" for q, r in zip(questions, results, strict=True)))
    if not as_json:  # the evidence beside the answer, where the strategy kept it; stdout stays the answer alone
        for citation in (c for r in results for c in r.citations):
            click.echo(f"cited (chars {citation.start}-{citation.end}): {citation.text}", err=True)
