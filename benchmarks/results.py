"""Reproduce benchmarks/RESULTS.md: the reader model at window 1024 on documents about four times longer.

    .venv/bin/python benchmarks/results.py [--runs benchmarks/results] [--phases core,peers] [--only SET,...] [--tables-only]

Each set runs with `coa eval` into its own store under --runs (benchmarks/results/SET/results.sqlite,
committed as each set finishes), resumably: an interrupted reproduction continues where it stopped,
and later phases add strategies to the same runs. The rows: closed book (`vanilla:truncate=all`: the
question without the document, the share of a score that needs no reading), vanilla (the document truncated to the
window), full context (vanilla with a window that holds the whole document: the long-window anchor),
rag, the paper's CoA (`coa:cu=paper`) and the default CoA (`coa`: the evidence CU); phase `peers`
adds recite. The tables in RESULTS.md (between the markers) are then rewritten from the stored
results; the text around them is kept. Sets run in the order below, most telling first. Expect
about seven hours on two CPU cores for the core phase (about 9.5 minutes an example for its five rows).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from coa.eval.stats import bootstrap_interval
from coa.eval.store import Store

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
PLOTS = HERE / "results"
BEGIN, END = "<!-- tables: written by benchmarks/results.py -->", "<!-- /tables -->"
MODEL = "reader"
WINDOW = 1024
PAPER = "coa:cu=paper"  # the paper's CoA: every worker rewrites the CU, no guard, no grounding
DEFAULT = "coa"  # the default: the evidence CU


CLOSED = "vanilla:truncate=all"  # closed book: the question alone, so what the model knows without reading


def core(full_window: int) -> list[str]:
    return [CLOSED, "vanilla", f"vanilla:window={full_window}", "rag", PAPER, DEFAULT]


RUNS = {  # set: (dataset, dataset options, examples, strategies by phase)
    "multihop": ("multihop", ["lengths=4000", "count=20"], None, {"core": core(8192), "peers": ["recite"]}),
    "niah": ("niah", ["lengths=4000", "depths=0,0.25,0.5,0.75,1", "per_cell=2"], None,
             {"core": core(8192), "peers": ["recite"]}),
    "hotpotqa": ("hotpotqa", ["length=4000"], 20, {"core": core(8192), "peers": ["recite"]}),
    "niah-multikey": ("niah", ["lengths=4000", "depths=0,0.25,0.5,0.75,1", "per_cell=2", "variant=multikey"], None,
                      {"core": core(8192)}),
    "leval-quality": ("leval:quality", [], 10, {"core": core(16384)}),
    "qmsum": ("qmsum", ["queries=specific", "max_tokens=8000"], 10, {"core": core(16384)}),
}


def command(dataset: str, options: list[str], limit: int | None, strategies: list[str], out: Path) -> list[str]:
    args = ["coa", "eval", "--dataset", dataset, "--strategies", ",".join(strategies), "--model",
            MODEL, "--window", str(WINDOW), "--seed", "0", "--out", str(out)]
    args += [a for option in options for a in ("--opt", option)]
    return args + (["--limit", str(limit)] if limit else []) + (["--resume"] if (out / Store.FILE).exists() else [])


def run(args: argparse.Namespace) -> None:
    coa = str(Path(sys.executable).with_name("coa"))
    # The shared data beside the checkout, unless COA_DATA_DIR names another place.
    data = os.environ.get("COA_DATA_DIR") or str(HERE.parents[1] / "shared" / "data")
    for phase in args.phases.split(","):
        for name, (dataset, options, limit, phases) in RUNS.items():
            if phase in phases and (not args.only or name in args.only.split(",")):
                cmd = command(dataset, options, limit, phases[phase], args.runs / name)
                print("$", " ".join(cmd), flush=True)
                subprocess.run([coa, *cmd[1:]], check=True, env={**os.environ, "COA_DATA_DIR": data})


def best_coa(store: Store, dataset: str) -> str:
    """A summary line: the best-scoring CoA configuration against each baseline, with the paired
    interval of the difference, and its model time against RAG's."""
    rows = [r for r in store.rows(dataset) if r["error"] is None and r["score"] is not None]
    by = {s: {r["example"]: r for r in rows if r["strategy"] == s} for s in dict.fromkeys(r["strategy"] for r in rows)}
    mean = {s: float(np.mean([r["score"] for r in v.values()])) for s, v in by.items()}
    seconds = {s: float(np.mean([r["seconds"] for r in v.values()])) for s, v in by.items()}
    chains = [s for s in by if s.split(":")[0] == "coa"]
    if not chains or "rag" not in by:
        return ""
    best = max(chains, key=lambda s: (mean[s], -seconds[s]))
    parts = [f"best CoA `{best}` {100 * mean[best]:.1f}"]
    for other in ("rag", "vanilla"):
        shared = sorted(by[best].keys() & by[other].keys())
        lo, hi = bootstrap_interval([by[best][e]["score"] - by[other][e]["score"] for e in shared])
        parts.append(f"vs {other} {100 * mean[other]:.1f}: Δ {100 * (mean[best] - mean[other]):+.1f} "
                     f"(95% CI {100 * lo:+.1f} to {100 * hi:+.1f})")
    parts.append(f"model time {seconds[best] / seconds['rag']:.2f}x RAG's")
    return "**Summary:** " + "; ".join(parts) + "."


