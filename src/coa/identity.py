"""Fingerprints of what produces a result, so that a stored result is reused only for the same inputs.

`fingerprint(**parts)` is a SHA-256 over a canonical JSON of any named parts (keys sorted, no
spaces, tuples as lists, paths as text): equal parts give equal fingerprints in any process, on
any machine. `pair_fingerprint` is that of one (example, strategy) pair of an evaluation: the
task, its references and scoring, the strategy with its options, the contents of the prompt files
that strategy reads (its own prompt sets, `common/` and `tasks.yaml`: adding or editing another
strategy's prompts leaves its results standing), and `run_settings` (the model, the run's settings
and limits, every prompt set's digest), which every pair of a run shares and which is computed once
per run. A cache of model calls can key on `fingerprint` of its own
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
        "max_calls": config.max_calls, "max_total_tokens": config.max_total_tokens, "max_seconds": config.max_seconds,
        "prompts_dir": str(config.prompts_dir.resolve()) if config.prompts_dir else None,
        "prompts": prompt_sets(config.prompts_dir),
        # Only where set, so that the results stored before the setting existed keep their fingerprints.
        **({"max_answer_tokens": config.max_answer_tokens} if config.max_answer_tokens is not None else {}),
    }


def pair_fingerprint(example: Example, spec: StrategySpec, settings: Mapping[str, Any]) -> str:
    """The fingerprint of one strategy's result on one example, under `settings` (from `run_settings`)."""
    from coa.strategies import get_strategy

    task = example.task
    reads = {*get_strategy(spec.name).prompt_sets, *SHARED_PROMPTS}
    return fingerprint(
        document=task.document, question=task.query, choices=list(task.choices), kind=str(task.kind),
        requirement=task.requirement, references=example.references, metric=example.metric, meta=example.meta,
        strategy=spec.name, options=spec.options,
        settings={**settings, "prompts": {k: v for k, v in settings["prompts"].items() if k in reads}},
    )


SHARED_PROMPTS = ("common", "tasks.yaml")  # read by every strategy: the shared blocks, each kind's requirement


def prompt_sets(directory: Path | None) -> dict[str, str]:
    """A digest of each prompt set in effect (a top-level directory, such as `coa/`, or file, such
    as `tasks.yaml`): the package's files, each overridden by the file of the same name in
    `directory` (which may add files and sets of its own). Hidden files (an editor's) do not count."""
    files = _files(resources.files("coa") / "prompts")
    if directory is not None:
        files.update(_files(directory))
    return digest_sets(files)


def digest_sets(files: Mapping[str, str]) -> dict[str, str]:
    """Per prompt set, the digest of its files (`files`: each file's digest by its path under prompts/)."""
    sets: dict[str, dict[str, str]] = {}
    for name, digest in files.items():
        sets.setdefault(name.split("/", 1)[0], {})[name] = digest
    return {name: fingerprint(**members) for name, members in sets.items()}


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
