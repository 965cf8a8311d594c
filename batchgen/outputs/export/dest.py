"""Where an export goes: a local folder or an fsspec URL, written one whole file at a time."""

from __future__ import annotations

import json
import os
import posixpath
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import IO, Any

from batchgen.backends.a1111 import redact_url
from batchgen.errors import ConfigError

STATE_FILE = ".batchgen-export.json"  # hidden: dataset loaders skip names starting with a dot
PARTIAL = ".partial-"  # a local file being written; renamed to its name when whole


class Destination:
    """DEST as a file system and a root; a file shows under its name only once it is whole.

    Local files are written beside their name and renamed; object stores make an object visible
    only when its upload completes, so there a file is written straight to its name. Like
    `tar cf`, nothing is fsynced: an export is derived data, and after a power cut the writers
    check each file they would keep (its size, or its footer) before trusting it.
    """

    def __init__(self, url: str) -> None:
        try:
            import fsspec
            from fsspec.implementations.local import LocalFileSystem
        except ImportError as error:  # pragma: no cover - fsspec is a dependency
            raise ConfigError(
                f"--to {redact_url(url)}: fsspec is not installed ({error})"
            ) from None
        try:
            fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as error:
            scheme = url.split("://", 1)[0]
            raise ConfigError(
                f"--to {redact_url(url)}: no file system for it ({_first_line(error)}); for "
                f"s3:// install 'batchgen[s3]', for {scheme}:// the fsspec backend for it"
            ) from None
        self.url = url
        self.fs = fs
        self.root = root.rstrip("/") or root
        self.local = isinstance(fs, LocalFileSystem)

    def path(self, name: str) -> str:
        return posixpath.join(self.root, name)

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def size(self, name: str) -> int | None:
        try:
            return int(self.fs.size(self.path(name)))
        except (FileNotFoundError, OSError):
            return None

    def names(self) -> list[str]:
        """Every file under DEST, relative, partial files included; [] when DEST does not exist."""
        try:
            found = self.fs.find(self.root)
        except FileNotFoundError:
            return []
        base = self.fs._strip_protocol(self.root).rstrip("/") + "/"
        return sorted(str(path)[len(base) :] for path in found if str(path).startswith(base))

    @contextmanager
    def open_whole(self, name: str) -> Iterator[IO[bytes]]:
        """A file to write `name` into; it appears under its name only if the block ends cleanly."""
        with self.whole_sink(name) as sink:
            if not isinstance(sink, str):
                yield sink
                return
            with open(sink, "wb") as handle:
                yield handle

    @contextmanager
    def whole_sink(self, name: str) -> Iterator[str | IO[bytes]]:
        """Like `open_whole`, but locally a path, for writers with their own (faster) file I/O."""
        if not self.local:
            handle = self.fs.open(self.path(name), "wb")
            try:
                yield handle
            except BaseException:
                # fsspec's close (run by __exit__ and __del__ too) would upload the half written:
                # abort the upload and mark the file closed so that nothing commits it.
                handle.discard()
                handle.closed = True
                raise
            handle.close()
            return
        with self._renamed_into_place(name) as partial:
            yield partial

    def put_bytes(self, name: str, data: bytes) -> None:
        with self.open_whole(name) as handle:
            handle.write(data)

    def copy_in(self, source: str, name: str) -> None:
        """A file copied in whole."""
        if not self.local:
            self.fs.put_file(source, self.path(name))
            return
        with self._renamed_into_place(name) as partial:
            shutil.copyfile(source, partial)  # sendfile on Linux: no copy through Python

    @contextmanager
    def _renamed_into_place(self, name: str) -> Iterator[str]:
        """A partial path beside `name`, renamed to it if the block ends cleanly, else removed."""
        folder, base = os.path.split(self.path(name))
        os.makedirs(folder, exist_ok=True)
        partial = os.path.join(folder, PARTIAL + base)
        try:
            yield partial
            os.replace(partial, os.path.join(folder, base))
        except BaseException:
            _remove(partial)
            raise

    def read_state(self) -> Mapping[str, Any] | None:
        try:
            with self.fs.open(self.path(STATE_FILE), "rb") as handle:
                data = json.loads(handle.read())
        except (FileNotFoundError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def remove_partials(self) -> None:
        """Files a killed export left half written (local only: object stores keep none)."""
        if self.local:
            for name in self.names():
                if posixpath.basename(name).startswith(PARTIAL):
                    _remove(self.path(name))


def _remove(path: str) -> None:
    with suppress(FileNotFoundError):
        os.remove(path)


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