def cited(store: Store, dataset: str) -> str:
    """For needle datasets: of the right CoA answers, how many name a citation that holds the answer."""
    rows = [r for r in store.rows(dataset, traces=True) if r["metric"] == "needle" and r["score"] == 1
            and r["strategy"].split(":")[0] == "coa" and r["trace"]]
    if not rows:
        return ""
    backed = sum(all(any(ref in c["text"] for c in r["trace"].get("citations", [])) for ref in r["refs"]) for r in rows)
    return (f"**Citations:** {backed} of the {len(rows)} right CoA answers (all configurations) carry a citation "
            f"that holds the answer, quoted from the document at the offsets given.")


def tables(args: argparse.Namespace) -> None:
    coa = str(Path(sys.executable).with_name("coa"))
    sections = []
    for directory, (dataset, options, limit, _phases) in RUNS.items():
        out = args.runs / directory
        if not (out / Store.FILE).exists():
            continue
        store = Store(out, read_only=True)
        ran = {r["strategy"] for r in store.rows(dataset)}
        # In the order they were asked for, over all phases; one stopped before any pair finished is left out.
        strategies = [s for s in (store.config(dataset) or {}).get("strategies", []) if s in ran]
        shown = out.relative_to(HERE.parent) if out.is_relative_to(HERE.parent) else out  # as run from the checkout
        cmd = [str(shown) if a == str(out) else a for a in command(dataset, options, limit, strategies, out)]
        report = subprocess.run([coa, "report", str(out)], check=True, capture_output=True, text=True).stdout
        PLOTS.mkdir(exist_ok=True)
        plots = []
        for png in sorted(out.glob("*-length.png")):
            shutil.copy(png, PLOTS / f"{directory}.png")
            plots.append(f"![{directory}](results/{directory}.png)")
        notes = "\n\n".join(filter(None, [best_coa(store, dataset), cited(store, dataset)]))
        sections.append(f"Command: `{' '.join(cmd)}` then `coa report {shown}`\n\n{report.strip()}\n\n{notes}\n\n"
                        f"{' '.join(plots)}\n")
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    RESULTS.write_text(f"{head}{BEGIN}\n\n" + "\n".join(sections) + f"\n{END}{tail}", encoding="utf-8")
    print(f"wrote {RESULTS}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=HERE / "results")
    parser.add_argument("--phases", default="core", help="Which strategies to run (comma-separated): core, peers.")
    parser.add_argument("--only", default="", help="Only these sets (comma-separated names of RUNS).")
    parser.add_argument("--tables-only", action="store_true", help="Rewrite the tables from stored results without running.")
    args = parser.parse_args()
    if not args.tables_only:
        run(args)
    tables(args)


if __name__ == "__main__":
    main()
