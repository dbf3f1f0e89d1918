"""Versioned results stores: an old run directory stays readable, a newer one is refused.

`fixtures/stores/v0-results.sqlite` was written by the store code of before schema
versions (unstamped, user_version 0); see fixtures/stores/README.md.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from coa.errors import InputError
from coa.eval.store import MIGRATIONS, Store
from coa.sqlite import Migration, migrate, migrated_copy
from conftest import REPO, run_cli

V0 = REPO / "tests" / "fixtures" / "stores" / "v0-results.sqlite"
CONFIG = {"model": "scripted", "window": 1024, "seed": 0, "strategies": ["coa", "vanilla"],
          "options": {"length": 2000}, "version": "0.1.0", "git": "0e064d1"}
COMMON = {"dataset": "niah", "example": "niah-0", "position": 0, "refs": ["blue"], "metric": "qa_f1",
          "document_tokens": 2100, "meta": {"length": 2000, "depth": 0.5}, "error": None}
ROWS = [
    {**COMMON, "strategy": "coa", "prediction": "blue", "score": 1.0, "calls": 4, "prompt_tokens": 2600,
     "completion_tokens": 90, "seconds": 1.5,
     "trace": {"answer": "blue", "calls": [{"role": "manager", "index": 0, "output": "blue"}]}},
    {**COMMON, "strategy": "vanilla", "prediction": "red, I think", "score": 0.0, "calls": 1, "prompt_tokens": 1000,
     "completion_tokens": 5, "seconds": 0.5, "trace": {"answer": "red, I think", "calls": []}},
]


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A copy of the old run directory: tests may write to it."""
    (tmp_path / "run").mkdir()
    shutil.copyfile(V0, tmp_path / "run" / Store.FILE)
    return tmp_path / "run"


def stamp(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def set_stamp(path: Path, version: int) -> None:
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {version}")
    db.close()


def without_time(rows: list[dict]) -> list[dict]:
    assert all(row["finished_at"].startswith("20") for row in rows)
    return [{k: v for k, v in row.items() if k != "finished_at"} for row in rows]


@pytest.mark.parametrize("read_only", [False, True])
def test_an_old_store_reads_back_as_written(run_dir, read_only):
    store = Store(run_dir, read_only=read_only)
    assert store.datasets() == ["niah"]
    assert store.config("niah") == CONFIG
    assert without_time(store.rows(traces=True)) == [{**row, "fingerprint": None} for row in ROWS]
    assert store.finished("niah") == {("niah-0", "coa"), ("niah-0", "vanilla")}
    store.close()


def test_opening_an_old_store_for_writing_stamps_it_current_and_keeps_it_usable(run_dir):
    assert stamp(run_dir / Store.FILE) == 0
    store = Store(run_dir)
    store.save({**ROWS[1], "example": "niah-1", "position": 1})
    store.close()
    assert stamp(run_dir / Store.FILE) == len(MIGRATIONS)
    store = Store(run_dir, read_only=True)
    assert [r["example"] for r in store.rows()] == ["niah-0", "niah-0", "niah-1"]
    store.close()


def test_old_rows_have_no_fingerprint_and_new_ones_keep_theirs(run_dir):
    store = Store(run_dir)
    store.save({**ROWS[1], "example": "niah-1", "position": 1, "fingerprint": "ab" * 32})
    assert store.fingerprints("niah") == {("niah-0", "coa"): (None, False), ("niah-0", "vanilla"): (None, False),
                                          ("niah-1", "vanilla"): ("ab" * 32, False)}
    store.save({**ROWS[0], "example": "niah-2", "position": 2, "error": "failed"})  # a row may leave it out
    assert store.fingerprints("niah")["niah-2", "coa"] == (None, True)
    store.drop("niah")
    assert store.datasets() == [] and store.rows() == []
    store.close()


def test_a_new_store_is_stamped_current(tmp_path):
    Store(tmp_path).close()
    assert stamp(tmp_path / Store.FILE) == len(MIGRATIONS) >= 1


def test_reading_an_old_store_leaves_the_file_as_it_was(run_dir):
    before = V0.read_bytes()
    store = Store(run_dir, read_only=True)
    store.rows(traces=True)
    store.close()
    done = run_cli("report", run_dir)
    assert done.returncode == 0, done.stderr.decode()
    assert "niah" in done.stdout.decode() and "vanilla" in done.stdout.decode()
    assert (run_dir / Store.FILE).read_bytes() == before


def test_a_store_from_a_newer_coa_is_refused_in_one_line(run_dir):
    path = run_dir / Store.FILE
    set_stamp(path, len(MIGRATIONS) + 1)
    before = path.read_bytes()
    for read_only in (False, True):
        with pytest.raises(InputError, match="made by a newer coa .*; upgrade coa"):
            Store(run_dir, read_only=read_only)
    done = run_cli("report", run_dir)
    assert done.returncode == 2
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: made by a newer coa"), lines
    assert path.read_bytes() == before


# -- the machinery itself, with a second migration that the store does not have yet ----------

ADD_NOTE = Migration("a note on each result", ("ALTER TABLE results ADD COLUMN note TEXT",))


def columns(db: sqlite3.Connection) -> list[str]:
    return [row[1] for row in db.execute("PRAGMA table_info(results)")]


def test_migrate_applies_only_what_the_file_lacks(run_dir):
    db = sqlite3.connect(run_dir / Store.FILE, isolation_level=None)
    # An unstamped file is version 1: the store's later migrations run, then ADD_NOTE.
    migrate(db, [*MIGRATIONS, ADD_NOTE], "store", unversioned=1)
    assert {"fingerprint", "note"} <= set(columns(db)) and db.execute("SELECT count(*) FROM results").fetchone() == (2,)
    migrate(db, [*MIGRATIONS, ADD_NOTE], "store", unversioned=1)  # current: nothing to do
    db.close()
    assert stamp(run_dir / Store.FILE) == len(MIGRATIONS) + 1


def test_a_failed_migration_leaves_the_file_at_its_old_version(run_dir):
    broken = Migration("half done", ("ALTER TABLE results ADD COLUMN note TEXT", "ALTER TABLE nowhere ADD COLUMN x"))
    db = sqlite3.connect(run_dir / Store.FILE, isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError, match=rf"migration {len(MIGRATIONS) + 1} \(half done\) failed"):
        migrate(db, [*MIGRATIONS, broken], "store", unversioned=1)
    assert "note" not in columns(db) and "fingerprint" not in columns(db) and not db.in_transaction
    db.close()
    assert stamp(run_dir / Store.FILE) == 0


def test_a_reader_migrates_a_copy_in_memory(run_dir):
    before = (run_dir / Store.FILE).read_bytes()
    db = sqlite3.connect(f"{(run_dir / Store.FILE).as_uri()}?mode=ro", uri=True)
    copy = migrated_copy(db, [*MIGRATIONS, ADD_NOTE], "store", unversioned=1)
    assert copy is not db and "note" in columns(copy)
    assert copy.execute("SELECT count(*) FROM results").fetchone() == (2,)
    copy.close()
    assert (run_dir / Store.FILE).read_bytes() == before
