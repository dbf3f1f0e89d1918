"""LongBench-compatible metrics, registered by name. Each scores one prediction against
its references and keeps the best match; scores are in [0, 1]. Other packages add metrics
through the `chainofagents.metrics` entry point group: a function
`(prediction, reference, **context) -> float`."""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache

from coa.answers import choice_letter, choice_letters, normalize_answer
from coa.extras import require
from coa.registry import Registry

Metric = Callable[..., float]  # (prediction, reference, **context) -> score
METRICS: Registry[Metric] = Registry("metric", "chainofagents.metrics")  # the built-ins are below
metric = METRICS.register


def score(name: str, prediction: str, references: Sequence[str], **context) -> float:
    """The best score of `prediction` over `references` by metric `name`."""
    fn = METRICS.get(name)
    return max((fn(prediction, r, **context) for r in references), default=0.0)


@metric("qa_f1")
def qa_f1(prediction: str, reference: str, **context) -> float:
    """Token F1 after SQuAD normalisation (LongBench's qa_f1_score)."""
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


@metric("exact_match")
def exact_match(prediction: str, reference: str, **context) -> float:
    """1 when prediction and reference are equal after SQuAD normalisation."""
    return float(normalize_answer(prediction) == normalize_answer(reference))


@metric("contains")
def contains(prediction: str, reference: str, **context) -> float:
    """1 when the normalised reference appears in the normalised prediction."""
    return float(normalize_answer(reference) in normalize_answer(prediction))


@cache
def _rouge():
    rouge_scorer = require("rouge_score.rouge_scorer", "eval", "ROUGE scoring")
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    return {k: v.fmeasure for k, v in _rouge().score(reference, prediction).items()}


@metric("rouge")
def rouge(prediction: str, reference: str, **context) -> float:
    """Geometric mean of ROUGE-1, ROUGE-2 and ROUGE-L F1 (the Chain-of-Agents paper's summary metric)."""
    values = rouge_scores(prediction, reference).values()
    return math.prod(values) ** (1 / 3) if all(v > 0 for v in values) else 0.0


@cache
def _longbench_rouge():
    return require("rouge", "eval", "ROUGE-L scoring").Rouge(metrics=["rouge-l"])


@metric("rougeL")
def rouge_l(prediction: str, reference: str, **context) -> float:
    """ROUGE-L F as LongBench's rouge_score computes it: the `rouge` package's, summary-level over
    sentences split at periods, on whitespace tokens without stemming."""
    try:
        return float(_longbench_rouge().get_scores([prediction], [reference], avg=True)["rouge-l"]["f"])
    except Exception:  # noqa: BLE001  (as LongBench: what the package cannot score, an empty or very long text, scores 0)
        return 0.0


@metric("code_sim")
def code_sim(prediction: str, reference: str, **context) -> float:
    """Edit similarity of the first line of code, as LongBench's code_sim_score computes it: the first
    line that is not blank and holds none of ` # //, as written (its indentation kept), against the
    reference by difflib's ratio in whole percents (fuzzywuzzy's `fuzz.ratio`); 0 where either is empty."""
    lines = prediction.split("\n")
    line = next((text for text in lines if text.strip() and not any(mark in text for mark in ("`", "#", "//"))), "")
    if not line or not reference:
        return 0.0
    return round(100 * difflib.SequenceMatcher(None, line, reference).ratio()) / 100


@metric("needle")
def needle(prediction: str, reference: str, **context) -> float:
    """Share of the needle values (separated by " | ") that appear in the prediction."""
    values = [v.strip() for v in reference.split(" | ") if v.strip()]
    return sum(v.lower() in prediction.lower() for v in values) / len(values) if values else 0.0


@metric("choice")
def choice(prediction: str, reference: str, choices: int = 4, **context) -> float:
    """1 when the prediction picks the reference's option letter (the reference: "B", or "(B) text")."""
    expected = choice_letter(reference, choices)
    return float(expected is not None and choice_letter(prediction, choices) == expected)


@metric("choice_set")
def choice_set(prediction: str, reference: str, choices: int = 4, **context) -> float:
    """Where several options may be right (L-Eval's coursera, reference "ABD"): 1 for exactly the
    reference's letters, 0.25 for some of them and no other (as L-Eval scores coursera), else 0."""
    expected, picked = set(choice_letters(reference, choices)), set(choice_letters(prediction, choices))
    if not expected or not picked:
        return 0.0
    return 1.0 if picked == expected else 0.25 if picked < expected else 0.0


_TRUE_FALSE = re.compile(r"\b(true|false)\b", re.IGNORECASE)


def true_false_parts(text: str) -> list[str]:
    """The two verdicts of "False [fact: True]": the first true/false word before "[fact:" and the
    first after it (without the tag, the second true/false word); a verdict not given is ""."""
    before, tag, after = text.partition("[fact:")
    words = [w.lower() for w in _TRUE_FALSE.findall(before)]
    fact = [w.lower() for w in _TRUE_FALSE.findall(after)] if tag else words[1:]
    return [words[0] if words else "", fact[0] if fact else ""]


@metric("true_false")
def true_false(prediction: str, reference: str, **context) -> float:
    """L-Eval's sci_fi: the share of the two verdicts (as the story tells it, and "[fact: ...]" as
    it is in the world) the prediction gets right; a reference without the tag has one verdict."""
    expected, given = true_false_parts(reference), true_false_parts(prediction)
    pairs = [(e, g) for e, g in zip(expected, given, strict=True) if e]
    return sum(e == g for e, g in pairs) / len(pairs) if pairs else 0.0


_ANSWER_PHRASE = (re.compile(r"The correct answer is \(([A-D])\)"), re.compile(r"The correct answer is ([A-D])"))


def answer_phrase(text: str) -> str | None:
    """The letter of LongBench v2's "The correct answer is (X)" (its authors' two patterns, the
    bracketed one first); None where the reply has neither."""
    text = text.replace("*", "")  # as theirs: markdown bold around the phrase
    return next((m.group(1) for pattern in _ANSWER_PHRASE if (m := pattern.search(text))), None)


@metric("answer_phrase")
def answer_phrase_choice(prediction: str, reference: str, **context) -> float:
    """LongBench v2: 1 when the reply ends its reasoning with "The correct answer is (X)" for the
    reference's letter X; a reply without that phrase scores 0."""
    return float(answer_phrase(prediction) == reference.strip().strip("()"))


@metric("classification")
def classification(prediction: str, reference: str, all_classes: Sequence[str] = (), **context) -> float:
    """LongBench's classification_score: credit shared among the classes the prediction names."""
    named = [c for c in all_classes if c in prediction]
    named = [c for c in named if not (c in reference and c != reference)]
    if not all_classes:
        return float(reference in prediction)
    return 1.0 / len(named) if reference in named else 0.0


@metric("retrieval")
def retrieval(prediction: str, reference: str, **context) -> float:
    """LongBench's retrieval_score: the share of numbers in the prediction that name the right paragraph."""
    wanted = re.findall(r"Paragraph (\d+)", reference)
    numbers = re.findall(r"\d+", prediction)
    return sum(n == wanted[0] for n in numbers) / len(numbers) if wanted and numbers else 0.0


@metric("count")
def count(prediction: str, reference: str, **context) -> float:
    """LongBench's count_score: the share of numbers in the prediction equal to the reference."""
    numbers = re.findall(r"\d+", prediction)
    return sum(n == str(reference) for n in numbers) / len(numbers) if numbers else 0.0
