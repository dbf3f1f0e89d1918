"""The response cache: one `coa eval` run cold (every call made, and stored), then the same run
again against the warm cache, in one process run of this script.

Printed: each run's wall time (the `coa eval` command, model load included), the speed-up, the
model calls the warm run made (0 is the target: every call answered from the file) and whether
the two runs' rows are identical (prediction, score, token counts).

    python benchmarks/cache.py [--model embedded] [--limit 4] [--length 2000] [--window 1024]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from coa.eval.store import Store

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("COA_DATA_DIR", HERE.parents[1] / "shared" / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--strategies", default="coa,rag")
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--length", type=int, default=2000, help="niah document tokens")
    parser.add_argument("--window", type=int, default=1024)
    args = parser.parse_args()
    coa = str(Path(sys.executable).with_name("coa"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        command = [coa, "eval", "--dataset", "niah", "--strategies", args.strategies, "--model", args.model,
                   "--window", str(args.window), "--limit", str(args.limit), "--opt", f"lengths={args.length}",
                   "--opt", "depths=0,0.5,1", "--data-dir", str(DATA), "--cache", str(root / "cache.sqlite")]
        seconds = {}
        for run in ("cold", "warm"):
            started = time.perf_counter()
            subprocess.run([*command, "--out", str(root / run)], check=True, stdout=subprocess.DEVNULL)
            seconds[run] = time.perf_counter() - started
        cold, warm = (sorted(Store(root / run).rows(traces=True), key=lambda r: (r["example"], r["strategy"]))
                      for run in ("cold", "warm"))
    made = sum(1 for row in warm for call in row["trace"]["calls"] if not call["from_cache"])
    fields = ("example", "strategy", "prediction", "score", "calls", "prompt_tokens", "completion_tokens")
    same = [{k: r[k] for k in fields} for r in cold] == [{k: r[k] for k in fields} for r in warm]
    print(f"{args.model}, niah at {args.length} tokens, window {args.window}, {len(cold)} pairs ({args.strategies})")
    print(f"cold: {seconds['cold']:.1f} s   warm: {seconds['warm']:.1f} s   speed-up: {seconds['cold'] / seconds['warm']:.1f}x")
    print(f"model calls in the warm run: {made}   rows identical: {same}")


if __name__ == "__main__":
    main()
