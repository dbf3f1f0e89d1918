"""A user's own JSONL, and LongBench's files with LongBench's per-dataset metric.

jsonl:PATH rows: `context` (or `document`), `input` (or `question`/`query`, optional),
`answers` (a list, or `answer`), optional `choices` (a list: multiple choice), `kind`
(qa, mcq, summarize, code) and `metric`; `_id` or `id` names the row.
longbench:PATH rows are LongBench's: `context`, `input`, `answers`, `all_classes`,
`_id` and `dataset`; the dataset is `--opt name=...`, else each row's `dataset`, else
the file's name (hotpotqa.jsonl).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from coa.errors import InputError
from coa.eval.datasets import Example, Source, dataset
from coa.task import Kind, Task

_QA = "Answer the question based on the given passages. Only give the answer, no other words."
_SUMMARY = "Write a one-page summary of the whole text."
_CODE = "Write only the next line of code, nothing else."
# LongBench's English datasets: (task kind, LongBench's metric, the answer requirement).
LONGBENCH = {
    **{name: (Kind.QA, "qa_f1", _QA) for name in ("narrativeqa", "qasper", "multifieldqa_en", "hotpotqa", "2wikimqa", "musique")},
    "triviaqa": (Kind.QA, "qa_f1", "Answer the question. Only give the answer, no other words."),
    "gov_report": (Kind.SUMMARIZE, "rougeL", _SUMMARY),
    "multi_news": (Kind.SUMMARIZE, "rougeL", "Write a one-page summary of all the news."),
    "qmsum": (Kind.SUMMARIZE, "rougeL", "Answer the query in one or more sentences."),
    "samsum": (Kind.QA, "rougeL", "Summarize the dialogue in one or two sentences."),
    "trec": (Kind.QA, "classification", "Determine the type of the question. Reply with the type only."),
    "passage_count": (Kind.QA, "count", "How many different passages are there? Reply with the number only."),
    "passage_retrieval_en": (Kind.QA, "retrieval", "Which paragraph is the abstract from? Reply as 'Paragraph N'."),
    "lcc": (Kind.CODE, "code_sim", _CODE),
    "repobench-p": (Kind.CODE, "code_sim", _CODE),
}
DEFAULT_METRIC = {Kind.QA: "qa_f1", Kind.MCQ: "choice", Kind.SUMMARIZE: "rouge", Kind.CODE: "code_sim"}


def rows(source: Source) -> Iterator[tuple[int, dict]]:
    path = Path(source.argument)
    if not source.argument or not path.is_file():
        raise InputError(f"{source.argument or '(no path)'}: no such JSONL file")
    with path.open(encoding="utf-8") as lines:
        for n, line in enumerate(lines, 1):
            if line.strip():
                try:
                    yield n, json.loads(line)
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: not JSON ({e.msg})") from None


def _answers(row: dict) -> list[str]:
    answers = row.get("answers", row.get("answer", row.get("outputs")))
    return [str(a) for a in answers] if isinstance(answers, list) else [str(answers)]


@dataset("jsonl", "your own JSONL file: jsonl:PATH (context, input, answers, optional choices, kind, metric)")
def jsonl(source: Source) -> Iterator[Example]:
    for n, row in rows(source):
        document = row.get("context", row.get("document"))
        if document is None:
            raise InputError(f"{source.argument}:{n}: no 'context' or 'document' field")
        query = row.get("input") or row.get("question") or row.get("query") or None
        choices = tuple(row.get("choices") or ())
        kind = Kind(row.get("kind") or (Kind.MCQ if choices else Kind.QA if query else Kind.SUMMARIZE))
        yield Example(id=str(row.get("_id", row.get("id", n))), task=Task(document, query, kind, choices),
                      references=_answers(row), metric=row.get("metric") or DEFAULT_METRIC[kind], meta={})


@dataset("longbench", "a LongBench file: longbench:PATH, scored with LongBench's metric for that dataset")
def longbench(source: Source) -> Iterator[Example]:
    chosen = source.option("name", None)
    for n, row in rows(source):
        name = chosen or row.get("dataset") or Path(source.argument).stem.removesuffix("_e")
        if name not in LONGBENCH:
            raise InputError(f"LongBench dataset {name!r} is not supported; known: {', '.join(sorted(LONGBENCH))}")
        kind, metric, requirement = LONGBENCH[name]
        query = (row.get("input") or "").strip() or None
        if kind is Kind.QA and not query:
            query = requirement
        task = Task(row["context"], query, kind, requirement=requirement)
        yield Example(id=str(row.get("_id", n)), task=task, references=_answers(row), metric=metric,
                      meta={"dataset": name, "all_classes": row.get("all_classes") or [], "length": row.get("length")})
