"""`coa` as an lm-evaluation-harness model: generation only, any strategy on any backend.

Importing this module registers the model under the name `coa` in lm-eval's registry (lm-eval
finds models only by import; `python -m coa.lm_eval` and `coa lm-eval` import it first).

--model_args take `coa ask`'s names:

- `strategy=NAME` (default coa), with its options as `opt_KEY=VALUE` (`coa ask --opt KEY=VALUE`),
  or written inline as `coa eval` writes them: `strategy=coa:order=rtl:manager=false`;
- `model` (embedded, gguf:PATH, openai:NAME, scripted), `base_url`, `api_key` (also from
  OPENAI_BASE_URL / OPENAI_API_KEY, as for `coa ask`), `timeout`, `cache`;
- `window`, `max_cu_tokens`, `temperature`, `seed`, `concurrency`, `prompts_dir`, `requirement`;
- run limits `max_calls`, `max_total_tokens`, `max_seconds`, per request;
- `kind`: the task kind requests run as, qa, summarize or code; default auto: code for LongBench's
  code completion (lcc, repobench), summarize where the row has no question and the prompt's
  instruction asks for a summary, qa otherwise;
- `usage_path`: where the per-request calls and tokens go (JSON lines; `python -m coa.lm_eval`
  defaults it to `coa-usage.jsonl` under --output_path).

lm-eval's own `batch_size`, `max_batch_size` and `device`, and RULER's `tokenizer` (the Hugging Face
tokenizer lm-eval sizes RULER's data with), are accepted and ignored here. Any other arg
is one ConfigError line that lists the known ones. The api key is never logged, echoed or written.

Each request runs the strategy once, on the document and question that `coa.lm_eval.split`
takes from the request's doc. The request's `max_gen_toks` is the generation limit of the final
answering call (the run's `max_answer_tokens`; still capped by what fits in the window; below coa's floor of 16 answer tokens the call gets 16 and the
answer is cut to `max_gen_toks` tokens after), and the answer is cut at the first of its `until`
strings.
lm-eval's sampling settings (`temperature`, `do_sample`) are not used: `temperature` in
--model_args is.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from coa.budget import MIN_ANSWER_TOKENS
from coa.config import DEFAULT_WINDOW, Config
from coa.errors import CoaError, ConfigError
from coa.lm_eval.split import Split, split_request
from coa.models.base import Model, truncate_to_tokens
from coa.task import Kind, Result, Task

log = logging.getLogger("coa.lm_eval")

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's own default for generate_until

# Settings the CLI entry (coa.lm_eval.__main__) takes out of --model_args before lm-eval sees them,
# so that lm-eval never logs or stores them: the api key, and the usage file's default.
HIDDEN: dict[str, str] = {}

# What lm-eval passes every model, and RULER's `tokenizer` (it sizes RULER's data, not coa's window).
IGNORED = ("batch_size", "max_batch_size", "device", "tokenizer")
SETTINGS = ("strategy", "model", "base_url", "api_key", "window", "max_cu_tokens", "temperature", "seed", "timeout",
            "concurrency", "max_calls", "max_total_tokens", "max_seconds", "prompts_dir", "cache", "requirement",
            "kind", "usage_path")


def _int(name: str, value: Any, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ConfigError(f"--model_args {name}={value}: must be a whole number")
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"--model_args {name}={value}: must be a whole number") from None
    if number < minimum:
        raise ConfigError(f"--model_args {name}={value}: must be at least {minimum}")
    return number


def _float(name: str, value: Any, *, positive: bool) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--model_args {name}={value}: must be a number") from None
    if number != number or number in (float("inf"), float("-inf")) or number < 0 or (positive and number == 0):
        raise ConfigError(f"--model_args {name}={value}: must be a finite number {'above' if positive else 'from'} 0")
    return number


@register_model("coa")
class CoaLM(LM):
    """A coa strategy behind lm-eval's LM interface (generate_until only)."""

    def __init__(self, **args: Any) -> None:
        super().__init__()
        from coa.eval.runner import StrategySpec
        from coa.strategies import get_strategy
        from coa.strategies.options import parse_options

        for name in IGNORED:
            args.pop(name, None)
        given_options = {k[len("opt_"):]: v for k, v in args.items() if k.startswith("opt_") and len(k) > len("opt_")}
        unknown = sorted(k for k in args if k not in SETTINGS and not (k.startswith("opt_") and len(k) > len("opt_")))
        if unknown:
            raise ConfigError(f"--model_args: unknown {', '.join(unknown)} for model coa; use {', '.join(SETTINGS)} "
                              "or opt_KEY=VALUE for a strategy option")
        spec = StrategySpec.parse(str(args.get("strategy", "coa")))  # "coa" or "coa:order=rtl"
        self.strategy = get_strategy(spec.name)
        self.options = parse_options(self.strategy, {**spec.options, **given_options})
        self.label = spec.label if not given_options else spec.label + "".join(
            f":{k}={v}" for k, v in given_options.items())
        self.model_name = str(args.get("model", "embedded"))
        kind = str(args.get("kind", "auto"))
        if kind == "mcq":
            raise ConfigError("--model_args kind=mcq: lm-eval's prompts carry the options; use kind=qa")
        try:
            self.kind: Kind | None = None if kind == "auto" else Kind(kind)
        except ValueError:
            raise ConfigError(f"--model_args kind={kind}: use one of auto, qa, summarize, code") from None
        prompts_dir = args.get("prompts_dir")
        self.prompts_dir = Path(str(prompts_dir)).expanduser() if prompts_dir is not None else None
        if self.prompts_dir is not None and not self.prompts_dir.is_dir():
            raise ConfigError(f"--model_args prompts_dir={prompts_dir}: no such directory")
        temperature = _float("temperature", args.get("temperature", 0.0), positive=False)
        self.config = Config(
            window=_int("window", args.get("window", DEFAULT_WINDOW), 64) or DEFAULT_WINDOW,
            max_cu_tokens=_int("max_cu_tokens", args.get("max_cu_tokens"), 1),
            temperature=0.0 if temperature is None else temperature,
            seed=_int("seed", args.get("seed"), 0),
            concurrency=_int("concurrency", args.get("concurrency", 4), 1) or 4,
            prompts_dir=self.prompts_dir,
            max_calls=_int("max_calls", args.get("max_calls"), 1),
            max_total_tokens=_int("max_total_tokens", args.get("max_total_tokens"), 1),
            max_seconds=_float("max_seconds", args.get("max_seconds"), positive=True),
        )
        requirement = args.get("requirement")
        self.requirement = None if requirement is None else str(requirement)
        # The key: --model_args (taken out of lm-eval's sight by coa.lm_eval.__main__), else the environment.
        api_key = args.get("api_key") or HIDDEN.get("api_key") or os.environ.get("OPENAI_API_KEY")
        base_url = args.get("base_url") or os.environ.get("OPENAI_BASE_URL")
        usage = args.get("usage_path") or HIDDEN.get("usage_path")
        self.usage_path = Path(str(usage)).expanduser() if usage else None
        if self.usage_path is not None:
            self.usage_path.parent.mkdir(parents=True, exist_ok=True)
            self.usage_path.write_text("", encoding="utf-8")  # this run's requests only
        self._warned: set[str] = set()
        self.usage: list[dict[str, Any]] = []  # one entry per request, in the order answered
        from coa.models.registry import load_model

        self.backend: Model = load_model(
            self.model_name, window=self.config.window, base_url=None if base_url is None else str(base_url),
            api_key=None if api_key is None else str(api_key),
            timeout=_float("timeout", args.get("timeout", 120.0), positive=True),
            cache=None if args.get("cache") is None else Path(str(args["cache"])).expanduser())

    def __repr__(self) -> str:  # never the key
        return f"CoaLM(strategy={self.label!r}, model={self.model_name!r}, window={self.config.window})"

    # -- what lm-eval asks -------------------------------------------------------------------
    def loglikelihood(self, requests: list[Any]) -> list[tuple[float, bool]]:
        raise ConfigError(_generative_only("loglikelihood", requests))

    def loglikelihood_rolling(self, requests: list[Any]) -> list[float]:
        raise ConfigError(_generative_only("loglikelihood_rolling", requests))

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        return [self.answer(request) for request in requests]

    # -- one request ---------------------------------------------------------------------------
    def answer(self, request: Any) -> str:
        prompt, gen_kwargs = request.args[0], (request.args[1] if len(request.args) > 1 else {}) or {}
        until = gen_kwargs.get("until") or []
        until = [until] if isinstance(until, str) else [u for u in until if u]
        max_gen_toks = _int("max_gen_toks", gen_kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS), 1) or DEFAULT_MAX_GEN_TOKS
        task_name = getattr(request, "task_name", None) or ""
        split = split_request(prompt, getattr(request, "doc", None), task_name)
        if split.rule == "last-line" and task_name not in self._warned:
            self._warned.add(task_name)
            log.warning("coa: no document/question rule for task %s: its prompt is the document and its last "
                        "non-empty line the question", task_name or "(unnamed)")
        kind = self.kind or kind_of(task_name, split)
        result, error = None, None
        try:
            result = self.run(split, max_gen_toks, kind)
        except ConfigError:
            raise  # the same for every request: stop now
        except CoaError as e:  # this request failed (a limit, an empty document): record it, answer nothing
            error = str(e)
            log.warning("coa: task %s doc %s: %s", task_name, getattr(request, "doc_id", None), error)
        answer = cut(result.answer if result else "", until)
        if max_gen_toks < MIN_ANSWER_TOKENS:  # the call was given coa's floor: keep max_gen_toks of it
            answer = truncate_to_tokens(self.backend, answer, max_gen_toks).rstrip()
        self.record(request, split, kind, max_gen_toks, answer, result, error)
        return answer

    def run(self, split: Split, max_gen_toks: int, kind: Kind) -> Result:
        query = None if kind is Kind.CODE and split.instructed else split.question or None
        task = Task(split.document, query, kind, requirement=self.requirement)
        config = replace(self.config, max_answer_tokens=max(max_gen_toks, MIN_ANSWER_TOKENS))
        return self.strategy(self.backend, config, options=self.options).run(task)

    def record(self, request: Any, split: Split, kind: Kind, max_gen_toks: int, answer: str, result: Result | None,
               error: str | None) -> None:
        calls = result.calls if result else []
        entry = {
            "task": getattr(request, "task_name", None),
            "doc_id": getattr(request, "doc_id", None),
            "strategy": self.label,
            "model": self.model_name,
            "split": split.rule,
            "kind": str(kind),
            "max_gen_toks": max_gen_toks,
            "answer": answer,
            "calls": len(calls),
            "prompt_tokens": sum(c.prompt_tokens for c in calls),
            "completion_tokens": sum(c.completion_tokens for c in calls),
            "seconds": round(result.seconds, 3) if result else 0.0,
            "per_call": [{"role": c.role, "index": c.index, "prompt_tokens": c.prompt_tokens,
                          "completion_tokens": c.completion_tokens, "finish_reason": c.finish_reason} for c in calls],
            "warnings": list(result.warnings) if result else [],
            "error": error,
        }
        self.usage.append(entry)
        if self.usage_path is not None:
            with self.usage_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self.backend.close()


