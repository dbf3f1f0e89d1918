"""Evidence grounding: keep only the sentences of a worker's output that its sources contain.

Question-answering workers are asked to copy evidence word for word. Small models
often write answer-shaped sentences that are in neither the chunk nor the previous
CU instead; passed on, such a sentence crowds out the real evidence further down
the chain. Grounding drops every sentence that no source supports.
"""

from __future__ import annotations

from collections.abc import Sequence

from rapidfuzz import fuzz

from coa.chunking import sentences

# partial_ratio of a sentence against its best-matching stretch of a source, 0-100:
# a copy with changed punctuation or line breaks scores above this, a paraphrase below.
MIN_SIMILARITY = 85


def grounded(output: str, sources: Sequence[str]) -> str:
    """The sentences of `output` found (nearly verbatim) in one of `sources`, one per line."""
    texts = [_normal(source) for source in sources if source.strip()]
    kept = []
    for sentence in sentences(output):
        text = _normal(sentence)
        if text and any(fuzz.partial_ratio(text, source) >= MIN_SIMILARITY for source in texts):
            kept.append(sentence.strip())
    return "\n".join(kept)


def _normal(text: str) -> str:
    return " ".join(text.lower().split())
