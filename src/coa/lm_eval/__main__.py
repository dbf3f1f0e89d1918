"""`python -m coa.lm_eval ARGS`: register the `coa` model, then run lm-eval's CLI with ARGS.

Before lm-eval parses ARGS, `api_key=...` is taken out of --model_args (lm-eval logs its model
args and writes them into its results JSON), and where --output_path is given and the args name
no usage_path, coa's per-request calls and tokens are set to go to `coa-usage.jsonl` there.
A coa error (a bad model arg, a window too small) is one line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from coa.errors import CoaError
from coa.extras import require

USAGE_FILE = "coa-usage.jsonl"
TASK_ERRORS = ("Tasks not found",)  # lm-eval's ValueError for a --tasks name it does not know


def hide_secrets(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """ARGS without any `api_key=` in --model_args/-a (as `k=v,k2=v2` or `k=v k2=v2`), and what was
    taken out."""
    hidden: dict[str, str] = {}
    out: list[str] = []
    in_model_args = False
    for arg in args:
        if arg in ("--model_args", "-a"):
            in_model_args = True
            out.append(arg)
            continue
        # The value in the same argument: --model_args=V, -a=V or -aV, as argparse takes them.
        flag, inline = next(((f, arg[len(f):]) for f in ("--model_args=", "-a=", "-a") if arg.startswith(f)), ("", ""))
        if flag and not arg.startswith("--") or flag == "--model_args=":
            out.append(flag + _drop_key(inline, hidden))
            in_model_args = False
            continue
        if arg.startswith("-"):
            in_model_args = False
        if in_model_args:
            kept = _drop_key(arg, hidden)
            if kept:
                out.append(kept)
            continue
        out.append(arg)
    return out, hidden


def _drop_key(text: str, hidden: dict[str, str]) -> str:
    kept = []
    for pair in text.split(","):
        key, eq, value = pair.partition("=")
        if eq and key.strip() == "api_key":
            hidden["api_key"] = value
        elif pair:
            kept.append(pair)
    return ",".join(kept)


def usage_default(args: list[str]) -> str | None:
    """`coa-usage.jsonl` in the directory lm-eval writes its results to, unless the args name a usage_path."""
    if any("usage_path=" in a for a in args):
        return None
    output = None
    for i, arg in enumerate(args):
        if arg in ("--output_path", "-o") and i + 1 < len(args):
            output = args[i + 1]
        elif arg.startswith("--output_path="):
            output = arg.partition("=")[2]
    if not output:
        return None
    path = Path(output)
    return str((path.parent if path.suffix == ".json" else path) / USAGE_FILE)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        require("lm_eval", "lmeval", "coa lm-eval")
        from lm_eval.__main__ import cli_evaluate

        from coa.lm_eval import model

        args, hidden = hide_secrets(args)
        model.HIDDEN.clear()
        model.HIDDEN.update(hidden)
        if (usage := usage_default(args)) is not None:
            model.HIDDEN["usage_path"] = usage
        # lm-eval logs INFO lines to stderr; unless asked for, coa keeps to warnings so its errors stay one line.
        os.environ.setdefault("LMEVAL_LOG_LEVEL", "WARNING")
        saved = sys.argv
        sys.argv = ["lm-eval", *args]
        try:
            cli_evaluate()
        finally:
            sys.argv = saved
    except CoaError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except ValueError as e:
        if not str(e).startswith(TASK_ERRORS):
            raise
        print(f"error: lm-eval: {' '.join(str(e).split())}", file=sys.stderr)  # an unknown --tasks name
        return 2
    except SystemExit as e:  # argparse's --help and usage errors
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
