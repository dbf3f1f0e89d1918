"""Run settings shared by every strategy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_WINDOW = 8192
DEFAULT_CU_TOKENS = 1024


@dataclass(frozen=True)
class Config:
    window: int = DEFAULT_WINDOW  # capped at the model's own context window
    max_cu_tokens: int | None = None  # default: 1024, or window // 8 if smaller
    temperature: float = 0.0
    seed: int | None = None
    prompts_dir: Path | None = None  # searched for prompt files before the package's own
    max_answer_tokens: int | None = None  # the answer's generation limit (at least 16); default: its kind's in tasks.yaml
    concurrency: int = 4  # model calls in flight at once, for strategies whose calls are independent
    # Limits of a run, checked before each call: past them a run stops with LimitError, or, where the
    # strategy keeps room for it (coa's manager), answers from what it has read.
    max_calls: int | None = None
    max_total_tokens: int | None = None  # prompt + generation limit of every call begun
    max_seconds: float | None = None  # wall-clock seconds of the run; the final answering call may run past it
    # The key of the embedding server that rag's embed_url names: a setting of the process, never a
    # strategy option (options are recorded with every result); kept out of repr.
    embed_api_key: str | None = field(default=None, repr=False)

    def cu_limit(self, window: int) -> int:
        # The paper's 1024-token CU fits an 8k window; smaller windows get a proportional one.
        return self.max_cu_tokens or min(DEFAULT_CU_TOKENS, window // 8)
