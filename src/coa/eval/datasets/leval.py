"""L-Eval task files (leval:quality, leval:gov_report_summ, ...), each with its own metric."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

from coa.eval.datasets import Example, Source, dataset
from coa.task import Kind, Task

_OPTION = re.compile(r"\(([A-Z])\)\s*(.*?)\s*(?=\n\s*\([A-Z]\)|\Z)", re.DOTALL)


def split_options(instruction: str) -> tuple[str, list[str]]:
    """("question", ["option A", ...]) from L-Eval's "question\\n\\n (A) ...\\n (B) ..." layout."""
    first = re.search(r"\n\s*\(A\)", instruction)
    if not first:
        return instruction.strip(), []
    return instruction[: first.start()].strip(), [" ".join(text.split()) for _, text in _OPTION.findall(instruction[first.start():])]


@dataset("leval", "an L-Eval task file, leval:TASK (quality, gov_report_summ, multidoc_qa, topic_retrieval_longchat)")
def leval(source: Source) -> Iterator[Example]:
    name = source.argument or "quality"
    for d, line in enumerate(source.file("leval", f"{name}.jsonl").open(encoding="utf-8")):
        row = json.loads(line)
        tokens = source.count_tokens(row["input"])
        for q, (instruction, output) in enumerate(zip(row["instructions"], row["outputs"], strict=False)):
            question, options = split_options(instruction)
            if row["evaluation"] == "exam" and len(options) >= 2:
                task, metric = Task(row["input"], question, Kind.MCQ, tuple(options)), "choice"
            elif row["evaluation"] == "rouge":
                task, metric = Task(row["input"], instruction.strip(), Kind.SUMMARIZE), "rouge"
            else:
                task, metric = Task(row["input"], instruction.strip(), Kind.QA), ("qa_f1" if row["evaluation"] == "f1" else "exact_match")
            yield Example(id=f"{name}-{d}-{q}", task=task, references=[output], metric=metric,
                          meta={"tokens": tokens, "document": d})
