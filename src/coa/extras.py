"""Optional extras: what lies outside the core install, and the one line that says how to get it.

The core (`pip install chainofagents`) runs every strategy against any OpenAI-compatible
server. The embedded model (llama.cpp, which compiles from source) and the evaluation
extras (ROUGE, plots) are opt-in, so modules that need them import them late, through
`require`, and a missing one becomes a `ConfigError`: one line and exit code 2 in the CLI.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from coa.errors import ConfigError


def install_hint(extra: str) -> str:
    return f"pip install 'chainofagents[{extra}]'"


def missing(what: str, extra: str, cause: str = "") -> ConfigError:
    """The error for `what` needing `extra`; `cause` says more where the extra is half there."""
    return ConfigError(f"{what} needs the [{extra}] extra: {install_hint(extra)}" + (f" ({cause})" if cause else ""))


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import `module`, or raise the one line that names the extra which installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        # A package that is there but lacks one of its own dependencies is reported with that name.
        top = module.partition(".")[0]
        cause = "" if (e.name or top).partition(".")[0] == top else str(e)
        raise missing(what, extra, cause) from None


def ensure(module: str, extra: str, what: str) -> None:
    """Like `require`, without importing (`module` is a top-level name): for packages whose import
    is slow or has side effects."""
    if importlib.util.find_spec(module) is None:
        raise missing(what, extra)
