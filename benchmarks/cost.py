"""What the default CoA costs against reading the document once: its mean wall time per question on
8,000-token needle documents at window 2048, against one prefill of the whole document, in one run.

    .venv/bin/python benchmarks/cost.py [--model reader] [--documents 3] [--window 2048] [--length 8000]

The model loads once, with a context that holds the whole document, and serves both sides (the
chain's calls stay within --window, as `Session` enforces). The prefill is one completion of one
token over the document as the user message: what a long-window reader pays before it can say
anything. Load time is excluded from both. Goal: CoA at most 1.3x one prefill. One decoded token
costs about as much as four prefilled ones on two cores, so every line a worker echoes shows here.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from coa import ChainOfAgents, Config
from coa.eval.datasets import load
from coa.models.registry import load_model

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="reader")
    parser.add_argument("--documents", type=int, default=3)
    parser.add_argument("--window", type=int, default=2048)
    parser.add_argument("--length", type=int, default=8000)
    args = parser.parse_args()
    data = Path(os.environ.get("COA_DATA_DIR") or HERE.parents[1] / "shared" / "data")
    model = load_model(args.model, window=args.length + 1024)
    depths = ",".join(f"{(i + 0.5) / args.documents:.2f}" for i in range(args.documents))
    examples = load("niah", data_dir=data, options={"lengths": str(args.length), "depths": depths}, seed=0,
                    count_tokens=model.count_tokens)
    model.complete([{"role": "user", "content": "Hello."}], max_tokens=1)  # loads the model: not timed
    coa = ChainOfAgents(model, Config(window=args.window))
    chain_seconds, prefill_seconds = [], []
    print(f"model {args.model}, window {args.window}, niah documents of {args.length:,} tokens")
    for example in examples:
        started = time.perf_counter()
        model.complete([{"role": "user", "content": example.task.document}], max_tokens=1)
        prefill_seconds.append(time.perf_counter() - started)
        result = coa.run(example.task)
        chain_seconds.append(result.seconds)
        usage = result.usage
        right = any(ref in result.answer for ref in example.references)
        print(f"{example.id}: coa {result.seconds:.1f} s ({usage.calls} calls, {usage.prompt_tokens:,} prompt + "
              f"{usage.completion_tokens:,} completion tokens, {'right' if right else 'wrong'}); "
              f"one prefill {prefill_seconds[-1]:.1f} s", flush=True)
    ratio = statistics.fmean(chain_seconds) / statistics.fmean(prefill_seconds)
    print(f"mean: coa {statistics.fmean(chain_seconds):.1f} s, one prefill {statistics.fmean(prefill_seconds):.1f} s; "
          f"coa / prefill = {ratio:.2f}x (goal: 1.30x or less)")


if __name__ == "__main__":
    main()
