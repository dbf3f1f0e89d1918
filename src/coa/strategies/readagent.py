"""ReadAgent (Lee et al. 2024): a gist memory with look-ups. The document is split into pages,
and each page is shortened to a gist on its own, without the question, as in the paper. One call
is shown every numbered gist and the question and names the pages to read again; the answer
call reads those pages in full in place of their gists, the other gists kept. A look-up reply
that names no page in range falls back to the pages that best match the question by BM25
(recorded as `fallback`). Where there are no more pages than look-ups, every page is read
and no look-up call is made. Questions only (qa, mcq): summaries and code have nothing to look up."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import Field

from coa.budget import MIN_CHUNK_TOKENS
from coa.chunking import Chunk
from coa.errors import ConfigError
from coa.fence import unfence
from coa.models.base import Messages, truncate_to_tokens
from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.options import Options
from coa.strategies.retrieval import bm25_scores
from coa.strategies.toolbox import fit_notes, map_chunks, questions_only, render
from coa.task import Task, query_text

LOOKUP_TOKENS = 48  # page numbers, and room for a model that words them in a sentence
TOKENS_PER_LOOKUP = 4  # a page number and its separator, for look-ups beyond what LOOKUP_TOKENS holds
MIN_GIST_TOKENS = 16  # the least a gist is cut to before the gists are said not to fit


class ReadAgentOptions(Options):
    page_tokens: int = Field(600, ge=MIN_CHUNK_TOKENS, le=65536,
                             description="tokens per page (fewer where a page and its gist would not fit the window)")
    gist_tokens: int = Field(128, ge=8, le=4096, description="generation limit of each page's gist")
    lookups: int = Field(2, ge=1, le=16, description="pages the look-up call may name to read again in full")


@dataclass(frozen=True)
class Page:
    """A page as the answer call shows it: its own text (`full`) or its gist."""

    text: str
    full: bool


@register
class ReadAgent(Strategy):
    name = "readagent"
    description = "ReadAgent: pages shortened to gists; the model looks up the pages to re-read in full, then answers"
    Options = ReadAgentOptions

    async def solve(self, session: Session, task: Task):
        questions_only(self.name, task)
        options: ReadAgentOptions = self.options
        fits = session.window.text_budget(gist_messages(session, "", 1, 1), options.gist_tokens, "gist")
        page_budget = min(options.page_tokens, fits)
        pages = session.window.chunks(task, page_budget)
        gists = await gist_pages(session, pages, options.gist_tokens)
        chosen, fallback = await look_up(session, task, pages, gists, options.lookups)
        answer, expanded = await answer_from(session, task, pages, gists, chosen)
        return answer, {"pages": len(pages), "page_budget": page_budget,
                        "chosen": [i + 1 for i in chosen], "fallback": fallback, "expanded": [i + 1 for i in expanded]}


def gist_messages(session: Session, page: str, index: int, total: int) -> Messages:
    return session.prompt("readagent", "gist").render(chunk=page, index=index, total=total)


def lookup_messages(session: Session, task: Task, gists: list[str], lookups: int) -> Messages:
    return render(session, "readagent", "lookup", task, gists=gists, lookups=lookups)


def reader_messages(session: Session, task: Task, pages: list[Page]) -> Messages:
    return render(session, "readagent", "answer", task, pages=pages)


async def gist_pages(session: Session, pages: list[Chunk], max_tokens: int) -> list[str]:
    """One gist per page; the pages are independent, so the calls run concurrently."""
    calls = await map_chunks(session, "gist", pages, lambda i, page: gist_messages(session, page.text, i + 1, len(pages)),
                             max_tokens)
    return [unfence(call.output).strip() for call in calls]


async def look_up(session: Session, task: Task, pages: list[Chunk], gists: list[str], lookups: int) -> tuple[list[int], bool]:
    """The pages (0-based, most useful first) to read in full, and whether BM25 chose them."""
    if len(pages) <= lookups:  # every page can be read: nothing to choose
        return list(range(len(pages))), False
    render = lambda shown: lookup_messages(session, task, shown, lookups)  # noqa: E731
    limit = max(LOOKUP_TOKENS, TOKENS_PER_LOOKUP * lookups)
    session.plan("lookup", 1)
    call = await session.call("lookup", 0, render(fit_gists(session, render, gists, limit)), limit)
    named = page_numbers(call.output, len(pages), lookups)
    if named:
        return named, False
    call.note = "no page number in range: pages chosen by BM25"
    return best_pages(task, pages, lookups), True


def page_numbers(reply: str, pages: int, most: int) -> list[int]:
    """The distinct pages (1 to `pages`) a reply names, in its order, at most `most`, as 0-based indices."""
    found: list[int] = []
    for match in re.finditer(r"\d+", unfence(reply)):  # unfenced first: a copied fence tag holds digits
        page = int(match.group()) - 1
        if 0 <= page < pages and page not in found:
            found.append(page)
    return found[:most]


def best_pages(task: Task, pages: list[Chunk], most: int) -> list[int]:
    """The `most` pages that best match the question and its options by BM25; ties in document order."""
    scores = bm25_scores([page.text for page in pages], " ".join([query_text(task), *task.choices]))
    return sorted(range(len(pages)), key=lambda i: -scores[i])[:most]


def fit_gists(session: Session, render: Callable[[list[str]], Messages], gists: list[str], reserve: int) -> list[str]:
    """The gists, cut to equal shares where needed, so that `render(gists)` leaves `reserve` tokens
    for output; checked on the rendered prompt, since joined text may count a little over its parts."""
    room = session.window.room(render([""] * len(gists)), reserve)  # labels and fences counted
    while room >= len(gists) * MIN_GIST_TOKENS:
        fitted = fit_notes(session, gists, room)
        if session.window.room(render(fitted), reserve) >= 0:
            return fitted
        room -= max(1, len(gists), room // 8)
    raise ConfigError(f"readagent: the gists of {len(gists)} pages do not fit a {session.window.size}-token window; "
                      "use a larger --window or larger pages (--opt page_tokens)")


async def answer_from(
    session: Session, task: Task, pages: list[Chunk], gists: list[str], chosen: list[int]
) -> tuple[str, list[int]]:
    """The answer from every page in order, the chosen ones in full (as much of them as fits, the
    first named first), the others by their gists; and the pages shown in full."""
    room, limit = session.window.split(reader_messages(session, task, [Page("", i in chosen) for i in range(len(pages))]),
                                     task, "readagent answer")
    gist_need = sum(session.window.tokens(gists[i]) for i in range(len(pages)) if i not in chosen)
    # The gists get what they need up to half the room, and never less than a minimum each.
    page_room = room - min(room, max(min(gist_need, room // 2), len(pages) * MIN_GIST_TOKENS))
    full = page_texts(session, pages, chosen, page_room)

    def render(shown: list[str]) -> Messages:
        rest = iter(shown)
        return reader_messages(session, task, [Page(full[i], True) if i in full else Page(next(rest), False)
                                               for i in range(len(pages))])

    others = [gists[i] for i in range(len(pages)) if i not in full]
    session.plan("reader", 1)
    call = await session.call("reader", 0, render(fit_gists(session, render, others, limit)), limit)
    return call.output, sorted(full)


def page_texts(session: Session, pages: list[Chunk], chosen: list[int], room: int) -> dict[int, str]:
    """The chosen pages' text within `room` tokens, in the order named: whole while they fit, then
    one cut to what is left; a page with too little left stays a gist."""
    texts: dict[int, str] = {}
    for i in chosen:
        if room < MIN_CHUNK_TOKENS:
            break
        texts[i] = truncate_to_tokens(session.model, pages[i].text, room)
        room -= session.window.tokens(texts[i])
    return texts
