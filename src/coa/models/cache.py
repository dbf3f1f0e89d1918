"""A response cache around any backend: a call made before, with the same backend, messages and
generation settings, is answered from a SQLite file instead of the model.

The key is `identity.fingerprint` of the backend's identity (a GGUF file's SHA-256, a server's
URL without credentials and its model name; `coa serve` adds the client's key digest), the exact
messages and every generation parameter. Sampling with a temperature above 0 is cached only with
a seed: without one, each call is meant to differ. A cached call comes back with its original
token counts, zero seconds and `from_cache` set, so the trace says so. One file may hold several
backends; it is versioned like coa's other stores, and a file of an unknown version, or one that
fails SQLite's integrity check, is refused in one line.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from coa.errors import InputError
from coa.identity import fingerprint
from coa.models.base import Completion, Embed, Messages, Model
from coa.sqlite import Migration, migrate

RESPONSES = """
CREATE TABLE responses (
    key TEXT PRIMARY KEY,           -- fingerprint of backend, messages and generation settings
    backend TEXT NOT NULL,          -- the backend's identity, for people reading the file
    completion TEXT NOT NULL,       -- JSON: text, token counts, finish reason
    created_at REAL NOT NULL
)"""
DIGESTS = """
CREATE TABLE digests (
    path TEXT PRIMARY KEY,          -- a model file, by absolute path
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL            -- remembered while size and modification time stay the same
)"""
MIGRATIONS = (Migration("responses and file digests", (RESPONSES, DIGESTS)),)
FIELDS = ("text", "prompt_tokens", "completion_tokens", "finish_reason", "cached_tokens")


class ResponseCache:
    """The SQLite file; safe to share between the threads of a run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
            (check,) = self.db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise InputError(f"--cache {path}: the file fails SQLite's integrity check ({check})")
            self.db.execute("PRAGMA journal_mode = WAL")
            migrate(self.db, MIGRATIONS, f"--cache {path}")
            self._check_tables()
        except sqlite3.DatabaseError as e:
            raise InputError(f"--cache {path}: not a coa response cache ({e})") from None
        except OSError as e:
            raise InputError(f"--cache {path}: cannot open it ({e.strerror or e})") from None
        self.lock = threading.Lock()

    def _check_tables(self) -> None:
        tables = {row[0] for row in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not {"responses", "digests"} <= tables:
            raise InputError(f"--cache {self.path}: not a coa response cache (another program's SQLite file)")

    def get(self, key: str) -> Completion | None:
        with self.lock:
            row = self.db.execute("SELECT completion FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            data = json.loads(row[0])
            completion = Completion(seconds=0.0, from_cache=True, **{name: data[name] for name in FIELDS})
            if not isinstance(completion.text, str) or not all(isinstance(getattr(completion, f), int) for f in FIELDS[1:3]):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise InputError(f"--cache {self.path}: a stored response is damaged; delete the file to start anew") from None
        return completion

    def put(self, key: str, backend: str, completion: Completion) -> None:
        data = json.dumps({name: getattr(completion, name) for name in FIELDS}, ensure_ascii=False)
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO responses (key, backend, completion, created_at) VALUES (?, ?, ?, ?)",
                            (key, backend, data, time.time()))

    def file_digest(self, path: Path) -> str:
        """The SHA-256 of a model file, computed once and remembered by size and modification time."""
        path = path.resolve()
        stat = path.stat()
        with self.lock:
            row = self.db.execute("SELECT size, mtime_ns, sha256 FROM digests WHERE path = ?", (str(path),)).fetchone()
        if row and row[0] == stat.st_size and row[1] == stat.st_mtime_ns:
            return row[2]
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO digests (path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?)",
                            (str(path), stat.st_size, stat.st_mtime_ns, digest.hexdigest()))
        return digest.hexdigest()

    def close(self) -> None:
        self.db.close()


class CachedModel(Model):
    """`inner`, with each completion looked up in `cache` first and stored after. `scope` joins the
    key (the server's client, so that clients never share answers)."""

    def __init__(self, inner: Model, cache: ResponseCache, scope: str = "") -> None:
        self.inner = inner
        self.cache = cache
        self.scope = scope
        self.name = inner.name
        self.backend = inner.identity(cache.file_digest)

    # Everything but `complete` is the backend's own.
    @property
    def context_window(self) -> int:
        return self.inner.context_window

    @property
    def token_counter(self) -> str | None:  # type: ignore[override]
        return self.inner.token_counter

    @property
    def warnings(self) -> Any:  # type: ignore[override]
        return self.inner.warnings

    def count_tokens(self, text: str) -> int:
        return self.inner.count_tokens(text)

    def token_offsets(self, text: str) -> Any:
        return self.inner.token_offsets(text)

    def prefill(self, messages: Messages) -> int:
        return self.inner.prefill(messages)

    def embedder(self, model: str) -> Embed:
        return self.inner.embedder(model)

    def identity(self, digest: Any) -> str:
        return self.backend

    def close(self) -> None:
        self.inner.close()

    def scoped(self, scope: str) -> CachedModel:
        return CachedModel(self.inner, self.cache, scope) if scope != self.scope else self

    def complete(self, messages: Messages, *, max_tokens: int, temperature: float = 0.0,
                 seed: int | None = None) -> Completion:
        if temperature > 0 and seed is None:  # meant to differ each time: never cached
            return self.inner.complete(messages, max_tokens=max_tokens, temperature=temperature, seed=seed)
        key = fingerprint(backend=self.backend, scope=self.scope, messages=messages, max_tokens=max_tokens,
                          temperature=temperature, seed=seed if temperature > 0 else None)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        completion = self.inner.complete(messages, max_tokens=max_tokens, temperature=temperature, seed=seed)
        self.cache.put(key, self.backend, replace(completion, from_cache=False))
        return completion


def cached(model: Model, path: Path | str | None) -> Model:
    """`model` behind the response cache at `path`; `model` itself where there is none."""
    return CachedModel(model, ResponseCache(Path(path).expanduser())) if path else model
