"""auto: which strategy it picks before reading, and that the pick's run is the run."""

import json

import pytest

from coa import Config, ConfigError, Kind, ScriptedModel, Task
from coa.strategies import auto, get_strategy

QUESTION = "What colour is the lamp that the gardener carries?"  # "lamp that": a relative clause
KEY = "The gardener carries the lamp, and the lamp's colour is teal."
CLUE = "Someone left a lamp on the table."


def filler(count):
    return [f"Sentence number {i} tells of event {i} in the story." for i in range(count)]


def confident():
    """A long document where one passage holds every word of the question: a wide BM25 margin."""
    sentences = filler(200)
    sentences[120] = KEY
    return " ".join(sentences)


def unsure():
    """A long document whose question words are spread over passages: no passage stands out."""
    sentences = filler(200)
    sentences[20], sentences[90] = "A gardener walked by the river at dawn.", CLUE
    sentences[160], sentences[185] = "The colour of the sky was grey.", "Nobody carries anything heavy here."
    return " ".join(sentences)


def quoting(messages):
    """A worker quotes the clue where its chunk holds it; otherwise (and the manager) says so."""
    chunk = messages[-1]["content"].split("Question:")[0]
    return CLUE if CLUE in chunk else "(none)"


def run(task, *, name="auto", window=600, reply=None, **options):
    model = ScriptedModel(reply=reply, context_window=window)
    result = get_strategy(name)(model, Config(window=window, max_cu_tokens=40), options=options).run(task)
    return model, result


def test_a_document_that_fits_goes_to_vanilla_in_one_call():
    model, result = run(Task(" ".join(filler(10)), QUESTION))
    assert result.strategy == "auto" and result.settings["picked"] == "vanilla"
    assert len(result.calls) == 1 and result.settings["kept_tokens"] == result.settings["document_tokens"] == 110
    features = result.settings["features"]
    assert features["document_tokens"] == 110 and features["document_tokens"] <= features["room"]
    assert "bm25_margin" not in features  # decided by length alone
    assert "110 tokens fit" in result.settings["why"]


def test_a_confident_bm25_match_goes_to_rag():
    model, result = run(Task(confident(), QUESTION))
    features = result.settings["features"]
    assert features["relative_clause"] is True and features["bm25_margin"] > auto.MAX_MARGIN
    assert result.settings["picked"] == "rag" and len(result.calls) == 1
    assert KEY in model.prompts[0][-1]["content"]  # rag's passages
    assert f"{features['bm25_margin']:.2f}" in result.settings["why"] and f"{auto.MAX_MARGIN:g}" in result.settings["why"]
    assert result.settings["retrieved"] and result.settings["candidates"] == "vanilla,rag,coa"


def test_a_chained_question_without_a_clear_passage_goes_to_coa():
    model, result = run(Task(unsure(), QUESTION), reply=quoting)
    features = result.settings["features"]
    assert features["relative_clause"] is True and features["bm25_margin"] <= auto.MAX_MARGIN
    assert result.settings["picked"] == "coa" and result.settings["cu"] == "evidence"
    assert [c.role for c in result.calls].count("manager") == 1 and len(result.calls) > 2
    assert "relative clause" in result.settings["why"]


def test_without_a_relative_clause_the_margin_does_not_send_it_to_coa():
    _, result = run(Task(unsure(), "What colour is the gardener's lamp?"))
    assert result.settings["features"]["relative_clause"] is False
    assert result.settings["features"]["bm25_margin"] <= auto.MAX_MARGIN and result.settings["picked"] == "rag"


@pytest.mark.parametrize("document", [confident, unsure])
def test_the_picked_strategys_calls_and_citations_are_the_runs(document):
    task = Task(document(), QUESTION)
    model, result = run(task, reply=quoting)
    direct_model, direct = run(task, name=result.settings["picked"], reply=quoting)
    assert model.prompts == direct_model.prompts
    assert [(c.role, c.index, c.output) for c in result.calls] == [(c.role, c.index, c.output) for c in direct.calls]
    assert result.answer == direct.answer and result.citations == direct.citations
    assert result.supported == direct.supported
    own = {k: v for k, v in result.settings.items() if k not in ("picked", "why", "features", "candidates")}
    assert own == direct.settings


def test_coas_citations_pass_through():
    _, result = run(Task(unsure(), QUESTION), reply=quoting)
    [citation] = result.citations
    assert citation.text == CLUE and unsure()[citation.start : citation.end] == CLUE


def test_the_trace_records_the_pick():
    _, result = run(Task(confident(), QUESTION))
    settings = json.loads(result.to_json())["settings"]
    assert settings["picked"] == "rag" and settings["why"].startswith("the document's")
    assert settings["features"]["kind"] == "qa" and settings["features"]["relative_clause"] is True


def test_one_candidate_is_always_picked():
    _, short = run(Task(" ".join(filler(10)), QUESTION), candidates="coa")
    assert short.settings["picked"] == "coa" and "not among the candidates (coa), so coa" in short.settings["why"]
    _, long = run(Task(confident(), QUESTION), candidates="vanilla")
    assert long.settings["picked"] == "vanilla" and long.settings["kept_tokens"] < long.settings["document_tokens"]
    _, fallback = run(Task(unsure(), QUESTION), candidates="vanilla,rag")
    assert fallback.settings["picked"] == "rag"


@pytest.mark.parametrize("candidates", ["vanilla,longrag", "", " , "])
def test_an_unknown_candidate_is_refused_in_one_line(candidates):
    with pytest.raises(ConfigError) as error:
        run(Task(confident(), QUESTION), candidates=candidates)
    assert "\n" not in str(error.value) and "choose from vanilla, rag, coa" in str(error.value)
    if candidates.strip(", "):
        assert "longrag" in str(error.value)


def test_other_kinds_follow_the_fixed_rule():
    long = {"document_tokens": 2000, "room": 400, "relative_clause": True, "bm25_margin": 0.0}
    assert auto.decide({**long, "kind": Kind.SUMMARIZE})[0] == "coa"
    assert auto.decide({**long, "kind": Kind.MCQ})[0] == "rag"
    assert auto.decide({**long, "kind": Kind.CODE})[0] == "rag"
    assert auto.decide({**long, "kind": Kind.QA})[0] == "coa"
    assert auto.decide({**long, "kind": Kind.QA, "bm25_margin": auto.MAX_MARGIN + 0.01})[0] == "rag"


def test_a_long_summary_goes_to_coa():
    _, result = run(Task(confident(), kind=Kind.SUMMARIZE))
    assert result.settings["picked"] == "coa" and "summary" in result.settings["why"]
