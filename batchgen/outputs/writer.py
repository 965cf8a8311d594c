"""Group commit: rows that finish while a batch is being written go to disk in the next batch."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from concurrent.futures import Executor
from typing import Any

from batchgen.outputs.manifest import ManifestRecord
from batchgen.outputs.store import OutputStore
from batchgen.records import Result

MAX_BATCH = 256


class GroupWriter:
    """Feeds `OutputStore.record_many` from the event loop, one batch at a time.

    Every fsync costs the same for one row or a hundred, and each hand-off to the writer
    thread costs a GIL switch; batching both keeps the store off the critical path.
    """

    def __init__(self, store: OutputStore, executor: Executor) -> None:
        self._store = store
        self._executor = executor
        self._pending: list[tuple[Result, Mapping[str, Any], asyncio.Future[ManifestRecord]]] = []
        self._drainer: asyncio.Task[None] | None = None

    def write(
        self, result: Result, manifest_payload: Mapping[str, Any]
    ) -> asyncio.Future[ManifestRecord]:
        """The row's manifest line, once it and the row's images are on disk."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[ManifestRecord] = loop.create_future()
        self._pending.append((result, manifest_payload, done))
        if self._drainer is None or self._drainer.done():
            self._drainer = loop.create_task(self._drain())
        return done

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            items = [(result, payload) for result, payload, _ in batch]
            try:
                lines = await loop.run_in_executor(self._executor, self._store.record_many, items)
            except Exception as error:
                for *_, done in batch:
                    if not done.done():
                        done.set_exception(error)
                continue
            for (*_, done), line in zip(batch, lines, strict=True):
                if not done.done():
                    done.set_result(line)
