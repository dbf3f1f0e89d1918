"""`coa strategies` and `coa models`: what is available."""

from __future__ import annotations

import dataclasses

import click

from coa.cli import cli


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


@cli.command()
def datasets() -> None:
    """List the evaluation datasets (`coa eval --dataset NAME`)."""
    from coa.eval.datasets import DATASETS, load_builtin

    load_builtin()
    for name, (_, description) in DATASETS.items():
        click.echo(f"{name:<10} {description}")
