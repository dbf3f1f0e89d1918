"""One run's context window, shared out: the prompt, the text added to it, what is kept for the
CU and the answer, and a document cut into chunks that fit.

The one place a strategy asks what fits. The arithmetic itself is in `budget`, pure on token
counts so that each rule is tested on its own; a Window counts the prompts and applies it.
"""

from __future__ import annotations

from coa import budget
from coa.chunking import Chunk, IndexCache, chunk_text
from coa.config import Config
from coa.models.base import Messages, Model, count_prompt
from coa.prompts import task_format
from coa.task import Kind, Task


class Window:
    def __init__(self, model: Model, config: Config) -> None:
        self.model = model
        self.config = config
        self.size = min(config.window, model.context_window)
        self._index = IndexCache(model.count_tokens, model.token_offsets)  # counted by blocks where offsets are lacking

    def tokens(self, text: str) -> int:
        return self.model.count_tokens(text)

    def prompt_tokens(self, messages: Messages) -> int:
        return count_prompt(self.model, messages)

    # -- what is kept for output -------------------------------------------------------------
    @property
    def cu_tokens(self) -> int:
        """The most tokens one communication unit (a worker's note, a memory) may take."""
        return self.config.cu_limit(self.size)

    def answer_tokens(self, task: Task) -> int:
        """The generation limit of the task's answer: the run's max_answer_tokens (at least
        MIN_ANSWER_TOKENS, below which no answer is asked for), else what its kind asks for (its
        prompt set's `max_tokens`)."""
        if self.config.max_answer_tokens is not None:
            return max(budget.MIN_ANSWER_TOKENS, self.config.max_answer_tokens)
        return task_format(task.kind, self.config.prompts_dir).max_tokens

    # -- what fits ---------------------------------------------------------------------------
    def room(self, messages: Messages, reserve: int) -> int:
        """Tokens left for more text in `messages` once `reserve` tokens are kept for output."""
        return budget.room(self.size, self.prompt_tokens(messages), reserve)

    def text_budget(self, messages: Messages, reserve: int, what: str) -> int:
        """Tokens of text a call with this prompt can read; a clear error where too few are left."""
        return budget.text_budget(self.size, self.prompt_tokens(messages), reserve, what)

    def answer_limit(self, messages: Messages, task: Task, reserve: int = 0) -> int:
        """Generation limit of the final answer: the task's, or what is left in the window
        (`reserve`: tokens of text still to be added to the prompt)."""
        return budget.answer_limit(self.size, self.prompt_tokens(messages), self.answer_tokens(task), reserve)

    def split(self, messages: Messages, task: Task, what: str, wanted: int | None = None) -> tuple[int, int]:
        """(tokens for input text, generation limit) for a call that answers from inputs added to
        `messages`; `wanted`: its generation limit, where not the task's."""
        wanted = self.answer_tokens(task) if wanted is None else wanted
        return budget.split(self.size, self.prompt_tokens(messages), wanted, what)

    def check(self, prompt_tokens: int, max_tokens: int) -> None:
        """Never send what cannot fit."""
        budget.check_fits(self.size, prompt_tokens, max_tokens)

    # -- the document in chunks --------------------------------------------------------------
    def chunks(self, task: Task, tokens: int, within: Chunk | None = None) -> list[Chunk]:
        """The document (or the part `within` covers) in chunks of at most `tokens` tokens."""
        start, end = (within.start, within.end) if within else (0, len(task.document))
        return chunk_text(task.document, tokens, self._index.get(task.document), lines=task.kind is Kind.CODE,
                          count=self.tokens, start=start, end=end)
