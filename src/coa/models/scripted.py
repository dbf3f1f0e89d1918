"""A deterministic model that records every prompt and replays queued outputs.

For tests of control flow and for `--model scripted`; never for claims about answers.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterable

from coa.models.base import Completion, Messages, Model, count_prompt

TOKEN = re.compile(r"\w+|[^\w\s]")

Reply = Callable[[Messages], str]


class ScriptedModel(Model):
    """Replies with queued strings, or `reply(messages)`, or a numbered default.

    Tokens are words and punctuation marks, so counts are easy to reason about.
    """

    def __init__(
        self,
        outputs: Iterable[str] = (),
        *,
        reply: Reply | None = None,
        context_window: int = 8192,
        name: str = "scripted",
    ) -> None:
        self.name = name
        self.token_counter = "scripted"
        self._context_window = context_window
        self.outputs = deque(outputs)
        self.reply = reply
        self.prompts: list[Messages] = []
        self.max_tokens: list[int] = []

    @property
    def context_window(self) -> int:
        return self._context_window

    def count_tokens(self, text: str) -> int:
        return len(TOKEN.findall(text))

    def token_offsets(self, text: str) -> list[int]:
        return [m.start() for m in TOKEN.finditer(text)]

    def complete(
        self, messages: Messages, *, max_tokens: int, temperature: float = 0.0, seed: int | None = None
    ) -> Completion:
        self.prompts.append([dict(m) for m in messages])
        self.max_tokens.append(max_tokens)
        if self.outputs:
            text = self.outputs.popleft()
        elif self.reply is not None:
            text = self.reply(messages)
        else:
            text = f"scripted output {len(self.prompts)}"
        tokens = TOKEN.findall(text)
        finish = "stop"
        if len(tokens) > max_tokens:  # obey the generation limit like a real model
            text, finish = " ".join(tokens[:max_tokens]), "length"
        return Completion(
            text=text,
            prompt_tokens=count_prompt(self, messages),
            completion_tokens=min(len(tokens), max_tokens),
            seconds=0.0,
            finish_reason=finish,
        )
