"""What every strategy shares: progress events for whoever is watching."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from coa.task import Call


@dataclass(frozen=True)
class Progress:
    """A call is about to start (`call` is None) or has finished."""

    role: str
    index: int
    total: int  # calls of this role planned in the run
    call: Call | None = None


Observer = Callable[[Progress], None]


def ignore(_: Progress) -> None:
    pass
