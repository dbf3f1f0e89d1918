"""Prompts are data: YAML files rendered with Jinja2, a missing variable is an error.

`<strategy>/<role>.yaml` (or `<role>-<kind>.yaml` where a role words each task kind
differently) holds a `system` text and a `user` template. `tasks.yaml` holds, per
task kind, the requirement given to whichever call writes the final answer and that
call's generation limit, so every strategy answers in the same format and length.
A prompts directory given by the user is searched before the package's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import jinja2
import yaml

from coa.errors import ConfigError
from coa.fence import fence
from coa.models.base import Messages

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
_ENV.filters["fence"] = fence  # {{ chunk | fence }}: text from outside between tags it cannot forge


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    user: jinja2.Template

    def render(self, **values: object) -> Messages:
        try:
            user = self.user.render(**values).strip()
        except jinja2.UndefinedError as e:
            raise ConfigError(f"prompt {self.name}: {e.message}") from None
        return [{"role": "system", "content": self.system.strip()}, {"role": "user", "content": user}]


@dataclass(frozen=True)
class TaskFormat:
    requirement: str  # what the final answer must look like
    max_tokens: int  # generation limit of the call that writes it


def load_prompt(strategy: str, role: str, kind: str | None = None, directory: Path | None = None) -> Prompt:
    """`<strategy>/<role>-<kind>.yaml` if it exists, else `<strategy>/<role>.yaml`."""
    names = ([f"{strategy}/{role}-{kind}.yaml"] if kind else []) + [f"{strategy}/{role}.yaml"]
    for name in names:
        text = _read(name, directory)
        if text is not None:
            try:
                data = yaml.safe_load(text)
                system, user = data.get("system", ""), data["user"]
                if not (isinstance(system, str) and isinstance(user, str)):
                    raise TypeError("system and user must be texts")
                return Prompt(name=name, system=system, user=_ENV.from_string(user))
            except (yaml.YAMLError, jinja2.TemplateSyntaxError, KeyError, TypeError, AttributeError) as e:
                raise ConfigError(f"prompt {name} is malformed: {e}") from None
    raise ConfigError(f"no prompt file {names[0]}")


def task_format(kind: str, directory: Path | None = None) -> TaskFormat:
    try:
        entry = yaml.safe_load(_read("tasks.yaml", directory) or "")[str(kind)]
        requirement, max_tokens = entry["requirement"], entry["max_tokens"]
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise ConfigError(f"tasks.yaml has no usable entry for {kind}: {e}") from None
    if not isinstance(requirement, str):
        raise ConfigError(f"tasks.yaml, {kind}: requirement must be a text, not {requirement!r}")
    try:
        max_tokens = int(max_tokens)
    except (TypeError, ValueError):
        max_tokens = 0
    if max_tokens <= 0:
        raise ConfigError(f"tasks.yaml, {kind}: max_tokens must be a positive whole number, not {entry['max_tokens']!r}")
    return TaskFormat(requirement=requirement.strip(), max_tokens=max_tokens)


def _read(name: str, directory: Path | None) -> str | None:
    path = directory / name if directory is not None else None
    if path is not None and path.is_file():
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not UTF-8 text") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    return _packaged(name)


@cache
def _packaged(name: str) -> str | None:
    path = resources.files("coa").joinpath("prompts", *name.split("/"))
    return path.read_text(encoding="utf-8") if path.is_file() else None
