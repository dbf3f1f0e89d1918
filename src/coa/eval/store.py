"""Results of an evaluation run, streamed into SQLite as each pair finishes.

One row per (dataset, example, strategy). Each row is committed on its own, so a
run killed at any moment keeps every finished pair; `--resume` skips them, unless the
row's fingerprint (coa.identity: what produced it) differs from the pair's now. The file
carries its schema version (coa.sqlite): opening it for writing brings an older store up
to date, and a store made by a newer coa is refused rather than misread.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from coa.errors import InputError
from coa.sqlite import Migration, migrate, migrated_copy

RUNS = """
CREATE TABLE runs (
    dataset TEXT PRIMARY KEY,
    config TEXT NOT NULL            -- JSON: model, window, seed, options, version, git hash, ...
)"""
RESULTS = """
CREATE TABLE results (
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
)"""

# The schema's history, oldest first (see coa.sqlite): append, never edit a released entry.
MIGRATIONS = (
    Migration("runs and results", (RUNS, RESULTS)),
    # NULL in the rows stored before: what produced them is unknown, so a resume runs them again.
    Migration("a fingerprint on each result", ("ALTER TABLE results ADD COLUMN fingerprint TEXT",)),
)
# Stores made before versions were recorded are unstamped and hold version 1's tables.
UNVERSIONED = 1

COLUMNS = ("dataset", "example", "strategy", "position", "prediction", "refs", "metric", "score", "document_tokens",
           "calls", "prompt_tokens", "completion_tokens", "seconds", "meta", "trace", "error", "fingerprint")
OPTIONAL = ("fingerprint",)  # a row may leave these out (it is then stored as NULL)


class Store:
    FILE = "results.sqlite"

    def __init__(self, directory: Path, *, read_only: bool = False) -> None:
        """The store in `directory`, created if need be; `read_only` opens an existing one for
        reading, which works in a directory that cannot be written."""
        self.path = directory / self.FILE
        try:
            if read_only:
                self.db = _open_read_only(self.path)
            else:
                directory.mkdir(parents=True, exist_ok=True)
                if not self.path.exists():
                    _create(self.path)
                self.db = sqlite3.connect(self.path, isolation_level=None)  # autocommit: each row lands at once
            tables = {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not {"runs", "results"} <= tables:  # someone else's database: leave it alone
                raise sqlite3.DatabaseError(f"it has tables {', '.join(sorted(tables))} and no results")
            if read_only and not tables:
                raise InputError(f"{self.path}: holds no results")
            if read_only:
                # A reader never migrates the file (it may be a running eval's, or in a directory
                # it cannot write): an older store is read through a migrated copy in memory.
                self.db = migrated_copy(self.db, MIGRATIONS, str(self.path), unversioned=UNVERSIONED)
            else:
                self.db.execute("PRAGMA journal_mode=WAL")
                migrate(self.db, MIGRATIONS, str(self.path), unversioned=UNVERSIONED)
        except OSError as e:
            raise InputError(f"--out {directory}: cannot create the results store there ({e.strerror})") from None
        except sqlite3.DatabaseError as e:
            if not read_only and not os.access(directory, os.W_OK):
                raise InputError(f"--out {directory}: cannot write there ({e})") from None
            raise InputError(f"{self.path}: not a coa results store ({e})") from None

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

    def fingerprints(self, dataset: str) -> dict[tuple[str, str], tuple[str | None, bool]]:
        """{(example, strategy): (the row's fingerprint, whether it failed)} of the stored pairs."""
        query = "SELECT example, strategy, fingerprint, error IS NOT NULL FROM results WHERE dataset = ?"
        return {(e, s): (f, bool(failed)) for e, s, f, failed in self.db.execute(query, (dataset,))}

    def drop(self, dataset: str) -> None:
        """Forget the dataset's run: its settings and every result."""
        self.db.execute("BEGIN IMMEDIATE")  # both or neither
        try:
            self.db.execute("DELETE FROM results WHERE dataset = ?", (dataset,))
            self.db.execute("DELETE FROM runs WHERE dataset = ?", (dataset,))
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def forget(self, dataset: str, strategies: Iterable[str]) -> None:
        """Drop the stored pairs of these strategies, so that they run again."""
        self.db.executemany("DELETE FROM results WHERE dataset = ? AND strategy = ?", [(dataset, s) for s in strategies])

    def save(self, row: dict[str, Any]) -> None:
        given = {c: row.get(c) if c in OPTIONAL else row[c] for c in COLUMNS}
        values = [json.dumps(v, ensure_ascii=False) if c in ("refs", "meta", "trace") and v is not None else v
                  for c, v in given.items()]
        self.db.execute(f"INSERT OR REPLACE INTO results ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})", values)

    def rows(self, dataset: str | None = None, *, traces: bool = False) -> list[dict[str, Any]]:
        columns = [c for c in COLUMNS if traces or c != "trace"] + ["finished_at"]
        where, args = ("WHERE dataset = ?", (dataset,)) if dataset else ("", ())
        cursor = self.db.execute(f"SELECT {', '.join(columns)} FROM results {where} ORDER BY dataset, position, strategy", args)
        result = []
        for values in cursor:
            row = dict(zip(columns, values, strict=True))
            for key in ("refs", "meta", "trace"):
                if row.get(key) is not None:
                    row[key] = json.loads(row[key])
            result.append(row)
        return result

    def close(self) -> None:
        self.db.close()


def _create(path: Path) -> None:
    """A new store, made beside `path` and renamed into place: whoever looks (a report, a test
    waiting for rows) never finds the file without its tables."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    db = sqlite3.connect(temporary, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        migrate(db, MIGRATIONS, str(path))
    finally:
        db.close()  # folds the WAL into the file and removes it
    os.replace(temporary, path)


def _open_read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise InputError(f"{path.parent}: no {path.name} here (is it the --out of a coa eval?)")
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        db.execute("SELECT 1 FROM sqlite_master").fetchall()
        return db
    except sqlite3.OperationalError:
        # A store in WAL mode needs its -shm file, which a directory that cannot be written
        # does not let SQLite create; the file is then read as it stands, WAL ignored.
        db.close()
        return sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)

