"""The evidence audit (coa.eval.audit): from a run's trace, whether some CU held the answer, whether the
chain lost it before the manager, whether the manager missed what it was shown, and whether the
answer rests on its citations. Scripted chains make each case happen."""

from __future__ import annotations

import json
import re

import pytest

from coa import ChainOfAgents, Config, Kind, ScriptedModel, Task
from coa.eval.audit import audit, holds
from coa.strategies import get_strategy

QUESTION = "What vault code did Mira choose?"
NEEDLE = "The vault code that Mira chose is 4417."
REFS = ["4417"]
FENCED = re.compile(r"<(document-[0-9a-f]+)>\n(.*?)\n</\1>", re.DOTALL)


def document(needle: str = NEEDLE) -> str:
    weather = [f"The weather on day {i} was mild and grey." for i in range(80)]
    return " ".join(weather[:3] + [needle] + weather[3:])


def chain(worker, answer, cu="evidence", kind=Kind.QA, choices=(), needle=NEEDLE, **options):
    """A coa run whose workers reply `worker(chunk, position)` and whose manager replies `answer(prompt)`."""
    seen = {"workers": 0}

    def reply(messages):
        text = messages[-1]["content"]
        found = FENCED.search(text)
        if found is None:  # the manager: the only prompt without a chunk
            return answer(text)
        seen["workers"] += 1
        return worker(found.group(2), seen["workers"] - 1)

    model = ScriptedModel(reply=reply, context_window=400)
    result = ChainOfAgents(model, Config(window=400, max_cu_tokens=40), options={"cu": cu, **options}).run(
        Task(document(needle), QUESTION, kind, choices))
    assert len(result.workers) >= 3 and result.kind is kind
    return result


def first_finds(chunk, i):
    """Worker 1 copies the fact; every later worker finds nothing."""
    return NEEDLE if i == 0 else "none"


def answers_from(prompt):
    """A manager that answers with the code when it was shown one."""
    return "4417" if "4417" in prompt else "unknown"


def trace(result) -> dict:
    return json.loads(result.to_json())  # as a results file stores it


def test_a_paper_chain_whose_later_worker_drops_the_fact_lost_it():
    result = chain(first_finds, answers_from, cu="paper")
    assert result.workers[0].cu == NEEDLE and result.workers[1].cu == "none"  # the rewrite dropped it
    assert result.answer == "unknown"
    found = audit(trace(result), REFS, "needle")
    assert found == {"supported": False, "held": True, "lost": True, "missed": False}


def test_the_evidence_chain_keeps_the_fact_to_the_manager():
    result = chain(first_finds, answers_from)
    assert result.answer == "4417"
    assert audit(trace(result), REFS, "needle") == {"supported": True, "held": True, "lost": False, "missed": False}


def test_a_manager_that_drops_what_its_cu_held_missed_it():
    result = chain(first_finds, lambda prompt: "unknown")
    assert "4417" in [c for c in result.calls if c.role == "manager"][-1].cu
    assert audit(trace(result), REFS, "needle") == {"supported": False, "held": True, "lost": False, "missed": True}


def test_a_fact_no_worker_found_was_never_held():
    # Put in words the question's do not find (only "Mira" is shared), the fact enters no CU by its words
    # either (coa.evidence.related), so with workers that find nothing no CU ever holds it.
    result = chain(lambda chunk, i: "none", answers_from, needle="Mira picked 4417 to open the safe.")
    assert result.citations == [] and result.answer == "unknown"
    assert audit(trace(result), REFS, "needle") == {"supported": False, "held": False, "lost": False, "missed": False}


def test_a_fact_in_the_questions_words_is_held_though_no_worker_copied_it():
    # The needle holds three of the question's four content words: the evidence CU takes it by its words.
    result = chain(lambda chunk, i: "none", answers_from)
    assert [c.line for c in result.citations] == [NEEDLE] and result.answer == "4417"
    assert audit(trace(result), REFS, "needle") == {"supported": True, "held": True, "lost": False, "missed": False}


@pytest.mark.parametrize(("cu", "expected"), [
    ("paper", {"held": True, "lost": True, "missed": False}),  # the last CU ("none") is the answer
    ("evidence", {"held": True, "lost": False, "missed": False}),  # the evidence itself is the answer
])
def test_without_a_manager_the_last_cu_is_what_reached_the_answer(cu, expected):
    result = chain(first_finds, answers_from, cu=cu, manager=False)
    assert not any(c.role == "manager" for c in result.calls)
    found = audit(trace(result), REFS, "needle")
    assert {k: found[k] for k in expected} == expected


@pytest.mark.parametrize("metric", ["qa_f1", "exact_match", "contains"])
def test_answer_matching_metrics_count_a_cu_that_contains_the_reference(metric):
    # F1 of a whole CU against "4417" is far below 1, but the CU plainly holds the answer.
    paper = chain(first_finds, answers_from, cu="paper")
    assert audit(trace(paper), REFS, metric)["lost"] is True
    kept = chain(first_finds, answers_from)
    assert audit(trace(kept), REFS, metric) == {"supported": True, "held": True, "lost": False, "missed": False}


def test_multiple_choice_and_summary_rows_are_not_counted():
    mcq = chain(first_finds, lambda prompt: "A", kind=Kind.MCQ, choices=("4417", "9999"))
    assert mcq.answer == "A"
    assert audit(trace(mcq), ["A"], "choice") == {"supported": True, "held": None, "lost": None, "missed": None}
    model = ScriptedModel(reply=lambda m: "A grey week.", context_window=400)
    summary = ChainOfAgents(model, Config(window=400, max_cu_tokens=40)).run(Task(document(), None, Kind.SUMMARIZE))
    assert audit(trace(summary), ["A grey week."], "rouge") == {"supported": None, "held": None, "lost": None,
                                                                 "missed": None}


def test_a_strategy_without_workers_has_no_chain_to_audit():
    model = ScriptedModel(reply=lambda m: "4417", context_window=4000)
    result = get_strategy("vanilla")(model, Config(window=4000)).run(Task(document(), QUESTION))
    assert audit(trace(result), REFS, "needle") == {"supported": None, "held": None, "lost": None, "missed": None}


def test_holds_is_containment_for_answer_metrics_and_none_elsewhere():
    assert holds("The code is 4417.", REFS, "qa_f1") is True
    assert holds("The code is 4418.", REFS, "exact_match") is False
    assert holds("Mira chose 4417 and 9050.", ["4417 | 9050"], "needle") is True
    assert holds("Mira chose 4417.", ["4417 | 9050"], "needle") is False  # a needle of two values needs both
    assert holds("anything", REFS, "rouge") is None and holds("anything", [], "needle") is None
