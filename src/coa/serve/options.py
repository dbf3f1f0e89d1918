"""Strategy options under `coa serve`: the operator's (`coa serve --opt KEY=VALUE`), with a
request's own over them.

An option that names a place (a URL, a host, a file, a directory: `coa.strategies.options.places`)
is the operator's alone. A request that sets one is refused, even to the value the operator
chose, so that no client can make the server connect somewhere or read something.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from coa.errors import ConfigError
from coa.serve.errors import bad_request, from_coa
from coa.strategies.base import STRATEGIES, Strategy
from coa.strategies.options import Options, parse_options, places


def name_of(key: Any) -> Any:
    """An option's name as the schema reads it (`embed-url` is `embed_url`)."""
    return key.strip().replace("-", "_") if isinstance(key, str) else key


def operator_options(given: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """For each strategy, the operator's options it has. A key no strategy has, or a value a
    strategy refuses, is a ConfigError naming the `--opt` at fault."""
    given = {name_of(key): value for key, value in given.items()}
    found: dict[str, dict[str, Any]] = {}
    for entry in STRATEGIES.items():
        mine = {key: value for key, value in given.items() if key in entry.obj.Options.model_fields}
        if mine:
            for key, value in mine.items():
                try:
                    parse_options(entry.obj, {key: value})
                except ConfigError as e:
                    raise ConfigError(f"--opt {key}={value} (strategy {entry.name}): {e}") from None
            found[entry.name] = mine
    unknown = sorted(set(given) - {key for mine in found.values() for key in mine})
    if unknown:
        raise ConfigError(f"--opt {unknown[0]}: no strategy has this option (`coa strategies` lists them)")
    return found


def request_options(strategy: type[Strategy], given: Mapping[str, Any], operator: Mapping[str, Any],
                    param: str) -> Options:
    """The options of a request's run: the operator's with the request's over them. Raises the
    API's 400 for a place the request names, and for a bad option (the CLI's message)."""
    own = {name_of(key): value for key, value in given.items()}
    placed = sorted(key for key in own if key in places(strategy))
    if placed:
        key = placed[0]
        raise bad_request(f"option {key} names a place the server connects to; the operator sets it when starting "
                          f"coa serve (--opt {key}={placeholder(key)})", f"{param}.{key}")
    try:
        return parse_options(strategy, {**operator, **own})
    except ConfigError as e:
        raise from_coa(e, param) from None


def placeholder(key: str) -> str:
    """What a place option's value is, for the hint: URL, HOST, DIR or PATH."""
    for suffix, shown in (("url", "URL"), ("host", "HOST"), ("dir", "DIR"), ("directory", "DIR")):
        if key.endswith(suffix):
            return shown
    return "PATH"
