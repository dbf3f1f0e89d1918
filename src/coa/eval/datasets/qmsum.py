"""QMSum meetings with their specific and general queries (query-based summarization, ROUGE)."""

from __future__ import annotations

import json
from collections.abc import Iterator

from coa.errors import ConfigError
from coa.eval.datasets import Example, Source, dataset
from coa.task import Kind, Task


@dataset("qmsum", "QMSum meetings (split=test|val) with queries=specific|general|all, meetings of at most "
                  "max_tokens=N tokens (ROUGE)")
def qmsum(source: Source) -> Iterator[Example]:
    split = source.option("split", "test")
    which = source.option("queries", "specific")
    if which not in ("specific", "general", "all"):
        raise ConfigError("qmsum option queries must be specific, general or all")
    longest = source.option("max_tokens", 0, int, valid=lambda v: v >= 0, expected="a token count (0: any length)")
    for m, line in enumerate(source.file("qmsum", f"{split}.jsonl").open(encoding="utf-8")):
        meeting = json.loads(line)
        transcript = "\n".join(f"{turn['speaker']}: {turn['content']}" for turn in meeting["meeting_transcripts"])
        tokens = source.count_tokens(transcript) if longest else None
        if longest and tokens is not None and tokens > longest:
            continue
        for group in ("specific", "general"):
            if which not in (group, "all"):
                continue
            for q, item in enumerate(meeting[f"{group}_query_list"]):
                tokens = tokens or source.count_tokens(transcript)
                yield Example(
                    id=f"{split}-{m}-{group[0]}{q}",
                    task=Task(transcript, item["query"], Kind.SUMMARIZE),
                    references=[item["answer"]],
                    metric="rouge",
                    meta={"tokens": tokens, "meeting": m, "query_type": group},
                )
