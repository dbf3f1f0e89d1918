"""The `coa` command: parses, calls the library, prints. Errors are one line and exit code 2."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from dataclasses import asdict
from pathlib import Path

import click
from rich.console import Console

from coa.config import DEFAULT_WINDOW, Config
from coa.documents import read_document
from coa.errors import CoaError, InputError
from coa.progress import ChainPrinter
from coa.task import Kind, Result, Task

stderr = Console(stderr=True, highlight=False)


def run_options(command):
    """Options shared by every command that runs a strategy."""
    options = [
        click.option("--strategy", "-s", default="coa", show_default=True, help="How to process the document (see `coa strategies`)."),
        click.option("--opt", "-o", "opts", multiple=True, metavar="KEY=VALUE", help="A strategy option (repeatable), e.g. order=rtl."),
        click.option("--model", "-m", default="embedded", show_default=True, help="embedded, gguf:PATH, openai:NAME or scripted."),
        click.option("--base-url", envvar="OPENAI_BASE_URL", help="OpenAI-compatible server URL [env: OPENAI_BASE_URL]."),
        click.option("--api-key", envvar="OPENAI_API_KEY", help="API key for the server [env: OPENAI_API_KEY]."),
        click.option("--window", "-w", type=click.IntRange(min=64), default=DEFAULT_WINDOW, show_default=True, help="Context window in tokens (capped at the model's)."),
        click.option("--max-cu-tokens", type=click.IntRange(min=1), help="Longest communication unit [default: 1024, or window/8 if smaller]."),
        click.option("--requirement", help="Replace the task requirement given to the manager."),
        click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True),
        click.option("--seed", type=int, help="Sampling seed; also seeds permutations."),
        click.option("--concurrency", type=click.IntRange(min=1), default=4, show_default=True, help="Independent model calls in flight at once."),
        click.option("--prompts-dir", type=click.Path(file_okay=False, path_type=Path), help="Directory of prompt files overriding the packaged ones."),
        click.option("--json", "as_json", is_flag=True, help="Print the answer and the full trace as one JSON object."),
        click.option("--trace", type=click.Path(dir_okay=False, path_type=Path), help="Also write the trace as JSON to this file."),
        click.option("--verbose", "-v", is_flag=True, help="Print every worker's output as the chain runs."),
    ]
    return functools.reduce(lambda f, option: option(f), reversed(options), command)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chainofagents")
def cli() -> None:
    """Chain-of-Agents: answer, summarize and complete over inputs longer than the model's window."""


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


@cli.command()
def strategies() -> None:
    """List the strategies and their options."""
    from coa.strategies import REGISTRY, get_strategy

    get_strategy("coa")  # loads the built-in strategies
    for name, cls in REGISTRY.items():
        click.echo(f"{name:<15} {cls.description}")
        for field in dataclasses.fields(cls.Options):
            click.echo(f"{'':<17}{field.name}={field.default}")


@cli.command()
def models() -> None:
    """List the model backends and the embedded model's file."""
    from coa.models.llamacpp import describe_embedded
    from coa.models.registry import BACKENDS

    for backend in BACKENDS:
        click.echo(f"{backend.form:<14} {backend.description}")
    click.echo()
    for key, value in describe_embedded().items():
        click.echo(f"embedded {key}: {value}")


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
    with ChainPrinter(stderr, verbose=verbose) as printer:
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


def main() -> None:
    """Run the CLI; any user-facing error becomes one line on stderr and exit code 2."""
    try:
        code = cli.main(prog_name="coa", standalone_mode=False)
    except click.UsageError as e:
        command = e.ctx.command_path if e.ctx else "coa"
        _fail(f"{e.format_message()} (see {command} --help)", 2)
    except click.ClickException as e:
        _fail(e.format_message(), 2)
    except CoaError as e:
        _fail(str(e), 2)
    except (KeyboardInterrupt, click.Abort) as e:
        _fail(str(e) or "interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str, code: int) -> None:
    stderr.print(f"error: {' '.join(message.split())}", markup=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
