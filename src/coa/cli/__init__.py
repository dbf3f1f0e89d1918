"""The `coa` command: parses, calls the library, prints. Errors are one line and exit code 2.

Commands live in submodules: run (ask, summarize, complete), info (strategies, models,
datasets), evaluate (eval, report), batch, serve; what they share is in `common`.
"""

from __future__ import annotations

from coa.cli import batch, evaluate, info, lm_eval, run, serve  # noqa: F401  (each registers its commands on `cli`)
from coa.cli.common import cli, fail, main, stderr

__all__ = ["cli", "fail", "main", "stderr"]
