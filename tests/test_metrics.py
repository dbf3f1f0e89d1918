"""Metrics pinned on hand-checked cases."""

import math

import pytest

from coa.errors import ConfigError
from coa.eval.metrics import METRICS, score


def test_qa_f1_and_exact_match():
    # "The Eiffel Tower!" normalises to "eiffel tower"; against "eiffel tower in paris":
    # 2 common tokens, precision 2/2, recall 2/4, F1 = 2 * 1 * 0.5 / 1.5 = 2/3.
    assert score("qa_f1", "The Eiffel Tower!", ["Eiffel Tower in Paris"]) == pytest.approx(2 / 3)
    assert score("qa_f1", "Paris", ["London"]) == 0.0
    assert score("qa_f1", "paris", ["London", "Paris"]) == 1.0  # best reference counts
    assert score("exact_match", "The  Paris.", ["paris"]) == 1.0
    assert score("exact_match", "Paris, France", ["Paris"]) == 0.0


def test_rouge_is_the_geometric_mean_of_rouge_1_2_l():
    # reference "the cat sat on the mat" vs prediction "the cat is on the mat":
    # ROUGE-1 F = 5/6, ROUGE-2 F = 3/5 (the cat, on the, the mat), ROUGE-L F = 5/6.
    expected = (5 / 6 * 3 / 5 * 5 / 6) ** (1 / 3)
    assert score("rouge", "the cat is on the mat", ["the cat sat on the mat"]) == pytest.approx(expected)
    # LongBench's ROUGE-L counts each word of the common subsequence once: "the" is one, so 4 of 5.
    assert score("rougeL", "the cat is on the mat", ["the cat sat on the mat"]) == pytest.approx(0.8)
    assert score("rougeL", "", ["the cat sat on the mat"]) == 0.0  # LongBench's 0 for what it cannot score
    assert score("rouge", "dogs bark", ["the cat sat"]) == 0.0


def test_code_edit_similarity_uses_the_first_line():
    assert score("code_sim", "return x + 1\nprint(x)", ["return x + 1"]) == 1.0
    # The line as written: its indentation counts (12 of 16 and 12 characters match: 24/28, 86%).
    assert score("code_sim", "    return x + 1\nprint(x)", ["return x + 1"]) == 0.86
    # "return x + 2" vs "return x + 1": 11 of 12 characters match (22/24, 92%); fence and comment lines are skipped.
    assert score("code_sim", "```python\n# add one\nreturn x + 2\n```", ["return x + 1"]) == 0.92
    assert score("code_sim", "", ["return x"]) == 0.0


@pytest.mark.parametrize(("prediction", "reference", "expected"), [
    ("B", "(B) Their subconscious...", 1.0),
    ("The answer is (C).", "C", 1.0),
    ("Answer: A", "(B) text", 0.0),
    ("Based on the summary, D", "D", 1.0),
    ("I cannot tell", "A", 0.0),
])
def test_multiple_choice_letter_accuracy(prediction, reference, expected):
    assert score("choice", prediction, [reference], choices=4) == expected


def test_needle_recall():
    assert score("needle", "The special magic number is 7513902.", ["7513902"]) == 1.0
    assert score("needle", "It is 7513902, I think.", ["7513902 | 1234567"]) == 0.5
    assert score("needle", "No idea.", ["7513902"]) == 0.0


def test_longbench_classification_retrieval_and_count():
    classes = ["Location", "Human being", "Number", "Entity"]
    assert score("classification", "Human being", ["Human being"], all_classes=classes) == 1.0
    assert score("classification", "Human being or Number", ["Number"], all_classes=classes) == 0.5
    assert score("retrieval", "Paragraph 3", ["Paragraph 3"]) == 1.0
    assert score("retrieval", "3 or 4", ["Paragraph 3"]) == 0.5
    assert score("count", "There are 12 passages.", ["12"]) == 1.0


def test_every_metric_is_bounded_and_unknown_ones_are_refused():
    for name in METRICS:
        value = score(name, "some prediction 1", ["some reference 1"])
        assert 0.0 <= value <= 1.0 and not math.isnan(value)
    with pytest.raises(ConfigError, match="unknown metric 'bleu'"):
        score("bleu", "a", ["a"])
    with pytest.raises(ConfigError, match="did you mean 'qa_f1'"):
        score("qa-f1", "a", ["a"])


def test_bootstrap_interval_holds_the_mean_and_shrinks_with_more_examples():
    import random

    from coa.eval.stats import bootstrap_interval

    rng = random.Random(0)
    many = [float(rng.random() < 0.6) for _ in range(400)]
    few = many[:25]
    for values in (few, many):
        lo, hi = bootstrap_interval(values)
        assert lo < sum(values) / len(values) < hi
    assert bootstrap_interval(many)[1] - bootstrap_interval(many)[0] < 0.5 * (bootstrap_interval(few)[1] - bootstrap_interval(few)[0])
    assert bootstrap_interval(few) == bootstrap_interval(few)  # a fixed seed: reports read the same each time
    assert bootstrap_interval([0.0, 1.0]) == (0.0, 1.0)  # two values: the resampled means are 0, 0.5 and 1


def test_bootstrap_interval_of_values_that_do_not_vary_is_the_value():
    from coa.eval.stats import bootstrap_interval

    assert bootstrap_interval([0.7]) == (0.7, 0.7)
    assert bootstrap_interval([0.1] * 30) == (0.1, 0.1)
    with pytest.raises(ValueError):
        bootstrap_interval([])
