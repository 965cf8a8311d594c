"""Image cells: a file path (relative to the sheet), an http(s) URL, a data URL or bare base64."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path

from batchgen.records import ImageRef

_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM", b"RIFF")
_BASE64 = re.compile(r"[A-Za-z0-9+/\s]+={0,2}")
_DATA_URL = re.compile(r"data:image/[\w.+-]+;base64,(.*)", re.DOTALL)
_MIN_BASE64 = 32  # shorter strings are names or placeholders, never a whole image


class ImageError(ValueError):
    """A cell that is not a readable image; the message says what to write instead."""


def looks_like_image(data: bytes) -> bool:
    if data.startswith(b"RIFF"):
        return data[8:12] == b"WEBP"
    return data.startswith(_MAGIC)


def decode_inline(text: str) -> bytes | None:
    """The bytes of a data URL or bare base64 image, or None when `text` is neither."""
    match = _DATA_URL.fullmatch(text)
    payload = match.group(1) if match else text
    if len(payload) < _MIN_BASE64 or not _BASE64.fullmatch(payload):
        return None
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if looks_like_image(data[:16]) else None


class ImageResolver:
    """Turns image cells into ImageRefs (hashing each file once) or inline strings sent as-is."""

    def __init__(self, base: Path) -> None:
        self._base = base
        self._hashes: dict[tuple[Path, int, int], str] = {}

    def resolve(self, text: str) -> ImageRef | str:
        if text.startswith(("http://", "https://")):
            return text
        if decode_inline(text) is not None:
            return text
        if text.startswith("data:"):
            raise ImageError("this data URL does not hold a base64 PNG, JPEG, WEBP or GIF image")
        return self._file(text)

    def _file(self, text: str) -> ImageRef:
        path = Path(text).expanduser()
        if not path.is_absolute():
            path = self._base / path
        path = path.resolve()
        if not path.is_file():
            if "/" not in text and "\\" not in text and "." not in text:
                raise ImageError(
                    f"{text!r} is not a file, URL or base64 image "
                    "(write a path such as images/pose.png, relative to the sheet)"
                )
            raise ImageError(f"image file not found: {path}")
        stat = path.stat()
        cache_key = (path, stat.st_size, stat.st_mtime_ns)
        digest = self._hashes.get(cache_key)
        if digest is None:
            sha = hashlib.sha256()
            with path.open("rb") as handle:
                head = handle.read(16)
                if not looks_like_image(head):
                    raise ImageError(f"{path} is not a PNG, JPEG, WEBP, GIF or BMP image")
                sha.update(head)
                for block in iter(lambda: handle.read(1 << 20), b""):
                    sha.update(block)
            digest = sha.hexdigest()
            self._hashes[cache_key] = digest
        return ImageRef(path=path, sha256=digest)


def encode_file(ref: ImageRef) -> str:
    """Bare base64 of the file, read now (at send time)."""
    return base64.b64encode(ref.path.read_bytes()).decode("ascii")
