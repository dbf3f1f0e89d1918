"""LongBench v2: four-option questions over long texts, answered in a sentence.

longbench2:PATH reads the rows as published: `_id`, `domain`, `sub_domain`, `difficulty`
(easy, hard), `length` (short, medium, long), `question`, `choice_A` to `choice_D`, `answer`
(the right letter) and `context`, from a JSON list (its data.json) or a JSONL file. The reply
must end with "The correct answer is (X)"; the letter is read from that phrase as LongBench v2's
own scorer reads it (metric answer_phrase), and a reply without it scores 0.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from coa.errors import InputError
from coa.eval.datasets import Example, Source, dataset
from coa.eval.datasets.jsonl import json_type, make_task, read_rows, row_id, text_field
from coa.task import Kind

LETTERS = "ABCD"
REQUIREMENT = 'Reply with the letter of the one correct option, in the form: The correct answer is (X)'
META = ("domain", "sub_domain", "difficulty", "length")


@dataset("longbench2", "a LongBench v2 file: longbench2:PATH (a JSON list or JSONL of its rows), scored by the letter "
                       "of \"The correct answer is (X)\"")
def longbench2(source: Source) -> Iterator[Example]:
    yield from examples(read(source.argument))


def read(argument: str) -> Iterator[tuple[str, dict]]:
    """(where, row) for each row of a JSON list or a JSONL file."""
    path = Path(argument)
    if not argument or not path.is_file():
        raise InputError(f"{argument or '(no path)'}: no such JSON or JSONL file")
    with path.open("rb") as file:
        whole = file.read(4096).lstrip().startswith(b"[")  # data.json as published: one list
    if not whole:
        yield from ((f"{path}:{n}", row) for n, row in read_rows(path))
        return
    try:
        rows = json.loads(path.read_text(encoding="utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(f"{path}: not a JSON list ({getattr(e, 'msg', None) or 'not UTF-8 text'})") from None
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise InputError(f"{path} item {n}: expected a JSON object, not {json_type(row)}")
        yield f"{path} item {n}", row


def examples(rows: Iterable[tuple[str, dict]], metric: str | None = None) -> Iterator[Example]:
    """One multiple-choice example per row; `metric` replaces answer_phrase."""
    for n, (at, row) in enumerate(rows, 1):
        choices = tuple(text_field(row, at, f"choice_{letter}", required=True) or "" for letter in LETTERS)
        answer = (text_field(row, at, "answer", required=True) or "").strip()
        if answer not in LETTERS:
            raise InputError(f"{at}: 'answer' must be one of the letters A, B, C, D, not {answer[:20]!r}")
        task = make_task(at, text_field(row, at, "context", required=True), text_field(row, at, "question", required=True),
                         Kind.MCQ, choices, REQUIREMENT)
        yield Example(id=row_id(row, at, n, ("_id",)), task=task, references=[answer], metric=metric or "answer_phrase",
                      meta={key: row.get(key) for key in META})
