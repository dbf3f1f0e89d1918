"""What strategies share: prompts filled with the task's common fields, the chunk-by-chunk worker
calls, and the arithmetic of notes and groups. Strategies import this, never one another."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from coa.chunking import Chunk
from coa.errors import ConfigError, LimitError
from coa.models.base import Messages, count_prompt, truncate_to_tokens
from coa.session import Session
from coa.task import Call, Task, query_text


def render(session: Session, strategy: str, role: str, task: Task, *, by_kind: bool = False, **fields: Any) -> Messages:
    """The prompt `strategy`/`role` (its variant for the task's kind where `by_kind`), with the
    task's query, lettered choices, kind and answer requirement filled in beside `fields`."""
    prompt = session.prompt(strategy, role, task.kind if by_kind else None)
    return prompt.render(query=query_text(task), choices=task.lettered_choices, kind=str(task.kind),
                         requirement=session.requirement(task), **fields)


async def map_chunks(session: Session, role: str, chunks: list[Chunk], messages: Callable[[int, Chunk], Messages],
                     max_tokens: int) -> list[Call]:
    """One call per chunk (`messages(i, chunk)` its prompt), all independent: they run
    concurrently, up to the run's concurrency."""
    session.plan(role, len(chunks))
    return list(await asyncio.gather(*(
        session.call(role, i, messages(i, chunk), max_tokens, span=chunk.span) for i, chunk in enumerate(chunks)
    )))


def answer_messages(session: Session, task: Task, document: str) -> Messages:
    """The prompt that answers straight from a text (vanilla, rag, merge)."""
    return render(session, "common", "answer", task, document=document)


def combine_messages(session: Session, task: Task, notes: list[str]) -> Messages:
    """The prompt that writes the final answer from notes on parts of the text (merge, hierarchical)."""
    return render(session, "common", "combine", task, notes=notes)


def fit_notes(session: Session, notes: list[str], room: int) -> list[str]:
    """Notes cut to an equal share of `room` tokens each, when together they exceed it."""
    if sum(session.window.tokens(n) for n in notes) <= room:
        return notes
    share = max(1, room // max(1, len(notes)) - 8)  # a few tokens per note for its "Part i:" label
    return [truncate_to_tokens(session.model, n, share) for n in notes]


def item_costs(session: Session, build: Callable[[list], Messages], items: list) -> list[int]:
    """Tokens each item adds to the prompt `build(items)` makes, labels included."""
    base = count_prompt(session.model, build([]))
    return [count_prompt(session.model, build([item])) - base for item in items]


def groups(sizes: list[int], room: int) -> list[list[int]]:
    """Consecutive indices grouped so that each group's sizes sum to at most `room`
    (a group always takes two items, so that every level of a tree shrinks)."""
    result: list[list[int]] = []
    for i, size in enumerate(sizes):
        if result and (len(result[-1]) < 2 or sum(sizes[j] for j in result[-1]) + size <= room):
            result[-1].append(i)
        else:
            result.append([i])
    return result


def questions_only(strategy: str, task: Task) -> None:
    if not task.kind.needs_query:
        raise ConfigError(f"strategy {strategy} answers questions (qa and mcq tasks), not {task.kind} tasks")


async def combine_with_manager(session: Session, task: Task, notes: list[str]) -> str:
    """One call that writes the final answer from notes on the parts."""
    room, limit = session.window.split(combine_messages(session, task, [""] * len(notes)), task, "combining")
    session.plan("manager", 1)
    call = await session.call("manager", 0, combine_messages(session, task, fit_notes(session, notes, room)), limit)
    return call.output


def raise_gathered(outcomes: Sequence[object]) -> None:
    """Raise what a call of `asyncio.gather(..., return_exceptions=True)` raised: another error
    before a run limit, which only says the run stopped."""
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    if errors:
        raise next((e for e in errors if not isinstance(e, LimitError)), errors[0])


def answer_at_limit(session: Session, error: LimitError, gathered: bool, how: str) -> None:
    """A run limit reached while exploring: where something was `gathered`, the answer is written from
    it and a warning says how (`how`); with nothing gathered, the limit stands."""
    if not gathered:
        raise error
    session.warnings.append(f"{error}: {how}")


View = dict[str, Any]


def fit_history(session: Session, render: Callable[[list[View], int], Messages], views: list[View], reserve: int, *,
                shorten: Callable[[View], View], squeeze: Callable[[list[View], int], View | None], what: str,
                keep_last: bool = False) -> tuple[list[View], int]:
    """The entries of a dialogue (rounds, turns) to show and how many of the oldest were left out,
    so that `render(shown, left_out)` leaves `reserve` tokens: the entries shortened first, oldest
    first (the last one too, unless `keep_last`), then the oldest left out, then the last one
    squeezed (`squeeze(shown, left_out)`: a smaller last entry, or None where it cannot shrink)."""
    shown, left_out = list(views), 0
    fits = lambda: session.window.room(render(shown, left_out), reserve) >= 0  # noqa: E731
    for i in range(len(shown) - keep_last):
        if fits():
            return shown, left_out
        shown[i] = shorten(shown[i])
    while len(shown) > 1 and not fits():
        shown, left_out = shown[1:], left_out + 1
    while not fits():
        smaller = squeeze(shown, left_out) if shown else None
        if smaller is None or smaller == shown[-1]:
            raise ConfigError(f"{what} does not fit a {session.window.size}-token window; use a larger --window")
        shown[-1] = smaller
    return shown, left_out
