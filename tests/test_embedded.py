"""The real embedded model (SmolLM2-135M through llama.cpp): small documents, real answers."""

import json

import numpy as np
import pytest

from coa import ContextOverflowError
from coa.models.base import count_prompt
from coa.models.llamacpp import LoopGuard
from conftest import EXAMPLE_PLAY, run_cli

pytestmark = pytest.mark.model

NEEDLE = "The secret password to the castle vault is BLUE-HARBOR-42."


def test_loop_guard_stops_exact_and_counting_loops():
    digits = np.zeros(100, dtype=bool)
    digits[[5, 6, 7]] = True  # pretend tokens 5-7 are digits
    prompt = [50, 51, 52]
    newlines = np.zeros(100, dtype=bool)
    exact = LoopGuard(len(prompt), digits, newlines)
    text = prompt + [10, 11]
    for _ in range(6):
        text += [20, 21, 22, 23]
        if exact(np.array(text), None):
            break
    assert exact.kept is not None and exact.kept.tolist() == [10, 11, 20, 21, 22, 23]

    counting = LoopGuard(len(prompt), digits, newlines)
    loop = [30, 31, 5, 32]  # "Guard 1." "Guard 2." ... differ only in the digit token
    stream = prompt + [loop[0], loop[1], 5, loop[3], loop[0], loop[1], 6, loop[3], loop[0], loop[1], 7, loop[3]]
    stream += [loop[0], loop[1], 5, loop[3]]
    assert any(counting(np.array(stream[:n]), None) for n in range(len(prompt) + 1, len(stream) + 1))

    honest = LoopGuard(len(prompt), digits, newlines)
    varied = prompt + list(range(60, 100))
    assert not any(honest(np.array(varied[:n]), None) for n in range(len(prompt) + 1, len(varied) + 1))


def test_token_counts_and_usage_match_the_tokenizer(embedded):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    completion = embedded.complete(messages, max_tokens=8)
    prompt, _ = embedded.format(messages)
    exact = len(embedded._llm.tokenize(prompt.encode(), add_bos=True, special=True))
    assert completion.prompt_tokens == exact <= count_prompt(embedded, messages)
    assert 0 < completion.completion_tokens <= 8
    assert embedded.count_tokens("hello world") == 2
    assert embedded.context_window == 2048


def test_an_oversized_prompt_is_a_context_overflow(embedded):
    with pytest.raises(ContextOverflowError):
        embedded.complete([{"role": "user", "content": "word " * 3000}], max_tokens=8)


