"""The peer strategies from the long-context literature (recite, readagent, memagent): their call
patterns, parsing and window budgets, with the scripted model."""

import dataclasses
import re

import pytest
from click.testing import CliRunner

from coa import Config, ConfigError, Kind, ScriptedModel, Task
from coa.cli import cli
from coa.fence import fence
from coa.strategies import get_strategy
from coa.strategies.options import parse_options
from coa.strategies.readagent import page_numbers
from coa.strategies.recite import read_recital

PEERS = ["recite", "readagent", "memagent"]
NEEDLE = "The lighthouse keeper hid the silver compass under the stairs."
QUESTION = "Where did the lighthouse keeper hide the silver compass?"


def document(sentences: int) -> str:
    return " ".join(f"Sentence number {i} tells of event {i} in the story." for i in range(sentences))


def with_needle(sentences: int, at: float = 0.5) -> str:
    text = document(sentences)
    cut = text.index("Sentence number", int(len(text) * at))
    return text[:cut] + NEEDLE + " " + text[cut:]


def user(messages):
    return messages[-1]["content"]


def numbers_in(text):
    return [int(n) for n in re.findall(r"Sentence number (\d+)", text)]


def run(name, task, *, window=1500, cu=40, reply=None, outputs=(), model=None, **options):
    model = model or ScriptedModel(outputs, reply=reply, context_window=window)
    result = get_strategy(name)(model, Config(window=window, max_cu_tokens=cu), options=options).run(task)
    return model, result


# -- shared ---------------------------------------------------------------------------------------
def test_the_peers_are_listed_with_their_options():
    listing = CliRunner().invoke(cli, ["strategies"])
    assert listing.exit_code == 0
    for name, option in [("recite", "evidence_tokens=256"), ("readagent", "lookups=2"), ("memagent", "memory_tokens=auto")]:
        assert f"\n{name} " in "\n" + listing.output and option in listing.output


@pytest.mark.parametrize(("name", "options", "message"), [
    ("recite", {"evidence_tokens": "8"}, "option evidence_tokens must be 16 to 4096, not 8"),
    ("recite", {"chunk_words": "0"}, "option chunk_words must be 1 or more, not 0"),
    ("readagent", {"lookups": "0"}, "option lookups must be 1 to 16, not 0"),
    ("readagent", {"page_tokens": "many"}, "option page_tokens: 'many' is not a valid int"),
    ("readagent", {"pages": "3"}, "strategy readagent has no option 'pages' (its options: gist_tokens, lookups, page_tokens)"),
    ("memagent", {"memory_tokens": "4"}, "option memory_tokens must be 16 or more, not 4"),
])
def test_bad_options_are_one_config_error(name, options, message):
    with pytest.raises(ConfigError) as error:
        parse_options(get_strategy(name), options)
    assert str(error.value) == message
    with pytest.raises(ConfigError):
        get_strategy(name)(ScriptedModel(), options=options)


@pytest.mark.parametrize("name", ["readagent", "memagent"])
@pytest.mark.parametrize("kind", [Kind.SUMMARIZE, Kind.CODE])
def test_question_strategies_refuse_other_kinds_in_one_line(name, kind):
    model = ScriptedModel(context_window=1500)
    with pytest.raises(ConfigError, match=f"^strategy {name} answers questions \\(qa and mcq tasks\\), not {kind} tasks$"):
        get_strategy(name)(model, Config(window=1500)).run(Task(document(50), None, kind))
    assert not model.prompts


@pytest.mark.parametrize("name", PEERS)
def test_multiple_choice_prompts_show_the_lettered_options(name):
    task = Task(document(120), "Which event came first?", Kind.MCQ, choices=("event 0", "event 9"))
    model, result = run(name, task, reply=lambda m: "A")
    assert "Options:\nA. event 0\nB. event 9\n" in user(model.prompts[-1])
    assert result.answer == "A"


@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("window", [500, 900, 2500])
@pytest.mark.parametrize("words", [3, 400])
def test_no_peer_sends_a_prompt_beyond_the_window(name, window, words):
    # Session.call refuses (ContextOverflowError) a prompt that would not fit with its generation limit,
    # so a peer that budgets wrong fails this run instead of finishing it.
    model, result = run(name, Task(with_needle(150), QUESTION), window=window, reply=lambda m: "word " * words)
    assert model.prompts and len(model.prompts) == len(result.calls)


