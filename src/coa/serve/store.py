"""The server's SQLite file: uploaded documents, job runs and each run's events.

A run's row is written when it is made and at each change of status; its events as they
happen, so a client that follows a run after it finished (or after a restart) replays them.
A server that opens the file marks the runs it finds unfinished as failed, and records the
status and `done` events they would have ended with: they were cut off by a stop of the server
that ran them, and must read as interrupted, never as lost. One server per file.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from coa.errors import InputError
from coa.serve.errors import interrupted
from coa.sqlite import Migration, migrate

FILES = """
CREATE TABLE files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,            -- a digest of the API key that uploaded it ("" where the API is open)
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    text TEXT NOT NULL
)"""
RUNS = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    status TEXT NOT NULL,           -- queued, running, succeeded, failed, cancelled
    strategy TEXT NOT NULL,
    task TEXT NOT NULL,
    question TEXT,
    answer TEXT,
    error TEXT,                     -- JSON: the API error object
    usage TEXT,                     -- JSON
    result TEXT                     -- JSON: the trace as `coa ask --json` prints it
)"""
EVENTS = """
CREATE TABLE events (
    run TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run, seq)
)"""
MIGRATIONS = (Migration("files, runs and events", (FILES, RUNS, EVENTS)),
              Migration("each run's citations and support", ("ALTER TABLE runs ADD COLUMN citations TEXT",  # JSON
                                                             "ALTER TABLE runs ADD COLUMN supported TEXT")))  # JSON

RUN_FIELDS = ("id", "created_at", "started_at", "finished_at", "status", "strategy", "task", "question", "answer",
              "error", "usage", "citations", "supported")
JSON_FIELDS = ("error", "usage", "result", "citations", "supported")


class ServeStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA foreign_keys = ON")
            migrate(self.db, MIGRATIONS, str(path))
        except sqlite3.DatabaseError as e:
            raise InputError(f"--store {path}: not a coa serve store ({e})") from None
        self.db.row_factory = sqlite3.Row
        self._end_interrupted()

    def _end_interrupted(self) -> None:
        """Each run left unfinished by the server that ran it ends now, as failed, with the events a
        finished run ends with (its status, then `done`), so that a replay of its events ends too."""
        ended = {"status": "failed", "finished_at": int(time.time()), "error": interrupted().body()["error"]}
        cut = self.db.execute("SELECT id, owner FROM runs WHERE status IN ('queued', 'running')").fetchall()
        for id, owner in cut:
            self.db.execute("BEGIN IMMEDIATE")  # the run and its last events together, or neither
            try:
                self.update_run(id, ended)
                seq = self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events WHERE run = ?", (id,)).fetchone()[0]
                self.add_event(id, seq + 1, "status", {"status": "failed"})
                self.add_event(id, seq + 2, "done", self.run(owner, id, result=False) or {})
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    # -- documents -------------------------------------------------------------------------------
    def add_file(self, record: dict[str, Any], text: str) -> None:
        self.db.execute("INSERT INTO files (id, owner, filename, purpose, bytes, created_at, text) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (record["id"], record["owner"], record["filename"], record["purpose"], record["bytes"],
                         record["created_at"], text))

    def file(self, owner: str, id: str) -> dict[str, Any] | None:
        row = self.db.execute("SELECT id, filename, purpose, bytes, created_at FROM files WHERE id = ? AND owner = ?",
                              (id, owner)).fetchone()
        return {"object": "file", **dict(row)} if row else None

    def file_text(self, owner: str, id: str) -> str | None:
        row = self.db.execute("SELECT text FROM files WHERE id = ? AND owner = ?", (id, owner)).fetchone()
        return row[0] if row else None

    def delete_file(self, owner: str, id: str) -> bool:
        return self.db.execute("DELETE FROM files WHERE id = ? AND owner = ?", (id, owner)).rowcount > 0

    # -- runs --------------------------------------------------------------------------------------
    def add_run(self, owner: str, run: dict[str, Any]) -> None:
        self.db.execute(f"INSERT INTO runs (owner, {', '.join(RUN_FIELDS)}) VALUES (?{', ?' * len(RUN_FIELDS)})",
                        (owner, *(_column(k, run.get(k)) for k in RUN_FIELDS)))

    def update_run(self, id: str, changes: dict[str, Any]) -> None:
        sets = ", ".join(f"{key} = ?" for key in changes)
        self.db.execute(f"UPDATE runs SET {sets} WHERE id = ?", (*(_column(k, v) for k, v in changes.items()), id))

    def run(self, owner: str, id: str, *, result: bool = True) -> dict[str, Any] | None:
        fields = (*RUN_FIELDS, "result") if result else RUN_FIELDS
        row = self.db.execute(f"SELECT {', '.join(fields)} FROM runs WHERE id = ? AND owner = ?", (id, owner)).fetchone()
        return _run(row) if row else None

    def runs(self, owner: str, limit: int) -> list[dict[str, Any]]:
        rows = self.db.execute(f"SELECT {', '.join(RUN_FIELDS)} FROM runs WHERE owner = ? ORDER BY created_at DESC, rowid DESC "
                               "LIMIT ?", (owner, limit))
        return [_run(row) for row in rows]

    def delete_run(self, owner: str, id: str) -> bool:
        return self.db.execute("DELETE FROM runs WHERE id = ? AND owner = ?", (id, owner)).rowcount > 0

    def add_event(self, run: str, seq: int, type: str, data: dict[str, Any]) -> None:
        self.db.execute("INSERT INTO events (run, seq, type, data) VALUES (?, ?, ?, ?)",
                        (run, seq, type, json.dumps(data, ensure_ascii=False)))

    def events(self, run: str, after: int) -> list[tuple[int, str, dict[str, Any]]]:
        rows = self.db.execute("SELECT seq, type, data FROM events WHERE run = ? AND seq > ? ORDER BY seq", (run, after))
        return [(seq, type, json.loads(data)) for seq, type, data in rows]

    def close(self) -> None:
        self.db.close()


def _column(key: str, value: Any) -> Any:
    return json.dumps(value, ensure_ascii=False) if key in JSON_FIELDS and value is not None else value


def _run(row: sqlite3.Row) -> dict[str, Any]:
    run = {"id": row["id"], "object": "coa.run", **dict(row)}
    for key in JSON_FIELDS:
        if isinstance(run.get(key), str):
            run[key] = json.loads(run[key])
    if run.get("citations") is None:  # a run stored before citations were kept, or one without a result
        run["citations"] = []
    return run
