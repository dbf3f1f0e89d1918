"""Reproduce benchmarks/RESULTS.md: the embedded model at window 2048 on four datasets.

    .venv/bin/python benchmarks/results.py [--strategies coa,vanilla,rag] [--runs runs/results]

Each dataset runs with `coa eval ... --resume` into its own directory under --runs, so
an interrupted reproduction continues where it stopped. The tables in RESULTS.md
(between the markers) are then rewritten from the stored results; the text around them
is kept. Expect several hours on two CPU cores.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "RESULTS.md"
PLOTS = HERE / "results"
BEGIN, END = "<!-- tables: written by benchmarks/results.py -->", "<!-- /tables -->"
WINDOW = 2048

RUNS = [  # (dataset, dataset options, examples)
    ("niah", ["lengths=1000,2000,4000,8000,16000", "depths=0,0.25,0.5,0.75,1"], None),
    ("hotpotqa", ["length=6000"], 30),
    ("qmsum", ["queries=specific"], 20),
    ("leval:quality", [], 30),
]


def command(dataset: str, options: list[str], limit: int | None, strategies: str, out: Path) -> list[str]:
    args = ["coa", "eval", "--dataset", dataset, "--strategies", strategies, "--model", "embedded",
            "--window", str(WINDOW), "--seed", "0", "--out", str(out), "--resume"]
    args += [a for option in options for a in ("--opt", option)]
    return args + (["--limit", str(limit)] if limit else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="coa,vanilla,rag")
    parser.add_argument("--runs", type=Path, default=Path("runs/results"))
    parser.add_argument("--tables-only", action="store_true", help="Rewrite the tables from stored results without running.")
    args = parser.parse_args()
    coa = str(Path(sys.executable).with_name("coa"))
    sections = []
    for dataset, options, limit in RUNS:
        out = args.runs / dataset.replace(":", "-")
        cmd = command(dataset, options, limit, args.strategies, out)
        if not args.tables_only:
            # The shared data beside the checkout, unless COA_DATA_DIR names another place.
            data = os.environ.get("COA_DATA_DIR") or str(HERE.parents[1] / "shared" / "data")
            subprocess.run([coa, *cmd[1:]], check=True, env={**os.environ, "COA_DATA_DIR": data})
        report = subprocess.run([coa, "report", str(out)], check=True, capture_output=True, text=True).stdout
        PLOTS.mkdir(exist_ok=True)
        for png in sorted(out.glob("*.png")):
            shutil.copy(png, PLOTS / png.name)
        plots = " ".join(f"![{p.stem}](results/{p.name})" for p in sorted(out.glob("*.png")))
        sections.append(f"Command: `{' '.join(cmd)}` then `coa report {out}`\n\n{report.strip()}\n\n{plots}\n")
    text = RESULTS.read_text(encoding="utf-8") if RESULTS.exists() else f"# Results\n\n{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    RESULTS.write_text(f"{head}{BEGIN}\n\n" + "\n".join(sections) + f"\n{END}{tail}", encoding="utf-8")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