# -- recite ---------------------------------------------------------------------------------------
def test_recite_returns_the_answer_and_keeps_the_evidence():
    reply = f"Evidence: {NEEDLE}\nAnswer: Under the stairs."
    model, result = run("recite", Task(with_needle(300), QUESTION), reply=lambda m: reply, chunk_words=40)
    assert len(model.prompts) == 1 and NEEDLE in user(model.prompts[0])
    assert "Evidence:" in user(model.prompts[0]) and "Answer:" in user(model.prompts[0])
    assert result.answer == "Under the stairs."
    assert result.settings["evidence"] == NEEDLE and result.settings["recited"] is True
    assert result.settings["parsed"] == "marker"
    retrieved = result.settings["retrieved"]
    assert retrieved == sorted(retrieved) and len(retrieved) < result.settings["passages"]


def test_recite_leaves_room_for_the_recital():
    model, _ = run("recite", Task(document(300), "Who?"), evidence_tokens=200)
    assert model.max_tokens == [200 + 64]  # the evidence's room on top of the QA answer's


@pytest.mark.parametrize(("output", "expected"), [
    ("Evidence: The king dies.\nAnswer: Macbeth", ("The king dies.", "Macbeth", "marker")),
    ("**Evidence:** The king dies.\n**Answer:** Macbeth", ("The king dies.", "Macbeth", "marker")),
    ("Evidence: He gave his answer: no.\nFinal answer: yes", ("He gave his answer: no.", "yes", "marker")),
    ("Evidence: The king dies. Answer: Macbeth", ("The king dies.", "Macbeth", "marker")),
    ("Evidence: The king dies.\nMacbeth", ("The king dies.", "Macbeth", "last line")),
    ("Macbeth", ("", "Macbeth", "whole output")),
    ("", ("", "", "whole output")),
])
def test_recite_reads_the_answer_part(output, expected):
    assert read_recital(output) == expected


def test_recite_notes_a_reply_without_an_answer_line():
    _, result = run("recite", Task(document(50), "Who?"), outputs=["Evidence: Sentence number 3.\n\nBanquo\n"])
    assert result.answer == "Banquo" and result.settings["parsed"] == "last line"
    assert "no Answer: line" in result.calls[0].note


def test_recite_without_a_question_is_rag():
    task = Task(document(200), None, Kind.SUMMARIZE)
    rag_model, rag = run("rag", task)
    model, result = run("recite", task)
    assert model.prompts == rag_model.prompts and model.max_tokens == rag_model.max_tokens
    assert result.settings["retrieved"] == rag.settings["retrieved"]
    assert result.settings["recited"] is False and result.settings["evidence"] == ""


# -- readagent ------------------------------------------------------------------------------------
def reader(lookup_reply):
    """Gists name the page's first sentence; the look-up replies as told; the reader answers."""
    def reply(messages):
        text = user(messages)
        if "Shorten this page" in text:
            return f"gist of {numbers_in(text)[0]}"
        if "Which pages should be read again" in text:
            return lookup_reply
        return "the answer"
    return reply


def gist_calls(result):
    return [c for c in result.calls if c.role == "gist"]


def test_readagent_gists_each_page_once_then_looks_up_and_answers():
    model, result = run("readagent", Task(document(120), "Who?"), reply=reader("I would read pages 5 and 2."), page_tokens=100)
    pages = result.settings["pages"]
    assert [c.role for c in result.calls] == ["gist"] * pages + ["lookup", "reader"] and pages > 5
    read = [numbers_in(user(c.messages)) for c in gist_calls(result)]
    assert [n for page in read for n in page] == list(range(120))  # every page gisted once, in order
    assert [c.index for c in gist_calls(result)] == list(range(pages))
    assert result.settings["chosen"] == [5, 2] and result.settings["fallback"] is False
    assert result.settings["expanded"] == [2, 5]
    answer = user(model.prompts[-1])
    for page in range(1, pages + 1):
        if page in (2, 5):  # the page's own text in place of its gist
            assert f"Page {page} (text): <page-" in answer and all(f"Sentence number {n} " in answer for n in read[page - 1])
        else:
            assert f"Page {page} (gist): {fence(f'gist of {read[page - 1][0]}', 'gist')}" in answer
    lookup = user(model.prompts[-2])
    assert all(f"Page {i + 1}: {fence(f'gist of {read[i][0]}', 'gist')}" in lookup for i in range(pages))
    assert result.answer == "the answer"


def test_readagent_falls_back_to_bm25_when_no_page_is_named():
    text = with_needle(120, at=0.7)
    _, result = run("readagent", Task(text, QUESTION), reply=reader("None of them: the gists say nothing."),
                    page_tokens=100, lookups=1)
    needle_page = next(c.index + 1 for c in gist_calls(result) if NEEDLE in user(c.messages))
    assert result.settings["fallback"] is True and result.settings["chosen"] == [needle_page]
    lookup = next(c for c in result.calls if c.role == "lookup")
    assert "BM25" in lookup.note
    assert NEEDLE in user(result.calls[-1].messages)


