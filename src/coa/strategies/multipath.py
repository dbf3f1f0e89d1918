"""Multi-path Chain of Agents: several chains (both directions, seeded permutations, or
samples) whose answers a judge call or a majority vote combines."""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field, FiniteFloat

from coa.answers import majority, vote_key
from coa.session import Session
from coa.strategies.base import Strategy, register
from coa.strategies.chaining import ChainOptions, run_chain
from coa.strategies.manager import manage, manager_tokens
from coa.strategies.options import Options
from coa.strategies.toolbox import fit_notes, render
from coa.task import Citation, Task

MAX_PATHS = 16  # each path is a whole chain over the document: more is a typo, not a plan


class MultipathOptions(Options):
    paths: Literal["bidir", "perm", "sample"] = Field(
        "bidir", description="bidir: left to right and right to left; perm: seeded permutations; sample: sampled chains")
    n: int = Field(5, ge=1, le=MAX_PATHS, description="chains for perm and sample")
    combine: Literal["judge", "vote"] = Field("judge", description="a judge call reads the answers, or a majority vote")
    sample_temperature: FiniteFloat = Field(0.7, ge=0, description="temperature of the sampled chains")
    cu: Literal["evidence", "paper"] = Field("evidence", description="as coa's cu")
    guard: bool = Field(True, description="as coa's guard")
    grounding: bool | None = Field(None, description="as coa's grounding")


@register
class Multipath(Strategy):
    name = "coa-multipath"
    description = "Several CoA chains (both directions, permutations or samples) combined by a judge or a vote"
    Options = MultipathOptions
    prompt_sets = ("multipath", "coa")  # its chains are coa's

    async def solve(self, session: Session, task: Task):
        o: MultipathOptions = self.options
        seed = self.config.seed or 0
        chain = lambda order: ChainOptions(cu=o.cu, order=order, guard=o.guard, grounding=o.grounding)  # noqa: E731
        Plan = list[tuple[ChainOptions, float | None, int]]  # (chain options, temperature, seed) per path
        choices: dict[str, Plan] = {
            "bidir": [(chain("ltr"), None, seed), (chain("rtl"), None, seed)],
            "perm": [(chain("perm"), None, seed + i) for i in range(o.n)],
            "sample": [(chain("ltr"), o.sample_temperature, seed + i) for i in range(o.n)],
        }
        plans = choices[o.paths]
        max_tokens = manager_tokens(session, task, chain("ltr"))

        def judge_messages(shown: list[str]):
            return render(session, "multipath", "judge", task, answers=shown)

        if o.combine == "judge":  # checked before any chain runs, so a window too small fails fast
            room, limit = session.window.split(judge_messages([""] * len(plans)), task, "judge")

        async def path(i: int, options: ChainOptions, temperature: float | None, path_seed: int) -> str:
            found = await run_chain(session, task, options, seed=path_seed, temperature=temperature, path=i)
            answer = await manage(session, task, found, max_tokens, options, seed=path_seed, temperature=temperature,
                                  path=i)
            cited.extend(found.citations)
            return answer.strip()

        cited: list[Citation] = []
        answers = list(await asyncio.gather(*(path(i, *plan) for i, plan in enumerate(plans))))
        # Every path's evidence, once each: the answer is checked against all of it.
        session.citations = list({(c.start, c.end, c.line): c for c in cited}.values())
        settings = {"answers": answers}
        if o.combine == "vote":
            return majority(answers, [vote_key(task.kind, a, len(task.choices)) for a in answers]), settings
        session.plan("judge", 1)
        call = await session.call("judge", 0, judge_messages(fit_notes(session, answers, room)), limit)
        return call.output, settings
