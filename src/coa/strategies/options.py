"""Strategy options: one pydantic schema per strategy checks the command line's `--opt key=value`
text, Python values and a JSON body alike, and tells `coa strategies` each option's type,
default and meaning. Schema errors become one ConfigError line in the CLI's words."""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.fields import FieldInfo

from coa.errors import ConfigError

if TYPE_CHECKING:
    from coa.strategies.base import Strategy


class Options(BaseModel):
    """A strategy's `--opt` settings. One schema checks the command line's text ("true", "5",
    "auto"), Python values and a JSON body alike; fields carry a default, a description and
    their bounds. An optional field takes "auto" (or "none") for None."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        values = {}
        for key, value in data.items():
            key = key.replace("-", "_") if isinstance(key, str) else key
            field = cls.model_fields.get(key)
            if field and isinstance(value, str) and value.strip().lower() in ("auto", "none", "") and _optional(field):
                value = None
            values[key] = value
        return values


class NoOptions(Options):
    pass


def Place(default: str = "", *, description: str) -> Any:  # noqa: N802  (a Field, named as one)
    """An option that names where a run connects or what it reads (a URL, a host, a file, a
    directory). The operator sets it; `coa serve` refuses it from a client (see `places`)."""
    return Field(default, description=description, json_schema_extra={"place": True})


def places(strategy: Strategy | type[Strategy]) -> set[str]:
    """The strategy's options that name a place (declared with `Place`)."""
    return {name for name, field in strategy.Options.model_fields.items()
            if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("place")}


def parse_options(strategy: Strategy | type[Strategy], given: Mapping[str, Any]) -> Options:
    """The strategy's Options from `key: value` pairs, with values given as text or as Python values;
    anything the schema refuses is one ConfigError line."""
    try:
        return strategy.Options.model_validate(dict(given))
    except ValidationError as e:
        raise ConfigError("; ".join(_option_error(strategy, error) for error in e.errors())) from None


def parse_pairs(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`["k=v", ...]` from the command line as a dict."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--opt {pair!r}: expected key=value")
        options[key.strip()] = value.strip()
    return options


def option_type(field: FieldInfo) -> str:
    """An option's type as `coa strategies` shows it: "ltr|rtl|perm", "bool|auto", "int, 1 to 16"."""
    if typing.get_origin(field.annotation) is Literal:
        return "|".join(map(str, typing.get_args(field.annotation)))
    base = _base(field)
    text = getattr(base, "__name__", str(base)) + ("|auto" if _optional(field) else "")
    return f"{text}, {_bounds(field)}" if _limits(field) else text


def _option_error(strategy: Strategy | type[Strategy], error: Any) -> str:
    fields = strategy.Options.model_fields
    key, kind, raw = str(error["loc"][0]) if error["loc"] else "", error["type"], error["input"]
    if kind == "extra_forbidden":
        return f"strategy {strategy.name} has no option {key!r} (its options: {', '.join(sorted(fields)) or 'none'})"
    field = fields.get(key)
    if field is None:
        return f"options of strategy {strategy.name}: {error['msg']}"
    if kind == "literal_error":
        return f"option {key}: {raw!r} is not one of {', '.join(map(str, typing.get_args(field.annotation)))}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal", "finite_number"):
        return f"option {key} must be {_expected(field)}, not {raw}"
    if kind.endswith(("_parsing", "_type")) or kind == "int_from_float":
        return f"option {key}: {raw!r} is not a valid {getattr(_base(field), '__name__', _base(field))}"
    return f"option {key}: {error['msg']}"


def _optional(field: FieldInfo) -> bool:
    return type(None) in typing.get_args(field.annotation)


def _base(field: FieldInfo) -> Any:
    """The field's type without None: `bool` for `bool | None`."""
    args = [a for a in typing.get_args(field.annotation) if a is not type(None)]
    return args[0] if _optional(field) and len(args) == 1 else field.annotation


def _limits(field: FieldInfo) -> dict[str, Any]:
    return {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)}


def _bounds(field: FieldInfo) -> str:
    """A number option's bounds in words: "1 to 16", "0 or more"."""
    limits = _limits(field)
    if {"ge", "le"} <= limits.keys():
        return f"{limits['ge']} to {limits['le']}"
    words = {"ge": "{} or more", "gt": "more than {}", "le": "{} or less", "lt": "less than {}"}
    return " and ".join(words[k].format(v) for k, v in limits.items())


def _expected(field: FieldInfo) -> str:
    """What a number option accepts: "1 to 16", "a finite number of 0 or more"."""
    if _base(field) is float:  # float options are declared FiniteFloat: nan and inf are refused too
        return f"a finite number of {_bounds(field)}" if _limits(field) else "a finite number"
    return _bounds(field) or "a whole number"
