import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coa.chunking import TokenIndex, chunk_text, sentences, token_index
from coa.models.scripted import ScriptedModel

model = ScriptedModel()
count = model.count_tokens


def chunks_of(text, budget, *, lines=False, exact=True):
    """Chunks by the tokenizer's offsets, or (exact=False) by counts of blocks checked per chunk."""
    index = token_index(text, count, model.token_offsets if exact else None)
    return chunk_text(text, budget, index, lines=lines, count=count)

words = st.sampled_from(["alpha", "beta,", "gamma.", "Delta", "epsilon!", "zeta?", "\n", "\n\n", "eta;", "x" * 30, "é", "3.14"])
texts = st.lists(words, min_size=1, max_size=400).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(text=texts, budget=st.integers(min_value=1, max_value=120), lines=st.booleans(), exact=st.booleans())
def test_chunks_tile_the_text_within_budget(text, budget, lines, exact):
    chunks = chunks_of(text, budget, lines=lines, exact=exact)
    assert "".join(c.text for c in chunks) == text  # nothing lost, nothing repeated, in order
    position = 0
    for chunk in chunks:
        assert chunk.start == position and chunk.end > chunk.start
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.tokens == count(chunk.text) <= budget
        position = chunk.end
    assert position == len(text)


def test_sentences_are_not_split_when_they_fit():
    text = "The cat sat on the mat. The dog barked loudly at it. Birds sang in the tall trees."
    chunks = chunks_of(text, 10)  # each sentence is 7 tokens
    assert [c.text.strip() for c in chunks] == [
        "The cat sat on the mat.",
        "The dog barked loudly at it.",
        "Birds sang in the tall trees.",
    ]


def test_greedy_fill_packs_several_sentences():
    text = "One two. Three four. Five six. Seven eight."
    assert [c.text for c in chunks_of(text, 6)] == ["One two. Three four. ", "Five six. Seven eight."]


def test_a_sentence_longer_than_the_budget_is_cut_between_words():
    text = " ".join(f"word{i}" for i in range(50)) + "."
    chunks = chunks_of(text, 10)
    assert len(chunks) >= 5
    assert all(c.tokens <= 10 for c in chunks)
    assert all(c.text.endswith(" ") for c in chunks[:-1])  # cuts fall after a space, not inside a word


def test_code_is_split_on_line_boundaries():
    code = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(30))
    chunks = chunks_of(code, 25, lines=True)
    assert len(chunks) > 3
    assert all(c.text.endswith("\n") for c in chunks)
    assert "".join(c.text for c in chunks) == code


def test_budget_must_be_positive():
    with pytest.raises(ValueError):
        chunks_of("text", 0)


def test_sentences_keep_their_whitespace():
    text = "First one. Second one!  Third?"
    assert sentences(text) == ["First one. ", "Second one!  ", "Third?"]


def test_sentences_are_split_in_bounded_blocks_that_tile_the_text(monkeypatch):
    from coa import chunking

    seen = []
    splitter = chunking._sentence_splitter()
    real = splitter.span_tokenize

    class Recording:
        def span_tokenize(self, text):
            seen.append(len(text))
            return real(text)

    monkeypatch.setattr(chunking, "_sentence_splitter", lambda: Recording())
    paragraph = "The king rode north. His men followed him at dawn.\n\n"
    one_line = "word " * 9000 + "end.\n\n"  # no paragraph or line break for 45,000 characters
    text = paragraph * 1000 + one_line + paragraph * 10
    parts = chunking.sentences(text)
    assert "".join(parts) == text
    assert max(seen) <= chunking.BLOCK_CHARS and len(seen) > 3
    assert parts[0] == "The king rode north. " and parts[1] == "His men followed him at dawn.\n\n"
    assert sum(p == "The king rode north. " for p in parts) == 1010  # no sentence lost at a block edge


prose = st.lists(
    st.tuples(st.integers(min_value=1, max_value=12), st.sampled_from([". ", "! ", "? ", ".\n", ".\n\n"])), min_size=1, max_size=80
).map(lambda parts: "".join(" ".join(f"w{i}" for i in range(n)).capitalize() + end for n, end in parts))


@settings(max_examples=150, deadline=None)
@given(text=prose, budget=st.integers(min_value=13, max_value=60))
def test_chunks_are_the_greedy_packing_of_whole_sentences(text, budget):
    # The paper's Algorithm 2: add sentences while they fit. Every sentence here fits alone.
    expected, current = [], ""
    for sentence in sentences(text):
        if current and count(current + sentence) > budget:
            expected.append(current)
            current = ""
        current += sentence
    expected.append(current)
    assert [c.text for c in chunks_of(text, budget)] == expected


def test_the_index_counts_and_reaches_by_token_starts():
    index = TokenIndex(np.array([0, 4, 4, 9, 12]), 15)
    assert index.tokens == 5
    assert index.count(0, 15) == 5 and index.count(0, 4) == 1 and index.count(4, 9) == 2 and index.count(5, 12) == 1
    assert index.reach(0, 1) == 4 and index.reach(0, 2) == 4 and index.reach(0, 3) == 9  # 4 holds two tokens
    assert index.reach(9, 1) == 12 and index.reach(9, 2) == 15 and index.reach(10, 5) == 15


def test_without_offsets_tokens_are_counted_per_block_and_per_chunk_not_per_sentence():
    text = "The king rode north with all his men. " * 3000  # 3000 sentences
    calls = []

    def counting(t):
        calls.append(len(t))
        return count(t)

    index = token_index(text, counting)
    assert not index.exact and index.tokens == count(text)
    blocks = len(calls)
    chunks = chunk_text(text, 500, index, count=counting)
    assert all(c.tokens == count(c.text) <= 500 for c in chunks)
    assert "".join(c.text for c in chunks) == text
    assert blocks <= len(text) // 3000 and len(calls) - blocks <= 3 * len(chunks)


def test_a_window_tokenizes_its_document_once_however_often_it_is_cut():
    from coa import Config, ScriptedModel, Task
    from coa.window import Window

    model = ScriptedModel(context_window=4096)
    indexed = []  # the texts the tokenizer's offsets were asked for
    offsets = model.token_offsets
    model.token_offsets = lambda text: indexed.append(text) or offsets(text)
    document = " ".join(f"Sentence {i} says something." for i in range(400))
    window = Window(model, Config(window=512))
    task = Task(document=document, query="What?")
    first = window.chunks(task, 100)
    again = window.chunks(task, 60, within=first[1])
    assert "".join(c.text for c in first) == document and "".join(c.text for c in again) == first[1].text
    assert indexed == [document]  # one pass of the tokenizer for both cuts
    window.chunks(Task(document=document[:-1], query="What?"), 100)
    assert len(indexed) == 2  # another document is indexed anew
    assert window.size == 512 and window.cu_tokens == Config(window=512).cu_limit(512)


def test_a_sentence_does_not_end_at_a_name_abbreviation():
    text = "Edward Davis Wood Jr. (1924-1978) was an American filmmaker. Dr. Smith met him. He left."
    assert sentences(text) == ["Edward Davis Wood Jr. (1924-1978) was an American filmmaker. ", "Dr. Smith met him. ",
                               "He left."]


def test_a_paragraph_always_starts_a_sentence():
    text = "The plantation of Ed Wood Sr.\n\nPassage 17:\nTom Nowatzke was a running back. He ran.\n\nA heading\n\nText."
    assert sentences(text) == ["The plantation of Ed Wood Sr.\n\n", "Passage 17:\nTom Nowatzke was a running back. ",
                               "He ran.\n\n", "A heading\n\n", "Text."]
