"""Chunking a very large document: time and peak memory.

Builds a document of --mb megabytes from real text (the essays of the shared haystack,
repeated; else the bundled play), then splits it into sentences and fills chunks for the
embedded model's tokenizer, as a CoA run does before its first call.

    python benchmarks/chunking.py --mb 50 [--budget 1800]
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from coa.chunking import chunk_text, sentences
from coa.models.registry import load_model

HERE = Path(__file__).resolve().parent
SOURCES = [Path(os.environ.get("COA_DATA_DIR", HERE.parents[1] / "shared" / "data")) / "haystack" / "paul_graham_essays.txt",
           HERE.parent / "examples" / "macbeth-act1.txt"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=float, default=50)
    parser.add_argument("--budget", type=int, default=1800, help="tokens per chunk")
    args = parser.parse_args()
    source = next(p for p in SOURCES if p.is_file())
    base = source.read_text(encoding="utf-8")
    text = (base * (int(args.mb * 2**20 / len(base)) + 1))[: int(args.mb * 2**20)]
    model = load_model("embedded")
    count = model.count_tokens
    count("warm up")  # the model loads outside the timing
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    units = len(sentences(text))
    split = time.perf_counter() - started
    chunks = chunk_text(text, args.budget, count)
    total = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tokens = sum(c.tokens for c in chunks)
    assert "".join(c.text for c in chunks) == text
    print(f"{len(text) / 2**20:.1f} MiB from {source.name}: {units:,} sentences in {split:.1f} s; "
          f"{len(chunks):,} chunks of <= {args.budget} tokens ({tokens:,} tokens) in {total:.1f} s in all; "
          f"peak memory {peak / 2**10:,.0f} MiB ({(peak - before) / 2**10:,.0f} MiB more than before)")


if __name__ == "__main__":
    main()
