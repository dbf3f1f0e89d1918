"""Right for the right reason: where a chain found the answer, whether it reached the manager, and
whether the manager gave it.

From a run's trace and the example's references:
- `held`: some worker's CU held the answer;
- `lost`: some CU held it, but the CU that reached the manager did not (the chain lost evidence);
- `missed`: the CU that reached the manager held it, but the answer does not (the manager cut or
  changed it);
- `supported`: the answer rests on its citations (see coa.grounding.check_support).

"Held" is the set's own metric where that metric looks for the answer inside a text (needle),
and for the answer-matching metrics (F1, exact match) whether the text contains a reference after
the same normalisation: F1 against a whole CU is never 1, however plainly it holds the answer.
Multiple-choice, summary and code rows are not counted (None).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from coa.eval import metrics

CONTAINED = {"needle": "needle", "contains": "contains", "qa_f1": "contains", "exact_match": "contains"}


def holds(text: str, references: Sequence[str], metric: str) -> bool | None:
    """Whether `text` holds a reference answer; None where the metric has no such notion."""
    test = CONTAINED.get(metric)
    if test is None or not references:
        return None
    return metrics.score(test, text or "", references) >= 1.0


def audit(trace: dict[str, Any], references: Sequence[str], metric: str) -> dict[str, bool | None]:
    """The evidence columns of one row, from its result as `Result.to_dict` writes it."""
    found: dict[str, bool | None] = {"supported": trace.get("supported"), "held": None, "lost": None, "missed": None}
    calls = trace.get("calls") or []
    cus = [c.get("cu") for c in calls if c.get("role") == "worker" and c.get("cu") is not None]
    if not cus or holds("", references, metric) is None:
        return found
    managers = [c for c in calls if c.get("role") == "manager" and c.get("cu") is not None]
    final = managers[-1]["cu"] if managers else cus[-1]  # without a manager, the last CU is the answer
    held = any(holds(cu, references, metric) for cu in cus)
    reached = bool(holds(final, references, metric))
    found.update(held=held, lost=held and not reached,
                 missed=reached and not holds(trace.get("answer") or "", references, metric))
    return found
