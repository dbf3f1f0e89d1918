from coa.grounding import check_support, cite, content_words, grounded
from coa.task import Citation, Kind

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


# -- the copy test: verbatim, or a long near copy with the same numbers ----------------------------
def test_a_short_line_near_some_stretch_of_the_text_is_not_a_copy():
    # "WILLIAM, a King." is within a few letters of "WILLIAM, a Kinsman" (partial ratio 87), but a short
    # line is near some stretch of any long text: it must be verbatim or rest on a sentence of the question.
    cast = "Enter WILLIAM, a Kinsman of the Duke.\nEnter BARDOLPH and NYM."
    assert grounded("WILLIAM, a King.", [cast], "Who is Bardolph?") == ""
    verbatim = "enter William, a  Kinsman of the Duke."  # case and spacing aside, the text's own line
    assert grounded(verbatim, [cast], "Who is Bardolph?") == verbatim


def test_a_long_near_copy_is_kept_only_with_the_sources_numbers():
    near = "the farmers counted 10 sheep before noon and the river ran high"  # punctuation and case changed
    assert grounded(near, [CHUNK], "Was the river high?") == near
    changed = "The farmers counted 12 sheep before noon, and the river ran high."  # partial ratio 98, another fact
    assert grounded(changed, [CHUNK], "Was the river high?") == ""


def test_words_are_compared_by_their_stem():
    assert content_words("The farmers counted sheep") == content_words("farmer counts sheeps")
    # "ordered" and "marching" are in the sentence as "order" and "march": the restatement rests on it.
    source = "The King gives the order to march on Harfleur at dawn."
    assert grounded("The king ordered the marching.", [source], "What did the king give?") == \
        "The king ordered the marching."
    assert grounded("The king ordered a retreat.", [source], "What did the king give?") == ""


# -- citations: the document's text, at its place --------------------------------------------------
def test_cite_places_verbatim_lines_and_restatements_and_nothing_else():
    offset = 1000
    cu = "\n".join([
        "Nobody in the village had seen the mayor since spring.",  # verbatim but for a line break
        "The special magic number for rustic-quartz mentioned in the provided text is 9591300.",  # a restatement
        "The farmers counted 12 sheep before noon, and the river ran high.",  # another number: not placed
        "The magic number is 4417.",  # invented
    ])
    found = cite(cu, CHUNK, offset, [], 2, QUERY)
    assert [c.line for c in found] == cu.splitlines()[:2]
    for c in found:
        assert c.text == CHUNK[c.start - offset : c.end - offset] and c.worker == 2
    assert found[0].text == "Nobody in the village\nhad seen the mayor since spring."
    assert found[1].text == "One of the special magic numbers for rustic-quartz is: 9591300."


def test_a_carried_line_keeps_its_first_place_and_a_recopied_one_with_changes_is_not_placed():
    [first] = cite("One of the special magic numbers for rustic-quartz is: 9591300.", CHUNK, 0, [], 0, QUERY)
    later = "The next part of the text says nothing about numbers."
    carried = cite("one of the special magic numbers for rustic-quartz is: 9591300.", later, 500, [first], 3, QUERY)
    assert carried == [first]  # the same line but for case: its citation from worker 0
    # Re-copied with a changed number, it is no longer the quote: it is not cited at all.
    assert cite("One of the special magic numbers for rustic-quartz is: 9591301.", later, 500, [first], 3, QUERY) == []


# -- whether an answer rests on its citations -------------------------------------------------------
EVIDENCE = [Citation("One of the special magic numbers for rustic-quartz is: 9591300.", 37, 100, 0)]


def test_an_answer_whose_words_are_cited_is_supported():
    assert check_support(Kind.QA, "9591300", QUERY, (), EVIDENCE) == (True, None)
    assert check_support(Kind.QA, "The magic number for rustic-quartz is 9591300.", QUERY, (), EVIDENCE) == (True, None)


def test_an_answer_with_a_word_no_citation_holds_is_not_supported():
    supported, warning = check_support(Kind.QA, "9591300 or 4417", QUERY, (), EVIDENCE)
    assert supported is False and warning.endswith("(not in any citation: 4417)")
    assert check_support(Kind.QA, "9591300", QUERY, (), []) == (
        False, "the answer is not supported: no evidence was cited")


def test_a_choice_is_checked_by_its_options_text():
    choices = ("9591300", "4417")
    assert check_support(Kind.MCQ, "A", QUERY, choices, EVIDENCE) == (True, None)
    assert check_support(Kind.MCQ, "(B)", QUERY, choices, EVIDENCE)[0] is False
    assert check_support(Kind.MCQ, "I cannot say", QUERY, choices, EVIDENCE) == (
        False, "the answer names no option, so no evidence can support it")


def test_an_answer_of_several_letters_is_checked_by_every_option_it_picks():
    choices = ("9591300", "rustic-quartz", "4417")
    assert check_support(Kind.MCQ, "AB", QUERY, choices, EVIDENCE) == (True, None)
    supported, warning = check_support(Kind.MCQ, "A, C", QUERY, choices, EVIDENCE)
    assert supported is False and warning.endswith("(not in any citation: 4417)")


def test_without_citations_or_for_summaries_and_code_support_is_not_checked():
    assert check_support(Kind.QA, "anything", QUERY, (), None) == (None, None)
    assert check_support(Kind.SUMMARIZE, "anything", "", (), EVIDENCE) == (None, None)
    assert check_support(Kind.CODE, "return 1", "", (), []) == (None, None)


def test_the_unsupported_warning_names_the_answers_own_words():
    _, warning = check_support(Kind.QA, "wolves", QUERY, (), EVIDENCE)
    assert warning.endswith("(not in any citation: wolves)")
