"""HotpotQA dev questions padded with paragraphs of other questions to a target length
(as LongBench and RULER build long multi-hop inputs); gold paragraphs at seeded positions."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator

from coa.eval.datasets import Example, Source, dataset
from coa.task import Kind, Task

FILE = ("hotpotqa", "dev_distractor_first2000.jsonl")


def passage(title: str, sentences: list[str]) -> str:
    return f"{title}\n{''.join(sentences).strip()}"


@dataset("hotpotqa", "HotpotQA dev questions padded with other questions' paragraphs to length=N tokens (F1)")
def hotpotqa(source: Source) -> Iterator[Example]:
    length = source.option("length", 6000, int, valid=lambda v: v > 0, expected="a token count above 0")
    rows = [json.loads(line) for line in source.file(*FILE).open(encoding="utf-8")]
    pool = [passage(t, s) for row in rows for t, s in row["context"]]
    count = source.count_tokens
    for row in rows:
        rng = random.Random(f"{source.seed}/{row['_id']}")
        gold_titles = {title for title, _ in row["supporting_facts"]}
        gold = [passage(t, s) for t, s in row["context"] if t in gold_titles]
        own = [passage(t, s) for t, s in row["context"] if t not in gold_titles]
        room = length - sum(count(p) + 4 for p in gold)
        distractors, used = [], 0
        for text in own + [pool[i] for i in rng.sample(range(len(pool)), min(len(pool), 4 * length // 50))]:
            if text in gold or text in distractors:
                continue
            cost = count(text) + 4  # "Passage N:" and line breaks
            if used + cost > room:
                break
            distractors.append(text)
            used += cost
        rng.shuffle(distractors)
        slots = sorted(rng.sample(range(len(distractors) + len(gold)), len(gold)))
        passages = list(distractors)
        for slot, text in zip(slots, gold, strict=False):
            passages.insert(slot, text)
        document = "\n\n".join(f"Passage {i + 1}:\n{text}" for i, text in enumerate(passages))
        yield Example(
            id=row["_id"],
            task=Task(document, row["question"], Kind.QA),
            references=[row["answer"]],
            metric="qa_f1",
            meta={"length": length, "tokens": count(document), "passages": len(passages),
                  "gold_positions": [s / max(1, len(passages) - 1) for s in slots], "type": row["type"]},
        )
