"""Things found by name: strategies, datasets, metrics and model backends.

A `Registry` maps names to entries (an object and a one-line description). Built-ins
register themselves with `@registry.register(name, description)` in the modules of one
package, which the registry imports on first use: adding a built-in is adding a module,
and importing `coa` imports none of them. Other packages add entries through an entry point
group such as `chainofagents.strategies`; a plugin is loaded when its name is looked up or
the registry is listed, and one that fails to load is reported by name (a warning in
listings, an error when it is asked for), never a traceback.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import pkgutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from coa.errors import ConfigError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str
    plugin: str = ""  # the distribution (or entry point) that provides it; "" for a built-in


class Registry(Generic[T]):
    def __init__(self, kind: str, group: str, package: str = "") -> None:
        self.kind = kind  # what an entry is, for messages: "strategy", "dataset", ...
        self.group = group  # the entry point group plugins use
        self.package = package  # whose modules register the built-ins ("": they are registered already)
        self._imported = not package
        self._entries: dict[str, Entry[T]] = {}
        self._failed: dict[str, str] = {}  # plugin name -> why it could not be loaded
        self._seen: set[tuple[str, str]] = set()  # entry points already tried

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        def add(obj: T) -> T:
            self.add(Entry(name, obj, description or describe(obj)))
            return obj

        return add

    def add(self, entry: Entry[T]) -> None:
        old = self._entries.get(entry.name)
        if old is not None and old.obj is not entry.obj:
            raise ValueError(f"{self.kind} {entry.name!r} is registered twice")
        self._entries[entry.name] = entry

    def get(self, name: str) -> T:
        entry = self._find(name)
        if entry is not None:
            return entry.obj
        if name in self._failed:
            raise ConfigError(self._failed[name])
        names = sorted(self.names())
        close = difflib.get_close_matches(name, names, n=1)
        hint = f"did you mean {close[0]!r}? (choose from: {', '.join(names)})" if close else f"choose from: {', '.join(names)}"
        raise ConfigError(f"unknown {self.kind} {name!r}; {hint}")

    def items(self) -> list[Entry[T]]:
        """Every entry, plugins included: built-ins by name, then plugins by name."""
        self._import_builtins()
        self._load_plugins()
        return sorted(self._entries.values(), key=lambda entry: (bool(entry.plugin), entry.name))

    def names(self) -> list[str]:
        return [entry.name for entry in self.items()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._find(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def _find(self, name: str) -> Entry[T] | None:
        self._import_builtins()
        if name not in self._entries:
            self._load_plugins(name)
        return self._entries.get(name)

    def _import_builtins(self) -> None:
        if not self._imported:
            self._imported = True
            for module in pkgutil.iter_modules(importlib.import_module(self.package).__path__):
                importlib.import_module(f"{self.package}.{module.name}")

    def _load_plugins(self, only: str | None = None) -> None:
        for point in entry_points(group=self.group):
            if only not in (None, point.name) or (point.name, point.value) in self._seen:
                continue
            self._seen.add((point.name, point.value))
            dist = point.dist.name if point.dist else ""
            where = f"{self.kind} plugin {point.name!r} ({point.value}{f', from {dist}' if dist else ''})"
            if point.name in self._entries:
                log.warning("%s ignored: the name %r is taken", where, point.name)
                continue
            try:
                obj = point.load()
            except Exception as e:  # any failure of third-party code is reported, not raised, here
                self._failed[point.name] = f"{where} could not be loaded: {type(e).__name__}: {e}"
                if only is None:  # a listing goes on without it; a lookup by name raises this instead
                    log.warning("%s", self._failed[point.name])
                continue
            self._entries[point.name] = Entry(point.name, obj, describe(obj), dist or point.value)


def describe(obj: Any) -> str:
    """An object's one-line description: its `description` attribute, or its docstring's first line."""
    text = getattr(obj, "description", None) or inspect.getdoc(obj) or ""
    return text.strip().splitlines()[0] if text.strip() else ""
