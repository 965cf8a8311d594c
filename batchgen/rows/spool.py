"""An append-only sequence that moves to an unnamed temporary file once it grows.

The pre-run pass builds every row once and keeps the results here, so that the check, the dry
run, the shard plan, the sending pass and results.csv read them back instead of reading the sheet
and building every row again. The first `spill` items stay in memory (the first requests go out
without touching the disk); the rest are pickled in batches into a file that the operating system
removes when it is closed, so memory stays flat however long the sheet is.
"""

from __future__ import annotations

import pickle
import tempfile
from collections.abc import Iterator
from typing import IO, Generic, TypeVar

T = TypeVar("T")

SPILL = 4096  # items kept in memory (like the row window and the row index)
BATCH = 256  # items per pickle: one call per item would cost as much as building the row


class Spool(Generic[T]):
    """Items in the order appended; iterate as often as needed, even two iterators at once."""

    def __init__(self, spill: int | None = None) -> None:
        self._spill = SPILL if spill is None else spill
        self._head: list[T] = []
        self._pending: list[T] = []
        self._file: IO[bytes] | None = None
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def on_disk(self) -> bool:
        return self._file is not None

    def append(self, item: T) -> None:
        self._count += 1
        if len(self._head) < self._spill:
            self._head.append(item)
            return
        self._pending.append(item)
        if len(self._pending) >= BATCH:  # read at each append: tests make it small
            self._flush()

    def __iter__(self) -> Iterator[T]:
        yield from self._head
        self._flush()  # an iterator sees every item appended before it reaches the file
        if self._file is None:
            return
        offset, end = 0, self._file.tell()
        while offset < end:
            self._file.seek(offset)
            batch: list[T] = pickle.load(self._file)
            offset = self._file.tell()
            self._file.seek(0, 2)  # appends go to the end, wherever a reader left the file
            yield from batch

    def close(self) -> None:
        """Drop the items and remove the file; the spool is empty afterwards."""
        self._head, self._pending, self._count = [], [], 0
        if self._file is not None:
            self._file.close()
            self._file = None

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(prefix="batchgen-spool-")  # noqa: SIM115 (close())
        pickle.dump(self._pending, self._file, protocol=pickle.HIGHEST_PROTOCOL)
        self._pending = []
