"""`coa strategies`, `coa models` and `coa datasets`: what is available, plugins included."""

from __future__ import annotations

import click

from coa.cli.common import cli
from coa.errors import CoaError


@cli.command()
def strategies() -> None:
    """List the strategies and their options (type, default, meaning)."""
    from coa.strategies import STRATEGIES
    from coa.strategies.options import option_type

    for entry in STRATEGIES.items():
        click.echo(f"{entry.name:<15} {entry.description}{_origin(entry)}")
        for key, field in entry.obj.Options.model_fields.items():
            setting = f"{key}={_text(field.default)}"
            click.echo(f"{'':<17}{setting:<22} {option_type(field):<20} {field.description or ''}".rstrip())


@cli.command()
def models() -> None:
    """List the model backends and the embedded model's file."""
    from coa.models.llamacpp import describe_embedded
    from coa.models.registry import BACKENDS, form

    for entry in BACKENDS.items():
        click.echo(f"{form(entry.name, entry.obj):<14} {entry.description}{_origin(entry)}")
    click.echo()
    try:
        described = describe_embedded()
    except CoaError as e:  # a core install without the [embedded] extra: say so, list the rest
        click.echo(f"embedded: not available ({e})")
        return
    for key, value in described.items():
        click.echo(f"embedded {key}: {value}")


@cli.command()
def datasets() -> None:
    """List the evaluation datasets (`coa eval --dataset NAME`)."""
    from coa.eval.datasets import DATASETS

    for entry in DATASETS.items():
        click.echo(f"{entry.name:<10} {entry.description}{_origin(entry)}")


def _origin(entry) -> str:
    return f" [plugin: {entry.plugin}]" if entry.plugin else ""


def _text(value: object) -> str:
    """A default as it is written on the command line."""
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if value != "" else '""'
