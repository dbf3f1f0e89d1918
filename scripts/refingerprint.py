"""Carry stored `coa eval` results over to the fingerprint that counts only the prompts a strategy reads.

    .venv/bin/python scripts/refingerprint.py OUT --commit COMMIT [--data-dir DIR]

Results stored before coa.identity fingerprinted prompt sets carry a fingerprint over every prompt
file at once, so adding any strategy's prompts would rerun every stored pair on --resume. For
each dataset in OUT/results.sqlite, a row whose fingerprint is its pair's under that earlier scheme
(the package's prompt files as they were at COMMIT, the revision that produced the rows) gets its
pair's fingerprint now, where the prompt sets its strategy reads are as they were at COMMIT; any other
row is left as it is, and --resume runs it again. The
datasets are loaded as the stored run loaded them (their token counts need the run's model).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import subprocess
from dataclasses import replace
from pathlib import Path

from coa.config import Config
from coa.eval.datasets import load
from coa.eval.runner import StrategySpec
from coa.eval.store import Store
from coa.identity import SHARED_PROMPTS, digest_sets, fingerprint, pair_fingerprint, run_settings
from coa.models.registry import load_model
from coa.strategies import get_strategy

PROMPTS = "src/coa/prompts"


def earlier_prompts(commit: str) -> dict[str, str]:
    """The digest of every packaged prompt file at `commit`, by its name under prompts/."""
    listing = subprocess.run(["git", "ls-tree", "-r", "--name-only", commit, PROMPTS], capture_output=True, text=True,
                             check=True).stdout.split()
    files = {}
    for path in listing:
        name = path.removeprefix(PROMPTS + "/")
        if any(part.startswith(".") for part in name.split("/")):
            continue
        blob = subprocess.run(["git", "show", f"{commit}:{path}"], capture_output=True, check=True).stdout
        files[name] = hashlib.sha256(blob).hexdigest()
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--commit", required=True, help="the revision whose prompt files produced the rows")
    parser.add_argument("--data-dir", type=Path, default=os.environ.get("COA_DATA_DIR"))
    args = parser.parse_args()
    files = earlier_prompts(args.commit)
    earlier, earlier_sets = fingerprint(**files), digest_sets(files)
    store = Store(args.out)
    db = sqlite3.connect(args.out / Store.FILE)
    for dataset in store.datasets():
        stored = store.config(dataset) or {}
        if stored.get("prompts_dir"):
            print(f"{dataset}: a --prompts-dir run; left as it is")
            continue
        config = Config(window=stored["window"], max_cu_tokens=stored["max_cu_tokens"],
                        temperature=stored["temperature"], seed=stored["seed"], max_calls=stored["max_calls"],
                        max_total_tokens=stored["max_total_tokens"])
        model = load_model(stored["model"], window=config.window)
        examples = load(dataset, data_dir=args.data_dir, options=stored["options"], seed=config.seed or 0,
                        count_tokens=model.count_tokens, limit=stored["limit"])
        if stored.get("requirement") is not None:
            examples = [replace(e, task=replace(e.task, requirement=stored["requirement"])) for e in examples]
        now = run_settings(stored["model"], config)
        before = {k: v for k, v in now.items() if k != "max_seconds"} | {"prompts": earlier}
        rows = store.fingerprints(dataset)
        moved = kept = 0
        for example in examples:
            for label in stored["strategies"]:
                if (example.id, label) not in rows:
                    continue
                spec = StrategySpec.parse(label)
                reads = {*get_strategy(spec.name).prompt_sets, *SHARED_PROMPTS}
                if any(earlier_sets.get(name) != now["prompts"].get(name) for name in reads):
                    kept += 1  # its prompts changed since COMMIT: the row is run again
                    continue
                task = example.task
                old = fingerprint(
                    document=task.document, question=task.query, choices=list(task.choices), kind=str(task.kind),
                    requirement=task.requirement, references=example.references, metric=example.metric,
                    meta=example.meta, strategy=spec.name, options=spec.options, settings=before)
                if rows[(example.id, label)][0] == old:
                    db.execute("UPDATE results SET fingerprint = ? WHERE dataset = ? AND example = ? AND strategy = ?",
                               (pair_fingerprint(example, spec, now), dataset, example.id, label))
                    moved += 1
                else:
                    kept += 1
        db.commit()
        print(f"{dataset}: {moved} rows carried over, {kept} left to run again")


if __name__ == "__main__":
    main()
