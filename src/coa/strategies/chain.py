"""Chain of Agents: workers read the chunks in order, passing a communication
unit (CU) forward; a manager answers from the last CU alone.

Two kinds of CU. `evidence` (the default, for tasks with a question): each worker names the
sentences of its chunk that help answer, alone or with the evidence found before, and those
sentences travel word for word with their places in the document (coa.evidence). `paper`: each
worker writes the CU, as in the paper; the paper's CoA is `cu=paper`."""

from __future__ import annotations

from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.chaining import ChainOptions, cu_limit, grounding_for, query_aware, run_chains, uses_evidence
from coa.strategies.manager import manage, manager_tokens, shown
from coa.task import Task


@register
class ChainOfAgents(Strategy):
    name = "coa"
    description = "Chain of Agents: workers pass a communication unit along the chunks, a manager answers"
    Options = ChainOptions

    async def solve_many(self, runs: list[tuple[Session, Task]]) -> list[tuple[str, dict]]:
        """Questions over one document share one pass over its chunks (see `run_chains`)."""
        if len({task.document for _, task in runs}) > 1 or len({uses_evidence(self.options, t) for _, t in runs}) > 1:
            return [outcome for run in runs for outcome in await self.solve_many([run])]
        options: ChainOptions = self.options
        if query_aware(options) and len(runs) > 1:  # each question reads its own chunks in its own order
            return [outcome for run in runs for outcome in await self.solve_many([run])]
        limits = [manager_tokens(session, task, options) if options.manager else 0 for session, task in runs]
        chains = await run_chains(runs, options, seed=self.config.seed)
        outcomes = []
        for (session, task), chain, max_tokens in zip(runs, chains, limits, strict=True):
            evidence = shown(task, chain, options)
            if task.kind.needs_query or uses_evidence(options, task):  # the evidence the answer is checked against
                session.citations = evidence
            answer = await manage(session, task, chain, max_tokens, options) if options.manager else chain.cu
            outcomes.append((answer, {
                "cu": "evidence" if uses_evidence(options, task) else "paper",
                "max_cu_tokens": cu_limit(session),
                "chunk_tokens": chain.budget,
                "rechunks": chain.rechunks,
                "grounding": grounding_for(options, task),
                "skipped_chunks": chain.skipped,
                "early_exit_saved": chain.saved,
                "stopped_at_limit": chain.limited,
                "evidence_dropped": chain.dropped,
                # of the CU's lines, those the manager did not read: not connected to the question's subject
                "evidence_unfocused": len(chain.citations) - len(evidence),
            }))
        return outcomes
