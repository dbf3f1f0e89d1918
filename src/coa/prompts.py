"""Prompts are data: YAML files rendered with Jinja2, a missing variable is an error.

`<strategy>/<role>.yaml` (or `<role>-<kind>.yaml` where a role words each task kind
differently) holds a `system` text and a `user` template. `tasks.yaml` holds, per
task kind, the requirement given to whichever call writes the final answer and that
call's generation limit, so every strategy answers in the same format and length.

Every file is found through one Jinja loader: a prompts directory given by the user
first, then the package's own. The loader serves the YAML files and the blocks their
templates share (`common/blocks.j2`, imported with `{% from ... import ... %}`), so a
directory can override a whole prompt file or a shared block file alike.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jinja2
import yaml

from coa.errors import ConfigError
from coa.fence import fence
from coa.models.base import Messages


@dataclass(frozen=True)
class Prompt:
    name: str
    system: str
    user: jinja2.Template

    def render(self, **values: object) -> Messages:
        # Shared blocks are loaded as the template renders, so their errors show up here.
        try:
            user = self.user.render(**values).strip()
        except jinja2.TemplateNotFound as e:
            raise ConfigError(f"prompt {self.name}: no prompt file {e.name}") from None
        except jinja2.TemplateSyntaxError as e:
            raise ConfigError(f"prompt {self.name}: {e.name} is malformed: {e.message} (line {e.lineno})") from None
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
                return Prompt(name=name, system=system, user=_environment(directory).from_string(user))
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
    environment = _environment(directory)
    try:
        return environment.loader.get_source(environment, name)[0]  # type: ignore[union-attr]  # always set
    except jinja2.TemplateNotFound:
        return None


@cache
def _environment(directory: Path | None) -> jinja2.Environment:
    packaged = jinja2.PackageLoader("coa", "prompts")
    loader = jinja2.ChoiceLoader([_Directory(directory), packaged]) if directory is not None else packaged
    environment = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                                     autoescape=False)
    environment.filters["fence"] = fence  # {{ chunk | fence }}: text from outside between tags it cannot forge
    return environment


class _Directory(jinja2.FileSystemLoader):
    """A user's prompts directory: a file there that cannot be read is one clear error,
    not a fall back to the package's file of the same name."""

    def get_source(self, environment: jinja2.Environment, template: str) -> tuple[str, str, Callable[[], bool]]:
        path = Path(self.searchpath[0]) / template
        try:
            return super().get_source(environment, template)
        except jinja2.TemplateNotFound:
            raise  # not overridden: the package's file is used
        except UnicodeDecodeError:
            raise ConfigError(f"{path} is not UTF-8 text") from None
        except OSError as e:
            raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
