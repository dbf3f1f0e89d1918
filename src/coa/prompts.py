"""Prompts are data: YAML files rendered with Jinja2, a missing variable is an error.

Each file holds a `system` text, a `user` template and, for roles that answer,
the default task `requirement` and the generation limit `max_tokens`. A prompts
directory given by the user is searched before the package's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import jinja2
import yaml

from coa.errors import ConfigError
from coa.models.base import Messages

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    user: jinja2.Template
    requirement: str | None = None
    max_tokens: int | None = None

    def render(self, **values: object) -> Messages:
        try:
            user = self.user.render(**values).strip()
        except jinja2.UndefinedError as e:
            raise ConfigError(f"prompt {self.name}: {e.message}") from None
        return [{"role": "system", "content": self.system.strip()}, {"role": "user", "content": user}]


def load_prompt(strategy: str, role: str, kind: str, directory: Path | None = None) -> Prompt:
    """The prompt `<strategy>/<role>-<kind>.yaml`, from `directory` first if given."""
    relative = f"{strategy}/{role}-{kind}.yaml"
    if directory is not None and (directory / relative).is_file():
        return _parse(relative, (directory / relative).read_text(encoding="utf-8"))
    return _packaged(relative)


@lru_cache(maxsize=None)
def _packaged(relative: str) -> Prompt:
    path = resources.files("coa").joinpath("prompts", *relative.split("/"))
    if not path.is_file():
        raise ConfigError(f"no prompt file {relative}")
    return _parse(relative, path.read_text(encoding="utf-8"))


def _parse(name: str, text: str) -> Prompt:
    try:
        data = yaml.safe_load(text)
        user = _ENV.from_string(data["user"])
    except (yaml.YAMLError, jinja2.TemplateSyntaxError, KeyError, TypeError) as e:
        raise ConfigError(f"prompt {name} is malformed: {e}") from None
    return Prompt(
        name=name,
        system=data.get("system", ""),
        user=user,
        requirement=data.get("requirement"),
        max_tokens=data.get("max_tokens"),
    )
