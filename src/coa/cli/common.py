"""What the `coa` commands share: the click group, the model and prompt options, the one-line
error, and Ctrl-C/SIGTERM handling. The command modules import this; `coa.cli` imports them."""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path

import click
from rich.console import Console

from coa.config import DEFAULT_WINDOW
from coa.errors import CoaError, InputError

stderr = Console(stderr=True, highlight=False)


def model_options(command, *, key_option: str = "--api-key"):
    """Options that choose and configure the model; `key_option` names the backend's key option
    (`coa serve` has its own --api-key)."""
    options = [
        click.option("--model", "-m", default="embedded", show_default=True, help="embedded, gguf:PATH, openai:NAME or scripted."),
        click.option("--base-url", envvar="OPENAI_BASE_URL", help="OpenAI-compatible server URL [env: OPENAI_BASE_URL]."),
        click.option(key_option, "api_key", envvar="OPENAI_API_KEY", help="API key for the model server [env: OPENAI_API_KEY]."),
        click.option("--embed-api-key", envvar="COA_EMBED_API_KEY",
                     help="API key for the embedding server that rag's embed_url names [env: COA_EMBED_API_KEY]."),
        click.option("--window", "-w", type=click.IntRange(min=64), default=DEFAULT_WINDOW, show_default=True, help="Context window in tokens (capped at the model's)."),
        click.option("--max-cu-tokens", type=click.IntRange(min=1), help="Longest communication unit [default: 1024, or window/8 if smaller]."),
        click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, callback=_finite),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=120.0, show_default=True,
                     help="Seconds one call to a model server may take, retries included."),
        click.option("--cache", type=click.Path(dir_okay=False, path_type=Path), envvar="COA_CACHE",
                     help="SQLite file of model responses: a call made before is answered from it [env: COA_CACHE]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def prompts_dir_option(command):
    """--prompts-dir, refused in one line when it names no directory."""
    return click.option("--prompts-dir", type=click.Path(file_okay=False, path_type=Path), callback=_directory,
                        help="Directory of prompt files overriding the packaged ones.")(command)


def max_answer_tokens_option(command, *, who: str = "The answer"):
    """--max-answer-tokens: the final answer's generation limit, in place of its kind's in tasks.yaml."""
    from coa.budget import MIN_ANSWER_TOKENS

    return click.option("--max-answer-tokens", type=click.IntRange(min=MIN_ANSWER_TOKENS),
                        help=f"{who} may be at most this many tokens (default: its kind's max_tokens in the prompt "
                        "files; still within what the window leaves).")(command)


def max_seconds_option(command, *, who: str = "Stop", after: str = ""):
    """--max-seconds: a wall-clock budget per run, checked before each call."""
    return click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), callback=_finite_or_none,
                        help=f"{who} before any call that would begin after this many seconds (coa answers from what "
                        f"it read by then; its answering call may run past){after}.")(command)


def _finite_or_none(ctx, param, value: float | None) -> float | None:
    return None if value is None else _finite(ctx, param, value)


def _directory(ctx, param, value: Path | None) -> Path | None:
    if value is not None and not value.is_dir():
        raise InputError(f"{param.opts[0]} {value}: no such directory")
    return value


def _finite(ctx, param, value: float) -> float:
    # FloatRange lets nan through (every comparison with nan is false), and inf is in range.
    if not math.isfinite(value):
        raise click.BadParameter(f"must be a finite number, not {value}")
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="chainofagents")
def cli() -> None:
    """Chain-of-Agents: answer, summarize and complete over inputs longer than the model's window."""


def main() -> None:
    """Run the CLI; any user-facing error becomes one line on stderr and exit code 2."""
    try:
        code = cli.main(prog_name="coa", standalone_mode=False)
    except click.UsageError as e:
        command = e.ctx.command_path if e.ctx else "coa"
        fail(f"{e.format_message()} (see {command} --help)", 2)
    except click.ClickException as e:
        fail(e.format_message(), 2)
    except CoaError as e:
        fail(str(e), 2)
    except (KeyboardInterrupt, click.Abort) as e:
        fail(str(e) or "interrupted", 130)
    sys.exit(code if isinstance(code, int) else 0)


def fail(message: str, code: int) -> None:
    """The CLI's one error line on stderr, then exit with `code`."""
    stderr.print(f"error: {' '.join(message.split())}", markup=False, soft_wrap=True)
    sys.exit(code)


class Interrupts:
    """While in use, SIGTERM is handled as Ctrl-C is, by whatever handles SIGINT at that moment
    (inside `asyncio.run`, its runner cancels the main task and raises KeyboardInterrupt once the
    tasks have unwound), and `signal` records which of the two came."""

    def __init__(self) -> None:
        self.signal = signal.SIGINT

    def __enter__(self) -> Interrupts:
        self._previous = signal.signal(signal.SIGTERM, self._terminate)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)

    def _terminate(self, signum: int, frame) -> None:
        self.signal = signal.SIGTERM
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):  # SIGINT ignored or left to the system: stop all the same
            raise KeyboardInterrupt
        handler(signal.SIGINT, frame)

    @property
    def what(self) -> str:
        return "terminated (SIGTERM)" if self.signal == signal.SIGTERM else "interrupted"

    @property
    def exit_code(self) -> int:
        return 128 + self.signal  # the shell's convention for a process ended by a signal
