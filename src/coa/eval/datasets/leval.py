"""L-Eval task files (leval:quality, leval:coursera, ...), each scored as its rows' `evaluation`
says; the rows are read by `coa.eval.datasets.leval_rows`, as hf:'s L-Eval layout reads them."""

from __future__ import annotations

from collections.abc import Iterator

from coa.eval.datasets import Example, Source, dataset
from coa.eval.datasets.jsonl import read_rows
from coa.eval.datasets.leval_rows import examples, metric_option, split_options

__all__ = ["leval", "split_options"]


@dataset("leval", "an L-Eval task file, leval:TASK (quality, coursera, tpo, sci_fi, gov_report_summ, multidoc_qa, "
                  "topic_retrieval_longchat, ...; metric)")
def leval(source: Source) -> Iterator[Example]:
    name = source.argument or "quality"
    metric = metric_option(source)
    path = source.file("leval", f"{name}.jsonl")
    rows = ((f"{path}:{n}", row) for n, row in read_rows(path))
    yield from examples(rows, str(path), name, source.count_tokens, metric, id_prefix=f"{name}-")
