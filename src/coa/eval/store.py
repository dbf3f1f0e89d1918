"""Results of an evaluation run, streamed into SQLite as each pair finishes.

One row per (dataset, example, strategy). Each row is committed on its own, so a
run killed at any moment keeps every finished pair; `--resume` skips them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    dataset TEXT PRIMARY KEY,
    config TEXT NOT NULL            -- JSON: model, window, seed, options, version, git hash, ...
);
CREATE TABLE IF NOT EXISTS results (
    dataset TEXT NOT NULL,
    example TEXT NOT NULL,
    strategy TEXT NOT NULL,
    position INTEGER NOT NULL,      -- the example's place in the dataset
    prediction TEXT,
    refs TEXT NOT NULL,             -- JSON list of reference answers
    metric TEXT NOT NULL,
    score REAL,
    document_tokens INTEGER,
    calls INTEGER,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    seconds REAL,
    meta TEXT NOT NULL,             -- JSON: length, depth, ...
    trace TEXT,                     -- JSON: the strategy's Result
    error TEXT,
    finished_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (dataset, example, strategy)
);
"""

COLUMNS = ("dataset", "example", "strategy", "position", "prediction", "refs", "metric", "score", "document_tokens",
           "calls", "prompt_tokens", "completion_tokens", "seconds", "meta", "trace", "error")


class Store:
    FILE = "results.sqlite"

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / self.FILE
        self.db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: each row lands at once
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)

    def config(self, dataset: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT config FROM runs WHERE dataset = ?", (dataset,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_config(self, dataset: str, config: dict[str, Any]) -> None:
        self.db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?)", (dataset, json.dumps(config)))

    def datasets(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT dataset FROM runs ORDER BY rowid")]

    def finished(self, dataset: str, *, errors: bool = True) -> set[tuple[str, str]]:
        """(example, strategy) pairs already stored; without `errors`, only the successful ones."""
        query = "SELECT example, strategy FROM results WHERE dataset = ?" + ("" if errors else " AND error IS NULL")
        return set(self.db.execute(query, (dataset,)))

    def forget(self, dataset: str, strategies: Iterable[str]) -> None:
        """Drop the stored pairs of these strategies, so that they run again."""
        self.db.executemany("DELETE FROM results WHERE dataset = ? AND strategy = ?", [(dataset, s) for s in strategies])

    def save(self, row: dict[str, Any]) -> None:
        values = [json.dumps(row[c], ensure_ascii=False) if c in ("refs", "meta", "trace") and row[c] is not None else row[c]
                  for c in COLUMNS]
        self.db.execute(f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values)

    def rows(self, dataset: str | None = None, *, traces: bool = False) -> list[dict[str, Any]]:
        columns = [c for c in COLUMNS if traces or c != "trace"] + ["finished_at"]
        where, args = ("WHERE dataset = ?", (dataset,)) if dataset else ("", ())
        cursor = self.db.execute(f"SELECT {', '.join(columns)} FROM results {where} ORDER BY dataset, position, strategy", args)
        result = []
        for values in cursor:
            row = dict(zip(columns, values))
            for key in ("refs", "meta", "trace"):
                if row.get(key) is not None:
                    row[key] = json.loads(row[key])
            result.append(row)
        return result

    def close(self) -> None:
        self.db.close()