def haystack(books, tokens_wanted, embedded):
    """~tokens_wanted tokens of Hamlet with the needle at the middle paragraph break."""
    text = (books / "hamlet.txt").read_text()
    start = text.index("ACT I.")
    body = text[start : start + 40000]
    while embedded.count_tokens(body) > tokens_wanted:
        body = body[: int(len(body) * 0.95)]
    middle = body.index("\n\n", len(body) // 2)
    return body[:middle] + "\n\n" + NEEDLE + "\n\n" + body[middle:]


def test_needle_in_the_middle_comes_back(books, embedded, tmp_path):
    path = tmp_path / "haystack.txt"
    path.write_text(haystack(books, 6000, embedded))
    result = run_cli("ask", path, "What is the secret password to the castle vault?", "--window", "2048", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    workers = [c for c in data["calls"] if c["role"] == "worker"]
    assert len(workers) >= 3 and data["calls"][-1]["role"] == "manager"
    assert "BLUE-HARBOR-42" in data["answer"]
    assert data["settings"]["rechunks"] == 0 and data["token_counter"] == "model tokenizer"  # chunks fit first time
    for call in data["calls"]:
        assert call["prompt_tokens"] + call["completion_tokens"] <= 2048
    # The needle sits in a middle chunk, so the chain carried it through later workers.
    assert "BLUE-HARBOR-42" not in workers[0]["cu"] and "BLUE-HARBOR-42" in workers[-1]["cu"]
    assert_cited_in_the_documents_words(data, path.read_text())
    assert any("BLUE-HARBOR-42" in c["text"] for c in data["citations"])


def assert_cited_in_the_documents_words(data: dict, document: str) -> None:
    """Every citation's text is the document's own slice at its offsets."""
    for citation in data["citations"]:
        assert citation["text"] == document[citation["start"] : citation["end"]], citation


@pytest.fixture(scope="module")
def needle_file(books, embedded, tmp_path_factory):
    path = tmp_path_factory.mktemp("needle") / "haystack.txt"
    path.write_text(haystack(books, 6000, embedded))
    return path


@pytest.mark.parametrize("strategy", ["coa", "coa-multipath", "vanilla", "rag", "merge", "hierarchical", "mapreduce",
                                      "recite", "readagent", "memagent", "longagent", "longrag", "rlm", "graphreader", "auto"])
def test_every_strategy_runs_on_the_real_model(strategy, needle_file, embedded):
    result = run_cli("ask", needle_file, "What is the secret password to the castle vault?",
                     "--strategy", strategy, "--window", "2048", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["strategy"] == strategy and data["answer"].strip()
    assert data["usage"]["calls"] == len(data["calls"]) >= 1
    for call in data["calls"]:
        prompt, _ = embedded.format(call["messages"])
        # The trace's counts are the model's own: the prompt as its tokenizer reads it.
        assert call["prompt_tokens"] == len(embedded._llm.tokenize(prompt.encode(), add_bos=True, special=True))
        assert 0 < call["completion_tokens"] and call["prompt_tokens"] + call["completion_tokens"] <= 2048
    assert_cited_in_the_documents_words(data, needle_file.read_text())
    print(f"{strategy}: {data['answer']!r} ({len(data['calls'])} calls)")


def test_summarize_a_play(tmp_path):
    result = run_cli("summarize", EXAMPLE_PLAY, "--window", "2048", "--max-cu-tokens", "128", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    workers = [c for c in data["calls"] if c["role"] == "worker"]
    assert len(workers) >= 3
    assert all(w["output"].strip() for w in workers)
    assert len(data["answer"].split()) >= 10


def test_loop_guard_stops_a_line_that_keeps_coming_back():
    digits, newlines = np.zeros(100, dtype=bool), np.zeros(100, dtype=bool)
    newlines[9] = True  # token 9 is a line break
    guard = LoopGuard(0, digits, newlines)
    line, other, short = [40, 41, 42, 43, 44], [60, 61, 62, 63, 64, 65], [70, 71]
    stream = line + [9] + other + [9] + short + [9] + line + [9] + short + [9] + [66, 67, 68, 69, 50] + [9] + line + [9]
    stops = [n for n in range(1, len(stream) + 1) if guard(np.array(stream[:n]), None)]
    assert stops == [len(stream)]  # the third copy of the line, not the recurring short one
    assert guard.kept.tolist() == line + [9] + other + [9] + short + [9]


def test_token_offsets_tile_the_text_and_match_the_count(embedded):
    text = EXAMPLE_PLAY.read_text()[:30000] + " Fin — café, naïve, 東京. 🙂 done."
    starts = embedded.token_offsets(text)
    assert len(starts) == embedded.count_tokens(text)
    assert starts[0] == 0 and all(a <= b for a, b in zip(starts, starts[1:], strict=False)) and starts[-1] < len(text)
    pieces = [text[a:b] for a, b in zip(starts, [*starts[1:], len(text)], strict=True)]
    assert "".join(pieces) == text
    # Whole-word tokens stand where the word does.
    assert text[starts[-1] :] == " done." or text[starts[-2] :].startswith(" done")


def test_several_questions_read_once_give_the_answers_of_separate_runs(books, embedded):
    from coa import ChainOfAgents, Config, Task

    document = haystack(books, 1200, embedded)
    questions = ["What is the secret password to the castle vault?", "Who is the ghost?"]
    config = Config(window=768, max_cu_tokens=48)
    alone = [ChainOfAgents(embedded, config).run(Task(document, q)) for q in questions]
    together = ChainOfAgents(embedded, config).run_many([Task(document, q) for q in questions])
    # Both questions' workers read the chunks the longer question reads alone. (Answers can differ
    # from the separate runs' in rare cases: a prompt evaluated in two parts, its prefix cached, gives
    # logits that differ in the last bits, which greedy decoding of a small model can turn on;
    # benchmarks/reuse.py counts how often.)
    spans = [[c.span for c in r.workers] for r in [*together, alone[0]]]
    assert spans[0] == spans[1] == spans[2]
    assert all(r.answer.strip() for r in together) and len(together[0].workers) >= 2
    # The second question's workers found their chunk already evaluated: most of each prompt came from the cache.
    for first, second in zip(together[0].workers, together[1].workers, strict=True):
        assert first.span == second.span and second.cached_tokens > second.prompt_tokens // 2
    evaluated = lambda results: sum(c.prompt_tokens - c.cached_tokens for r in results for c in r.calls)  # noqa: E731
    assert evaluated(together) < 0.75 * evaluated(alone)
