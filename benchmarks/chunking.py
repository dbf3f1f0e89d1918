"""Chunking a very long document with the embedded model's tokenizer: time and peak memory.

Builds a document of about --tokens tokens from real text (the essays of the shared haystack,
repeated; else the bundled play), then does what a CoA run does before its first call:
tokenizes it once (token offsets) and cuts chunks of --budget tokens at sentence ends. The
target is 1M tokens in at most 2 s. For comparison it also times the way chunks were made
before the token index: every sentence counted through the tokenizer on its own (--per-sentence).

    python benchmarks/chunking.py [--tokens 1000000] [--budget 1800] [--per-sentence]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from coa.chunking import chunk_text, sentences, token_index
from coa.models.registry import load_model

HERE = Path(__file__).resolve().parent
SOURCES = [Path(os.environ.get("COA_DATA_DIR", HERE.parents[1] / "shared" / "data")) / "haystack" / "paul_graham_essays.txt",
           HERE.parent / "examples" / "macbeth-act1.txt"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000, help="about this many tokens in the document")
    parser.add_argument("--budget", type=int, default=1800, help="tokens per chunk")
    parser.add_argument("--rounds", type=int, default=3, help="timed repeats; the best is reported")
    parser.add_argument("--per-sentence", action="store_true", help="also time counting every sentence on its own")
    args = parser.parse_args()
    source = next(p for p in SOURCES if p.is_file())
    base = source.read_text(encoding="utf-8")
    model = load_model("embedded")
    per_char = model.count_tokens(base[:100_000]) / len(base[:100_000])
    chars = int(args.tokens / per_char)
    text = (base * (chars // len(base) + 1))[:chars]
    model.token_offsets("warm up")  # the model and its vocabulary load outside the timing
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        index = token_index(text, model.count_tokens, model.token_offsets)
        tokenized = time.perf_counter() - started
        chunks = chunk_text(text, args.budget, index, count=model.count_tokens)
        times.append((time.perf_counter() - started, tokenized))
    total, tokenized = min(times)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert "".join(c.text for c in chunks) == text
    over = [c for c in chunks[:200] if model.count_tokens(c.text) > args.budget + 4]
    print(f"{len(text) / 2**20:.1f} MiB from {source.name}, {index.tokens:,} tokens on {os.cpu_count()} cores: "
          f"tokenized in {tokenized:.2f} s, {len(chunks):,} chunks of <= {args.budget} tokens in {total:.2f} s in all "
          f"(best of {args.rounds}); peak memory {peak / 2**10:,.0f} MiB ({(peak - before) / 2**10:,.0f} MiB more); "
          f"of the first 200 chunks, {len(over)} count more than budget + 4 tokens on their own")
    if args.per_sentence:
        started = time.perf_counter()
        parts = sentences(text)
        counted = sum(model.count_tokens(s) for s in parts)
        print(f"per sentence, as before the index: {len(parts):,} sentences counted one by one ({counted:,} tokens) "
              f"in {time.perf_counter() - started:.2f} s, before any chunk is filled")


if __name__ == "__main__":
    main()
