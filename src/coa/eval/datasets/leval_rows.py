"""L-Eval rows, read alike by leval:TASK and by the L-Eval layout of hf:NAME.

A row is one document (`input`), lists of `instructions` and `outputs`, and how L-Eval
scores them (`evaluation`). Each question is one example:
- exam with lettered options, "(A) ..." or lines "A. ..." / "A) ...": multiple choice, scored
  by the option letter; where several options may be right (coursera, or a reference of several
  letters such as "ABD") by the set of letters;
- sci_fi (or a reference with a "[fact: ...]" tag): True/False as the story tells it and as it is
  in the world ("False [fact: True]"), scored by both verdicts;
- any other exam (topic retrieval): the answer itself, by exact match;
- rouge: a summary; f1 and em: a short answer.
Rows L-Eval leaves to a judge (LLM, human) have no automatic metric: they are skipped, and
their number said once per file on stderr; a file with nothing else is an error. A metric
given with --opt metric=... scores every row, those too.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from coa.answers import letter_list
from coa.errors import InputError
from coa.eval.datasets import Example, Source
from coa.eval.datasets.jsonl import make_task, text_field
from coa.task import LETTERS, Kind, Task

METRICS = {"exam": "choice", "rouge": "rouge", "f1": "qa_f1", "em": "exact_match", "exact_match": "exact_match"}
JUDGED = ("LLM", "human")  # L-Eval's `evaluation` for rows that a model or a person grades
SEVERAL = ("coursera",)  # tasks whose questions may have several right options
TRUE_FALSE = ("sci_fi",)
SEVERAL_REQUIREMENT = "One or more options may be correct. Reply with the letters of all the correct options only, such as AC."
TRUE_FALSE_REQUIREMENT = ("Answer True or False twice: first as the story tells it, then as it is in the real world "
                          'after "[fact:", in the form: False [fact: True]')

_OPTION = re.compile(r"\(([A-Z])\)\s*(.*?)\s*(?=\n\s*\([A-Z]\)|\Z)", re.DOTALL)
_LINE_OPTION = re.compile(r"[ \t]*([A-Z])[.)][ \t]+(.*)")


def split_options(instruction: str) -> tuple[str, list[str]]:
    """("question", ["option A", ...]) from L-Eval's "question\\n\\n (A) ...\\n (B) ..." layout, or
    from options on lines of their own, "A. ..." or "A) ..." (tpo, coursera); no options: ("question", [])."""
    first = re.search(r"\n\s*\(A\)", instruction)
    if not first:
        return _line_options(instruction)
    return instruction[: first.start()].strip(), [" ".join(text.split()) for _, text in _OPTION.findall(instruction[first.start():])]


def _line_options(instruction: str) -> tuple[str, list[str]]:
    lines = instruction.split("\n")
    start = next((n for n, line in enumerate(lines) if n and (m := _LINE_OPTION.fullmatch(line)) and m.group(1) == "A"), None)
    options: list[str] = []
    for line in lines[start:] if start is not None else []:
        m = _LINE_OPTION.fullmatch(line)
        if m and len(options) < len(LETTERS) and m.group(1) == LETTERS[len(options)]:
            options.append(m.group(2))
        elif options and line.strip():  # an option wrapped onto the next line
            options[-1] += " " + line
    if start is None or len(options) < 2:
        return instruction.strip(), []
    return "\n".join(lines[:start]).strip(), [" ".join(text.split()) for text in options]


def metric_option(source: Source) -> str | None:
    """--opt metric=...: one metric for every row, in place of `evaluation`'s."""
    from coa.eval.metrics import METRICS as KNOWN

    return source.option("metric", None, valid=lambda v: v in KNOWN, expected="one of " + ", ".join(sorted(KNOWN)))


def examples(rows: Iterable[tuple[str, dict]], where: str, name: str, count_tokens: Callable[[str], int],
             metric: str | None, id_prefix: str = "", evaluation_meta: bool = False) -> Iterator[Example]:
    """The examples of `rows`, (where each is, row) in order; `name` is the L-Eval task (coursera, ...).
    Ids are `id_prefix` + "document-question", the document being the row's place among all rows."""
    skipped: Counter[str] = Counter()
    given = 0
    for d, (at, row) in enumerate(rows):
        document, instructions, outputs = _fields(row, at)
        evaluation = row.get("evaluation")
        if metric is None and evaluation in JUDGED:
            skipped[evaluation] += len(instructions)
            continue
        tokens = count_tokens(document)  # once per document, not per question
        for q, (instruction, output) in enumerate(zip(instructions, outputs, strict=True)):
            task, chosen = question(at, name, document, instruction, str(output), evaluation, metric)
            meta = {"tokens": tokens, "document": d, **({"evaluation": evaluation} if evaluation_meta else {})}
            given += 1
            yield Example(id=f"{id_prefix}{d}-{q}", task=task, references=[str(output)], metric=chosen, meta=meta)
    if skipped:
        report_skipped(where, skipped, given)


def report_skipped(where: str, skipped: Counter[str], given: int) -> None:
    """One warning line for the file's rows left to a judge; an error where nothing else is left."""
    kinds = " or ".join(map(repr, sorted(skipped)))
    if not given:
        raise InputError(f"{where}: evaluation {kinds} has no automatic metric, and every question has it; "
                         f"choose one with --opt metric=...")
    counts = ", ".join(f"{kind} {n}" for kind, n in sorted(skipped.items()))
    print(f"warning: {where}: skipped {sum(skipped.values())} questions left to a judge (evaluation {counts}); "
          f"--opt metric=... scores them", file=sys.stderr)


def _fields(row: dict, at: str) -> tuple[str, list[str], list]:
    document = text_field(row, at, "input", required=True) or ""
    instructions, outputs = row.get("instructions"), row.get("outputs")
    if not (isinstance(instructions, list) and all(isinstance(i, str) for i in instructions)
            and isinstance(outputs, list) and len(instructions) == len(outputs)):
        raise InputError(f"{at}: 'instructions' (texts) and 'outputs' must be lists of the same length")
    return document, instructions, outputs


def question(at: str, name: str, document: str, instruction: str, output: str, evaluation: object,
             metric: str | None) -> tuple[Task, str]:
    """The task one instruction asks and the metric that scores it."""
    text, options = split_options(instruction)
    chosen = metric or _metric(at, name, evaluation, options, output)
    if chosen in ("choice", "choice_set"):
        requirement = SEVERAL_REQUIREMENT if chosen == "choice_set" else None
        return make_task(at, document, text, Kind.MCQ, tuple(options), requirement), chosen
    if chosen in ("rouge", "rougeL"):
        return make_task(at, document, instruction.strip(), Kind.SUMMARIZE), chosen
    requirement = TRUE_FALSE_REQUIREMENT if chosen == "true_false" else None
    return make_task(at, document, instruction.strip(), Kind.QA, (), requirement), chosen


def _metric(at: str, name: str, evaluation: object, options: list[str], output: str) -> str:
    known = METRICS.get(evaluation) if isinstance(evaluation, str) else None
    if known is None:
        raise InputError(f"{at}: evaluation {evaluation!r} has no automatic metric; choose one with --opt metric=...")
    if name in TRUE_FALSE or "[fact:" in output:
        return "true_false"
    if known != "choice":
        return known
    if len(options) < 2:  # an exam without lettered options (topic retrieval): the answer itself
        return "exact_match"
    several = name in SEVERAL or len(letter_list(output, len(options)) or "") > 1
    return "choice_set" if several else "choice"
