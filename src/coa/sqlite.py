"""Schema versions of coa's SQLite files: named migrations, counted in `PRAGMA user_version`.

A store module lists its migrations in order; version N means the first N have been
applied. The version lives in SQLite's own header field rather than in a table of
applied names (as simonw/llm keeps): migrations only ever run in order, so one number
says everything, it reads without knowing any table (a file that is not ours has 0),
and it is set in the same transaction as the migration's SQL, so a run killed
mid-migration leaves the file at the old version, untouched. The names are for people
reading the list. A migration, once released, is never edited or reordered: new
changes are new entries at the end.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

from coa.errors import InputError


@dataclass(frozen=True)
class Migration:
    name: str
    statements: tuple[str, ...]  # SQL run in order, in one transaction with the new version stamp


def version(db: sqlite3.Connection, *, unversioned: int = 0) -> int:
    """The file's schema version; `unversioned` is the version of a file that has tables
    but no stamp (made before versions were recorded)."""
    (stamp,) = db.execute("PRAGMA user_version").fetchone()
    if stamp == 0 and db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table'").fetchone():
        return unversioned
    return stamp


def check(db: sqlite3.Connection, migrations: Sequence[Migration], what: str, *, unversioned: int = 0) -> int:
    """The file's version, refused if it is newer than this code knows."""
    found = version(db, unversioned=unversioned)
    if found > len(migrations):
        raise InputError(f"{what}: made by a newer coa (schema version {found}, this one reads up to "
                         f"{len(migrations)}); upgrade coa to read it")
    return found


def migrate(db: sqlite3.Connection, migrations: Sequence[Migration], what: str, *, unversioned: int = 0) -> None:
    """Apply the migrations the file lacks and stamp it current, all in one transaction.
    `db` must be in autocommit mode (isolation_level=None) so that the transaction is ours."""
    if db.execute("PRAGMA user_version").fetchone()[0] == len(migrations):
        return
    db.execute("BEGIN IMMEDIATE")  # the write lock before looking: another process may be migrating the file
    try:
        done = check(db, migrations, what, unversioned=unversioned)
        for number, migration in enumerate(migrations[done:], start=done + 1):
            try:
                for statement in migration.statements:
                    db.execute(statement)
            except sqlite3.Error as e:
                raise sqlite3.DatabaseError(f"migration {number} ({migration.name}) failed: {e}") from None
        db.execute(f"PRAGMA user_version = {len(migrations)}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # some errors (a full disk) have rolled back already
            db.execute("ROLLBACK")
        raise


def migrated_copy(db: sqlite3.Connection, migrations: Sequence[Migration], what: str, *,
                  unversioned: int = 0) -> sqlite3.Connection:
    """`db` itself if it is current, else a migrated copy in memory: readers never change
    the file (which may be another process's, or in a directory they cannot write)."""
    if check(db, migrations, what, unversioned=unversioned) == len(migrations):
        return db
    memory = sqlite3.connect(":memory:", isolation_level=None)
    db.backup(memory)
    db.close()
    migrate(memory, migrations, what, unversioned=unversioned)
    return memory
