"""The manager's focus, replayed: for each stored default-CoA row of a benchmark store, the last
manager prompt is sent again with the evidence `evidence.connected` keeps (the lines about the
question's subject and those linked to them) in place of the whole CU. Printed per row: the
reference, the stored answer, the answer with focus, and the lines kept. The document is rebuilt
from the workers' chunks, so its common words are those of the text the chain read.

    .venv/bin/python benchmarks/focus_replay.py benchmarks/results/multihop [--model reader] [--window 1024]
"""

from __future__ import annotations

import argparse
import json
import re
import sqlite3
from pathlib import Path

from coa.evidence import connected
from coa.models.registry import load_model
from coa.task import Citation

CHUNK = re.compile(r"<document-[0-9a-f]+>\n?(.*?)\n?</document-[0-9a-f]+>", re.S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--strategy", default="coa")
    parser.add_argument("--model", default="reader")
    parser.add_argument("--window", type=int, default=1024)
    args = parser.parse_args()
    db = sqlite3.connect(f"file:{args.run / 'results.sqlite'}?mode=ro", uri=True)
    rows = db.execute("SELECT example, trace, refs FROM results WHERE strategy = ? AND error IS NULL ORDER BY example",
                      (args.strategy,)).fetchall()
    model = load_model(args.model, window=args.window)
    right = [0, 0]
    for example, trace, refs in rows:
        calls = json.loads(trace)["calls"]
        document = " ".join(m.group(1) for c in calls if c["role"] == "worker"
                            if (m := CHUNK.search(c["messages"][-1]["content"])))
        manager = [c for c in calls if c["role"] == "manager"][-1]
        question = re.search(r"Question: (.*)", manager["messages"][-1]["content"]).group(1)
        lines = manager["cu"].splitlines()
        kept = [c.line for c in connected([Citation(x, 0, 0, 0, line=x) for x in lines], document, question)]
        messages = [dict(m) for m in manager["messages"]]
        messages[-1]["content"] = messages[-1]["content"].replace(manager["cu"], "\n".join(kept))
        answer = model.complete(messages, max_tokens=manager["completion_tokens"] + 8).text.strip()
        references = json.loads(refs)
        right[0] += manager["output"].strip() in references
        right[1] += answer in references
        print(f"{example}: reference {references}, stored {manager['output'].strip()!r}, with focus {answer!r}, "
              f"kept {len(kept)} of {len(lines)} lines", flush=True)
    print(f"exact answers: stored {right[0]}/{len(rows)}, with focus {right[1]}/{len(rows)}")


if __name__ == "__main__":
    main()