CODE_TASKS = ("lcc", "repobench")  # LongBench's next-line code completion


def kind_of(task: str, split: Split) -> Kind:
    """The kind a request runs as where `kind=auto`."""
    if any(name in task.lower() for name in CODE_TASKS):
        return Kind.CODE
    if split.instructed and "summar" in split.question.lower():
        return Kind.SUMMARIZE
    return Kind.QA


def cut(answer: str, until: list[str]) -> str:
    """The answer up to the first of the `until` strings."""
    end = len(answer)
    for stop in until:
        at = answer.find(stop)
        if 0 <= at < end:
            end = at
    return answer[:end]


def _generative_only(kind: str, requests: list[Any]) -> str:
    tasks = sorted({t for t in (getattr(r, "task_name", None) for r in requests) if t})
    named = ", ".join(tasks) or "this task"
    variant = _variants(tasks)
    instead = f" (here: {variant})" if variant else ""
    return (f"model coa only generates: {named} asks for {kind} scores; run the task's generative variant instead, "
            f"a task with output_type generate_until{instead}")


def _variants(tasks: list[str]) -> str:
    """Generative tasks lm-eval knows that are named after `tasks` (mmlu -> mmlu_generative, ...)."""
    try:
        from lm_eval.tasks import TaskManager

        known = TaskManager().all_tasks
    except Exception:  # noqa: BLE001  (a hint only: the error stands without it)
        return ""
    found = [f"{t}{suffix}" for t in tasks for suffix in ("_generative", "_gen", "_cot_zeroshot", "_chat")
             if f"{t}{suffix}" in known]
    return ", ".join(found[:4])

