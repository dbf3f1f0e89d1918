"""The chain's manager: it answers from the last CU; a prompt the server refuses as too long is
retried with the CU's least related lines left out."""

from __future__ import annotations

from functools import partial

from coa import evidence
from coa.errors import ContextOverflowError
from coa.models.base import Messages, truncate_to_tokens
from coa.session import Session
from coa.strategies.chaining import MAX_SHRINKS, Chain, ChainOptions, asked, cu_limit, quoted, uses_evidence
from coa.strategies.toolbox import render
from coa.task import Call, Citation, Kind, Task


def manager_messages(session: Session, task: Task, summary: str, options: ChainOptions | None = None) -> Messages:
    role = "evidence-manager" if options is not None and uses_evidence(options, task) else "manager"
    return render(session, "coa", role, task, by_kind=True, summary=summary)


def manager_tokens(session: Session, task: Task, options: ChainOptions | None = None) -> int:
    """The manager's generation limit; checked before any worker runs, so a window too small fails fast."""
    return session.window.answer_limit(manager_messages(session, task, "", options), task, reserve=cu_limit(session))


def shown(task: Task, chain: Chain, options: ChainOptions) -> list[Citation]:
    """The evidence the manager reads, and the answer is checked against: for a question, with
    `focus`, what is connected to its subject (`evidence.connected`)."""
    if uses_evidence(options, task) and options.focus and task.kind is Kind.QA:
        return evidence.connected(chain.citations, task.document, asked(task))
    return chain.citations


def summary_for(session: Session, task: Task, chain: Chain, options: ChainOptions) -> str:
    """What the manager reads: the evidence, or the paper's CU (with the quotes' places if `cite`)."""
    if uses_evidence(options, task):
        return evidence.render(shown(task, chain, options))
    summary = quoted(chain.cu, chain.citations) if options.cite else chain.cu
    return truncate_to_tokens(session.model, summary, cu_limit(session))


def read(call: Call, *, summary: str) -> None:
    call.cu = summary  # the trace says which lines reached the manager


async def manage(
    session: Session, task: Task, chain: Chain, max_tokens: int, options: ChainOptions, *,
    seed: int | None = None, temperature: float | None = None, path: int | None = None,
) -> str:
    """The manager's answer from the last CU, the query and the task requirement. A server that
    refuses the prompt as too long gets it again with the CU's least related lines left out, so the
    workers' calls are not lost to the last one."""
    summary = summary_for(session, task, chain, options)
    session.plan("manager", 1)
    for shrinks in range(MAX_SHRINKS + 1):
        messages = manager_messages(session, task, summary, options)
        try:
            call = await session.call("manager", shrinks, messages, max_tokens, seed=seed, temperature=temperature,
                                      path=path, then=partial(read, summary=summary), final=True)
        except ContextOverflowError:
            lines = summary.splitlines()
            if shrinks == MAX_SHRINKS or not summary.strip():
                raise
            summary = "\n".join(evidence.shrink(lines, asked(task)))
            if uses_evidence(options, task):  # citations stay the lines the manager read
                read_lines = set(summary.splitlines())
                session.citations = [c for c in chain.citations if c.line in read_lines]
            session.warnings.append(f"the server refused the manager's prompt as too long; its CU was shrunk to "
                                    f"{session.window.tokens(summary):,} tokens, the lines least related to the question left out")
            continue
        return call.output
    raise AssertionError("unreachable")
