"""Fingerprints of what produces a result, so that a stored result is reused only for the same inputs.

`fingerprint(**parts)` is a SHA-256 over a canonical JSON of any named parts (keys sorted, no
spaces, tuples as lists, paths as text): equal parts give equal fingerprints in any process, on
any machine. `pair_fingerprint` is that of one (example, strategy) pair of an evaluation: the
task, its references and scoring, the strategy with its options, and `run_settings` (the model,
the run's settings and limits, and the prompt files' contents), which every pair of a run shares
and which is computed once per run. A cache of model calls can key on `fingerprint` of its own
parts (messages, generation settings, model) in the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coa.config import Config
from coa.errors import ConfigError

if TYPE_CHECKING:
    from coa.eval.datasets import Example
    from coa.eval.runner import StrategySpec


def fingerprint(**parts: Any) -> str:
    canonical = json.dumps(parts, sort_keys=True, ensure_ascii=False, separators=(",", ":"), allow_nan=False,
                           default=_plain)
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def run_settings(model: str, config: Config) -> dict[str, Any]:
    """What every pair of a run shares. Secrets (API keys) and what only changes speed (concurrency)
    are left out; the prompts are their files' contents, so that an edited prompt counts."""
    return {
        "model": model, "window": config.window, "max_cu_tokens": config.max_cu_tokens,
        "temperature": config.temperature, "seed": config.seed,
        "max_calls": config.max_calls, "max_total_tokens": config.max_total_tokens,
        "prompts_dir": str(config.prompts_dir.resolve()) if config.prompts_dir else None,
        "prompts": prompts_digest(config.prompts_dir),
    }


def pair_fingerprint(example: Example, spec: StrategySpec, settings: Mapping[str, Any]) -> str:
    """The fingerprint of one strategy's result on one example, under `settings` (from `run_settings`)."""
    task = example.task
    return fingerprint(
        document=task.document, question=task.query, choices=list(task.choices), kind=str(task.kind),
        requirement=task.requirement, references=example.references, metric=example.metric, meta=example.meta,
        strategy=spec.name, options=spec.options, settings=dict(settings),
    )


def prompts_digest(directory: Path | None) -> str:
    """A digest of the prompt files in effect: the package's, each overridden by the file of the same
    name in `directory` (which may add files of its own). Hidden files (an editor's) do not count."""
    files = _files(resources.files("coa") / "prompts")
    if directory is not None:
        files.update(_files(directory))
    return fingerprint(**files)


def _files(root: Traversable | Path, prefix: str = "") -> dict[str, str]:
    """{relative name: SHA-256 of the contents} for the files under `root`."""
    found: dict[str, str] = {}
    entry: Traversable | Path = root
    try:
        for entry in root.iterdir():
            if entry.name.startswith("."):
                continue
            name = f"{prefix}{entry.name}"
            if entry.is_dir():
                found.update(_files(entry, f"{name}/"))
            elif entry.is_file():
                found[name] = hashlib.sha256(entry.read_bytes()).hexdigest()
    except OSError as e:
        raise ConfigError(f"prompts: cannot read {entry} ({e.strerror or e})") from None
    return found


def _plain(value: object) -> object:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")
