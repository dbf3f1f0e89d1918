"""`coa lm-eval -- ARGS`: lm-evaluation-harness's own CLI, with coa registered as the model `coa`."""

from __future__ import annotations

import sys

import click

from coa.cli.common import cli


@cli.command("lm-eval", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def lm_eval_command(args: tuple[str, ...]) -> None:
    """Run lm-evaluation-harness with ARGS (after --), coa registered as --model coa.

    \b
    coa lm-eval -- --model coa --tasks longbench_hotpotqa \\
        --model_args strategy=coa,model=openai:NAME,base_url=URL,window=8192 --output_path out
    """
    from coa.extras import require

    require("lm_eval", "lmeval", "coa lm-eval")  # without the extra: one line naming it
    from coa.lm_eval.__main__ import main

    code = main(list(args))
    if code:
        sys.exit(code)
