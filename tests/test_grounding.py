from coa.grounding import grounded

CHUNK = (
    "It was a cold morning in the valley. One of the special magic numbers for rustic-quartz is: 9591300. "
    "The farmers counted 10 sheep before noon, and the river ran high.\n"
    "Nobody in the village\nhad seen the mayor since spring."
)
QUERY = "What is the special magic number for rustic-quartz mentioned in the provided text?"


def test_a_verbatim_copy_is_kept_even_across_line_breaks():
    output = "Nobody in the village had seen the mayor since spring."
    assert grounded(output, [CHUNK], QUERY) == output


def test_a_restatement_in_the_questions_words_keeps_the_texts_fact():
    output = "The special magic number for rustic-quartz mentioned in the provided text is 9591300."
    assert grounded(output, [CHUNK], QUERY) == output


def test_an_answer_the_text_does_not_give_is_dropped():
    # "10" is in the chunk, but not in a sentence about the question.
    assert grounded("The special magic number for rustic-quartz mentioned in the provided text is 10.", [CHUNK], QUERY) == ""
    assert grounded("The magic number for rustic-quartz is 4417.", [CHUNK], QUERY) == ""


def test_a_sentence_that_only_repeats_the_question_or_a_fragment_is_dropped():
    assert grounded("Question: What is the special magic number for rustic-quartz?", [CHUNK], QUERY) == ""
    assert grounded("10.", [CHUNK], QUERY) == ""


def test_the_previous_cu_is_a_source_and_only_supported_sentences_survive():
    previous = "One of the special magic numbers for rustic-quartz is: 9591300."
    output = "The magic number for rustic-quartz is 9591300. The password is swordfish."
    assert grounded(output, ["The sun rose over the hills.", previous], QUERY) == "The magic number for rustic-quartz is 9591300."
