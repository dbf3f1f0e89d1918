import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coa.chunking import chunk_text, sentences
from coa.models.scripted import ScriptedModel

count = ScriptedModel().count_tokens

words = st.sampled_from(["alpha", "beta,", "gamma.", "Delta", "epsilon!", "zeta?", "\n", "\n\n", "eta;", "x" * 30, "é", "3.14"])
texts = st.lists(words, min_size=1, max_size=400).map(" ".join)


@settings(max_examples=200, deadline=None)
@given(text=texts, budget=st.integers(min_value=1, max_value=120), lines=st.booleans())
def test_chunks_tile_the_text_within_budget(text, budget, lines):
    chunks = chunk_text(text, budget, count, lines=lines)
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
    chunks = chunk_text(text, 10, count)  # each sentence is 7 tokens
    assert [c.text.strip() for c in chunks] == [
        "The cat sat on the mat.",
        "The dog barked loudly at it.",
        "Birds sang in the tall trees.",
    ]


def test_greedy_fill_packs_several_sentences():
    text = "One two. Three four. Five six. Seven eight."
    assert [c.text for c in chunk_text(text, 6, count)] == ["One two. Three four. ", "Five six. Seven eight."]


def test_a_sentence_longer_than_the_budget_is_cut_between_words():
    text = " ".join(f"word{i}" for i in range(50)) + "."
    chunks = chunk_text(text, 10, count)
    assert len(chunks) >= 5
    assert all(c.tokens <= 10 for c in chunks)
    assert all(c.text.endswith(" ") for c in chunks[:-1])  # cuts fall after a space, not inside a word


def test_code_is_split_on_line_boundaries():
    code = "".join(f"def f{i}(x):\n    return x + {i}\n\n" for i in range(30))
    chunks = chunk_text(code, 25, count, lines=True)
    assert len(chunks) > 3
    assert all(c.text.endswith("\n") for c in chunks)
    assert "".join(c.text for c in chunks) == code


def test_budget_must_be_positive():
    with pytest.raises(ValueError):
        chunk_text("text", 0, count)


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
