"""A user's own JSONL, and LongBench's files with LongBench's per-dataset metric.

jsonl:PATH rows: `context` (or `document`), `input` (or `question`/`query`, optional),
`answers` (a list, or `answer`), optional `choices` (a list: multiple choice), `kind`
(qa, mcq, summarize, code) and `metric`; `_id` or `id` (a text or a whole number) names the row.
longbench:PATH rows are LongBench's: `context`, `input`, `answers`, `all_classes`,
`_id` and `dataset`; the dataset is `--opt name=...`, else each row's `dataset`, else
the file's name (hotpotqa.jsonl).
"""

from __future__ import annotations

import json
import sys
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
    """(line number, object) for each non-blank line of the file."""
    path = Path(source.argument)
    if not source.argument or not path.is_file():
        raise InputError(f"{source.argument or '(no path)'}: no such JSONL file")
    return read_rows(path)


def read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of the JSONL file at `path`."""
    with path.open("rb") as lines:
        for n, raw in enumerate(lines, 1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise InputError(f"{path}:{n}: not UTF-8 text (byte {e.start + 1} of the line)") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{n}: not JSON ({e.msg})") from None
            except RecursionError:
                raise InputError(f"{path}:{n}: nested too deeply to read") from None
            except ValueError:  # Python reads no integer of more digits than its limit
                raise InputError(f"{path}:{n}: a number of more than {sys.get_int_max_str_digits()} digits") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}:{n}: expected a JSON object, not {json_type(row)}")
            yield n, row


def json_type(value: object) -> str:
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return names.get(type(value), "null")


def text_field(row: dict, where: str, *keys: str, required: bool = False) -> str | None:
    """The first of `keys` that `row` gives a value, which must be a text."""
    for key in keys:
        value = row.get(key)
        if value is not None and value != "":
            if not isinstance(value, str):
                raise InputError(f"{where}: {key!r} must be a text, not {json_type(value)}")
            return no_nul(value, where, key)
    if required:
        raise InputError(f"{where}: no {' or '.join(map(repr, keys))} field")
    return None


def no_nul(text: str, where: str, key: str) -> str:
    # A NUL is binary data, not text; C-string backends (llama.cpp) would also cut the text there.
    if "\x00" in text:
        raise InputError(f"{where}: {key!r} holds a NUL character (U+0000): binary data, not text")
    return text


def choices_field(row: dict, where: str) -> list[str]:
    choices = row.get("choices") or []
    if not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)):
        raise InputError(f"{where}: 'choices' must be a list of texts")
    return [no_nul(c, where, "choices") for c in choices]


def row_id(row: dict, where: str, default: int, keys: tuple[str, ...] = ("_id", "id")) -> str:
    """The row's id: the first of `keys` it has, a non-empty text or a whole number; else `default`
    (its line number). Results are stored and written by id, so no other value may stand in."""
    for key in keys:
        if key in row:
            value = row[key]
            if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, str) and not value.strip()):
                raise InputError(f"{where}: {key!r} must be a non-empty text or a whole number, not "
                                 f"{json.dumps(value)[:40] if isinstance(value, str) else json_type(value)}")
            return str(value)
    return str(default)


def references(value: object, where: str, key: str = "answers") -> list[str]:
    """Reference answers: a text or a list of texts (numbers are read as their text); none for null."""
    if value is None:
        return []
    answers = value if isinstance(value, list) else [value]
    for i, answer in enumerate(answers, 1):
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            entry = f" (entry {i})" if isinstance(value, list) else ""
            raise InputError(f"{where}: {key!r} must be a text or a list of texts, not {json_type(answer)}{entry}")
    return [str(a) for a in answers]


def _answers(row: dict, where: str) -> list[str]:
    key = next((k for k in ("answers", "answer", "outputs") if k in row), "answers")
    if row.get(key) is None:
        raise InputError(f"{where}: no 'answers' field (a list of reference answers)")
    return references(row[key], where, key)


def make_task(where: str, *args) -> Task:
    try:
        return Task(*args)
    except InputError as e:  # an empty context, a question missing, ...
        raise InputError(f"{where}: {e}") from None


@dataset("jsonl", "your own JSONL file: jsonl:PATH (context, input, answers, optional choices, kind, metric)")
def jsonl(source: Source) -> Iterator[Example]:
    from coa.eval.metrics import METRICS

    for n, row in rows(source):
        where = f"{source.argument}:{n}"
        document = text_field(row, where, "context", "document", required=True)
        query = text_field(row, where, "input", "question", "query")
        choices = choices_field(row, where)
        kind = row.get("kind") or (Kind.MCQ if choices else Kind.QA if query else Kind.SUMMARIZE)
        if kind not in [k.value for k in Kind]:
            raise InputError(f"{where}: unknown kind {kind!r}; use one of: {', '.join(k.value for k in Kind)}")
        metric = row.get("metric") or DEFAULT_METRIC[Kind(kind)]
        if metric not in METRICS:  # found now, not when the first answer is scored
            raise InputError(f"{where}: unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
        yield Example(id=row_id(row, where, n), task=make_task(where, document, query, kind, tuple(choices)),
                      references=_answers(row, where), metric=metric, meta={})


@dataset("longbench", "a LongBench file: longbench:PATH, scored with LongBench's metric for that dataset")
def longbench(source: Source) -> Iterator[Example]:
    chosen = source.option("name", None)
    for n, row in rows(source):
        name = chosen or row.get("dataset") or Path(source.argument).stem.removesuffix("_e")
        if name not in LONGBENCH:
            raise InputError(f"LongBench dataset {name!r} is not supported; known: {', '.join(sorted(LONGBENCH))}")
        kind, metric, requirement = LONGBENCH[name]
        where = f"{source.argument}:{n}"
        query = (text_field(row, where, "input") or "").strip() or None
        if kind is Kind.QA and not query:
            query = requirement
        task = make_task(where, text_field(row, where, "context", required=True), query, kind, (), requirement)
        yield Example(id=row_id(row, where, n, ("_id",)), task=task, references=_answers(row, where), metric=metric,
                      meta={"dataset": name, "all_classes": row.get("all_classes") or [], "length": row.get("length")})
