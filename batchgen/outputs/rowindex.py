"""Per-row lookup tables that move to disk (sqlite) once they grow, so memory stays flat.

A small index lives in dicts; past `spill` entries it moves into one sqlite file and stays there.
An index is scratch space, never a source of truth: it starts empty, and its file is removed when
it is closed or collected. The store fills its index from the manifest each time it opens a folder
(a file a killed run left behind is replaced); the passes before that (validation, check) use a
temporary file.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import sqlite3
import tempfile
import threading
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

SPILL = 4096  # entries kept in memory before the index moves to disk (like the row window)
COMMIT_EVERY = 4096  # writes per transaction: a commit costs about as much as a few rows
CACHE_KIB = 512  # sqlite's page cache per index: its whole memory cost once on disk
_PAGE = 1000  # keys read at a time when iterating

# table -> (its columns, the key first; sqlite options)
_TEXT_KEY = "WITHOUT ROWID"
_TABLES: dict[str, tuple[str, str]] = {
    "twins": ("key INTEGER PRIMARY KEY, seen INTEGER NOT NULL", ""),
    "past": ("key TEXT PRIMARY KEY, status TEXT NOT NULL, offset INTEGER NOT NULL", _TEXT_KEY),
    "outcomes": (
        "key TEXT PRIMARY KEY, status TEXT NOT NULL, images TEXT NOT NULL, "
        "seeds TEXT NOT NULL, error TEXT NOT NULL",
        _TEXT_KEY,
    ),
    "taken": ("key TEXT PRIMARY KEY", _TEXT_KEY),
    "by_row": ("key INTEGER PRIMARY KEY, value TEXT NOT NULL", ""),  # row -> its latest key
    "latest": ("key TEXT PRIMARY KEY", _TEXT_KEY),
    "seen": ("key TEXT PRIMARY KEY", _TEXT_KEY),
}


class RowIndex:
    """A few key tables: content twins, past records, outcomes, taken paths; for comparing a
    sheet with a folder's past, each row's latest key and the keys seen.

    Safe to share between threads (one lock). `path`: where the file goes once it spills (None:
    a temporary file).
    """

    def __init__(self, path: Path | None = None, *, spill: int | None = None) -> None:
        self._target = path
        self._spill = SPILL if spill is None else spill
        self._memory: dict[str, dict[Any, tuple[Any, ...]]] = {name: {} for name in _TABLES}
        self._entries = 0
        self._db: sqlite3.Connection | None = None
        self._path: Path | None = None
        self._writes = 0
        self._lock = threading.Lock()
        self._finalizer: weakref.finalize[Any, RowIndex] | None = None
        self._closed = False

    @property
    def on_disk(self) -> bool:
        return self._db is not None

    def close(self) -> None:
        """Close and remove the file; the index is unusable afterwards."""
        with self._lock:
            self._closed = True
            self._memory = {name: {} for name in _TABLES}
            if self._finalizer is not None:
                self._finalizer()
            elif self._target is not None:  # a file a killed run left behind
                with contextlib.suppress(OSError):
                    self._target.unlink(missing_ok=True)

    # ---- how many earlier rows had the same content (payload keys) --------------------------

    def next_twin(self, digest: int) -> int:
        """0 the first time a digest (a signed 64-bit int) is seen, then 1, 2, ..."""
        with self._lock:
            found = self._get("twins", digest)
            seen = 0 if found is None else int(found[0]) + 1
            self._put("twins", [(digest, seen)])
            return seen

    # ---- the latest record per key found when a folder was opened ---------------------------

    def put_past(self, rows: Iterable[tuple[str, str, int]]) -> None:
        """(key, status, offset) triples; a later one replaces an earlier one of its key."""
        with self._lock:
            self._put("past", list(rows))

    def past(self, key: str) -> tuple[str, int] | None:
        with self._lock:
            found = self._get("past", key)
        return None if found is None else (str(found[0]), int(found[1]))

    def past_keys(self) -> Iterator[str]:
        """Every key in `past`, read a page at a time."""
        return (str(key) for key in self._keys("past"))

    def past_count(self) -> int:
        return self._count("past")

    # ---- each key's latest outcome, for the results sheet ------------------------------------

    def put_outcomes(self, rows: Iterable[tuple[str, str, str, str, str]]) -> None:
        """(key, status, images, seeds, error) as the results sheet shows them; the latest wins."""
        with self._lock:
            self._put("outcomes", list(rows))

    def outcome(self, key: str) -> tuple[str, str, str, str] | None:
        with self._lock:
            found = self._get("outcomes", key)
        return (
            None if found is None else (str(found[0]), str(found[1]), str(found[2]), str(found[3]))
        )

    # ---- image paths owned by a record ------------------------------------------------------

    def take(self, path: str) -> bool:
        """Claim a path; False if it was already taken."""
        with self._lock:
            if self._get("taken", path) is not None:
                return False
            self._put("taken", [(path,)])
            return True

    def take_all(self, paths: Iterable[str]) -> None:
        with self._lock:
            self._put("taken", [(path,) for path in paths])

    # ---- a sheet against a folder's past (outputs/changes.py) --------------------------------

    def put_by_row(self, pairs: Iterable[tuple[int, str]]) -> None:
        """(row, key) pairs in manifest order: the latest key of each row wins."""
        with self._lock:
            self._put("by_row", list(pairs))

    def has_row(self, row: int) -> bool:
        with self._lock:
            return self._get("by_row", row) is not None

    def rows_latest_keys(self) -> Iterator[str]:
        """Each row's latest key, once per key (a key recorded at two rows counts once)."""
        rows = self._items("by_row")
        while page := list(itertools.islice(rows, _PAGE)):
            with self._lock:
                self._put("latest", [(key,) for _, key in page])
        return (str(key) for key in self._keys("latest"))

    def mark_seen(self, key: str) -> None:
        with self._lock:
            self._put("seen", [(key,)])

    def was_seen(self, key: str) -> bool:
        with self._lock:
            return self._get("seen", key) is not None

    # ---- plumbing (callers hold the lock) ---------------------------------------------------

    def _get(self, table: str, key: Any) -> tuple[Any, ...] | None:
        if self._db is None:
            return self._memory[table].get(key)
        row = self._sql(f"SELECT * FROM {table} WHERE key = ?", (key,)).fetchone()
        return None if row is None else tuple(row[1:])

    def _put(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        if self._closed:
            raise RuntimeError("the index is closed")
        if not rows:
            return
        if self._db is None:
            memory = self._memory[table]
            before = len(memory)
            for row in rows:
                memory[row[0]] = row[1:]
            self._entries += len(memory) - before
            if self._entries > self._spill:
                self._move_to_disk()
            return
        columns = ", ".join("?" * len(rows[0]))
        with _as_os_error(self._path):
            self._db.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({columns})", rows)
            self._writes += len(rows)
            if self._writes >= COMMIT_EVERY:  # bounded transactions: dirty pages leave memory
                self._db.execute("COMMIT")
                self._db.execute("BEGIN")
                self._writes = 0

    def _count(self, table: str) -> int:
        with self._lock:
            if self._db is None:
                return len(self._memory[table])
            return int(self._sql(f"SELECT count(*) FROM {table}", ()).fetchone()[0])

    def _keys(self, table: str) -> Iterator[Any]:
        return (row[0] for row in self._items(table))

    def _items(self, table: str) -> Iterator[tuple[Any, ...]]:
        """Every row of a table in key order, a page at a time (the key first)."""
        with self._lock:
            rows = None if self._db is not None else sorted(self._memory[table].items())
        if rows is not None:  # <= spill entries
            yield from ((key, *values) for key, values in rows)
            return
        last: Any = None
        while True:
            with self._lock:
                after = "" if last is None else "WHERE key > ?"
                sql = f"SELECT * FROM {table} {after} ORDER BY key LIMIT {_PAGE}"
                page = self._sql(sql, () if last is None else (last,)).fetchall()
            yield from page
            if len(page) < _PAGE:
                return
            last = page[-1][0]

    def _sql(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        assert self._db is not None
        with _as_os_error(self._path):
            return self._db.execute(sql, params)

    def _move_to_disk(self) -> None:
        if self._target is None:
            handle, name = tempfile.mkstemp(prefix="batchgen-index-", suffix=".sqlite")
            os.close(handle)
            path = Path(name)
        else:
            path = self._target
            path.parent.mkdir(parents=True, exist_ok=True)
            path.unlink(missing_ok=True)  # stale: a killed run's
        self._path = path
        with _as_os_error(path):
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._finalizer = weakref.finalize(self, _drop, db, path)
            for pragma in (
                "journal_mode=OFF",  # scratch data: nothing to roll back to after a crash
                "synchronous=OFF",
                "locking_mode=EXCLUSIVE",
                f"cache_size=-{CACHE_KIB}",
            ):
                db.execute(f"PRAGMA {pragma}")
            for name, (columns, options) in _TABLES.items():
                db.execute(f"CREATE TABLE {name} ({columns}) {options}")
            db.execute("BEGIN")
        self._db = db
        memory, self._memory = self._memory, {name: {} for name in _TABLES}
        for name, rows in memory.items():
            self._put(name, [(key, *values) for key, values in rows.items()])


def digest_int(hex_digest: str) -> int:
    """The first 16 hex digits of a digest as the signed 64-bit integer sqlite stores."""
    return int(hex_digest[:16], 16) - (1 << 63)


@contextlib.contextmanager
def _as_os_error(path: Path | None) -> Iterator[None]:
    """A full disk under the index reads like one under the images: an OSError."""
    try:
        yield
    except sqlite3.OperationalError as error:
        raise OSError(errno.EIO, f"{path}: {error}") from error


def _drop(db: sqlite3.Connection, path: Path) -> None:
    db.close()
    path.unlink(missing_ok=True)