def test_readagent_reads_every_page_when_there_are_no_more_than_lookups():
    _, result = run("readagent", Task(document(30), "Who?"), reply=reader("1"), page_tokens=200, lookups=2)
    assert result.settings["pages"] == 2 and [c.role for c in result.calls] == ["gist", "gist", "reader"]
    assert result.settings["chosen"] == [1, 2] and numbers_in(user(result.calls[-1].messages)) == list(range(30))


def test_readagent_cuts_gists_and_pages_to_fit_the_window():
    def reply(messages):
        text = user(messages)
        if "Shorten this page" in text:
            return "gist " * 120
        return "3, 4" if "Which pages" in text else "the answer"
    model, result = run("readagent", Task(document(400), "Who?"), reply=reply, window=1200, page_tokens=300, lookups=2)
    assert result.settings["page_budget"] == 300 and result.settings["expanded"]  # and it ran: everything fitted


def test_readagent_says_when_the_gists_cannot_fit():
    with pytest.raises(ConfigError, match="the gists of .* pages do not fit a 600-token window"):
        run("readagent", Task(document(400), "Who?"), reply=lambda m: "gist", window=600, page_tokens=32)


@pytest.mark.parametrize(("reply", "pages", "most", "expected"), [
    ("Pages: 3, 7", 10, 2, [2, 6]),
    ("7, 3, 7, 12, 0, 1", 10, 3, [6, 2, 0]),  # repeats and numbers out of range skipped
    ("Page 4 <gist-0123456789> and 2", 10, 2, [3, 1]),  # a copied fence tag's digits are no page
    ("no page helps", 10, 2, []),
    ("3-5", 10, 2, [2, 4]),
])
def test_readagent_reads_page_numbers(reply, pages, most, expected):
    assert page_numbers(reply, pages, most) == expected


# -- memagent -------------------------------------------------------------------------------------
def memory_in(messages):
    """The memory a prompt shows, or "" where it shows none."""
    found = re.search(r"<memory-[0-9a-f]+>\n(.*?)\n</memory-[0-9a-f]+>", user(messages), re.DOTALL)
    return found.group(1) if found else ""


def test_memagent_rewrites_the_memory_each_chunk_and_answers_from_it_alone():
    def reply(messages):
        text = user(messages)
        if "Write the new memory" in text:
            return "memory after section " + re.search(r"Section (\d+) of", text).group(1)
        return "the answer"
    model, result = run("memagent", Task(document(300), "Who?"), reply=reply, memory_tokens=30)
    chunks = result.settings["chunks"]
    assert [c.role for c in result.calls] == ["worker"] * chunks + ["manager"] and chunks > 2
    workers = result.workers
    assert memory_in(workers[0].messages) == "" and "(empty" in user(workers[0].messages)
    for i, call in enumerate(workers[1:], start=1):
        assert memory_in(call.messages) == f"memory after section {i}"  # the previous memory, replaced, not appended
    read = [n for call in workers for n in numbers_in(user(call.messages))]
    assert read == list(range(300))
    final = user(model.prompts[-1])
    assert memory_in(model.prompts[-1]) == f"memory after section {chunks}" and not numbers_in(final)
    assert "Question: Who?" in final and result.answer == "the answer"
    assert result.settings["memory_tokens"] == 30 and model.max_tokens[:-1] == [30] * chunks


class Verbose(ScriptedModel):
    """Writes far more than its generation limit allows: the memory must still be cut to size."""

    def complete(self, messages, **kwargs):
        completion = super().complete(messages, **kwargs)
        return dataclasses.replace(completion, text="remembered fact " * 200)


@pytest.mark.parametrize("memory_tokens", [None, 25])
def test_memagent_never_passes_on_more_than_the_memory_size(memory_tokens):
    model = Verbose(context_window=900)
    _, result = run("memagent", Task(document(150), "Who?"), model=model, window=900, cu=40,
                    **({"memory_tokens": memory_tokens} if memory_tokens else {}))
    size = memory_tokens or 40  # auto: the CU limit
    assert result.settings["memory_tokens"] == size
    assert all(limit == size for limit in model.max_tokens[:-1])
    for call in result.workers:
        assert model.count_tokens(call.cu) <= size and call.note == "memory cut to memory_tokens"
    for messages in model.prompts:
        assert model.count_tokens(memory_in(messages)) <= size


def test_memagent_keeps_the_memory_when_a_reply_is_empty():
    _, result = run("memagent", Task(document(300), "Who?"), outputs=["first memory", "  "], memory_tokens=20)
    second = result.workers[1]
    assert second.cu == "first memory" and second.note == "empty reply: memory kept"
    assert memory_in(result.workers[2].messages) == "first memory"
