"""Placeholder PNGs: deterministic pixels per (prompt, negative, seed, checkpoint, size), cheap.

The fast encoder writes the first scanline (a gradient plus the input digest as raw pixels) with
PNG filter None and every later scanline with filter Up and zero deltas, so each column repeats
the first row. The compressed tail depends only on the size and is cached; per image only one
scanline is deflated, and the zlib Adler-32 is combined arithmetically instead of recomputed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import struct
import zlib
from collections import OrderedDict
from typing import Protocol

from PIL import Image, PngImagePlugin

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ADLER_BASE = 65521
_RAMP_LEVELS = 85  # three channels x 85 levels fit one 256-entry translate table


def image_digest(prompt: str, negative: str, seed: int, checkpoint: str, w: int, h: int) -> bytes:
    key = "\x00".join((prompt, negative, str(seed), checkpoint, f"{w}x{h}"))
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def text_chunk(key: str, value: str) -> bytes:
    """tEXt when latin-1 encodable, else uncompressed iTXt (Pillow's `PngInfo.add_text` rule)."""
    try:
        return _chunk(b"tEXt", key.encode("latin-1") + b"\x00" + value.encode("latin-1"))
    except UnicodeEncodeError:
        body = key.encode("latin-1") + b"\x00\x00\x00\x00\x00" + value.encode("utf-8")
        return _chunk(b"iTXt", body)


def adler32_combine(adler1: int, adler2: int, len2: int) -> int:
    """zlib's adler32_combine: the checksum of A+B from those of A and B and len(B)."""
    rem = len2 % _ADLER_BASE
    sum1 = adler1 & 0xFFFF
    sum2 = (rem * sum1) % _ADLER_BASE
    sum1 += (adler2 & 0xFFFF) + _ADLER_BASE - 1
    sum2 += ((adler1 >> 16) & 0xFFFF) + ((adler2 >> 16) & 0xFFFF) + _ADLER_BASE - rem
    sum1 %= _ADLER_BASE
    sum2 %= _ADLER_BASE
    return sum1 | (sum2 << 16)


@functools.lru_cache(maxsize=256)
def _segment(left: int, right: int) -> bytes:
    """Translate-table slice for one channel: 85 levels from colour `left` to `right` (4 bits)."""
    a, b = left * 17, right * 17
    return bytes(a + (b - a) * lv // (_RAMP_LEVELS - 1) for lv in range(_RAMP_LEVELS))


class Encoder(Protocol):
    def encode(self, digest: bytes, width: int, height: int, infotext: str | None) -> bytes:
        """PNG bytes for `digest` at that size, with a `parameters` text chunk if given."""
        ...


class FastPngEncoder:
    """Builds PNGs from a cached compressed body; cost is O(width), not O(width*height)."""

    def __init__(self, cache_size: int = 64) -> None:
        self._cache_size = cache_size
        self._tails: OrderedDict[tuple[int, int], tuple[bytes, int, int]] = OrderedDict()
        self._ramps: dict[int, bytes] = {}

    def _tail(self, width: int, height: int) -> tuple[bytes, int, int]:
        key = (width, height)
        hit = self._tails.get(key)
        if hit is not None:
            self._tails.move_to_end(key)
            return hit
        row = b"\x02" + bytes(3 * width)
        rows_left = height - 1
        chunk_rows = max(1, (1 << 20) // len(row))  # feed ~1 MiB at a time, not the whole image
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        parts, adler = [], zlib.adler32(b"")
        while rows_left > 0:
            n = min(chunk_rows, rows_left)
            chunk = row * n
            parts.append(comp.compress(chunk))
            adler = zlib.adler32(chunk, adler)
            rows_left -= n
        parts.append(comp.flush())
        entry = (b"".join(parts), adler, len(row) * (height - 1))
        self._tails[key] = entry
        if len(self._tails) > self._cache_size:
            self._tails.popitem(last=False)
        return entry

    def _ramp(self, width: int) -> bytes:
        ramp = self._ramps.get(width)
        if ramp is None:
            span = max(width - 1, 1)
            levels = [x * (_RAMP_LEVELS - 1) // span for x in range(width)]
            ramp = bytes(v + c * _RAMP_LEVELS for v in levels for c in range(3))
            self._ramps[width] = ramp
        return ramp

    def first_row(self, digest: bytes, width: int) -> bytes:
        """A left-to-right gradient between two digest colours, then the digest as raw pixels."""
        table = b"".join(_segment(digest[c] >> 4, digest[3 + c] >> 4) for c in range(3))
        row = bytearray(self._ramp(width).translate(table + b"\x00"))
        stamp = digest[: len(row)]
        start = (len(row) - len(stamp)) // 6 * 3
        row[start : start + len(stamp)] = stamp
        return b"\x00" + bytes(row)

    def encode(self, digest: bytes, width: int, height: int, infotext: str | None) -> bytes:
        row = self.first_row(digest, width)
        tail, tail_adler, tail_len = self._tail(width, height)
        comp = zlib.compressobj(1, zlib.DEFLATED, -15)
        if height > 1:
            head = comp.compress(row) + comp.flush(zlib.Z_SYNC_FLUSH)
            adler = adler32_combine(zlib.adler32(row), tail_adler, tail_len)
        else:
            head, tail = comp.compress(row) + comp.flush(), b""
            adler = zlib.adler32(row)
        idat = b"\x78\x01" + head + tail + struct.pack(">I", adler)
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        parts = [_PNG_SIGNATURE, _chunk(b"IHDR", ihdr)]
        if infotext is not None:
            parts.append(text_chunk("parameters", infotext))
        parts += [_chunk(b"IDAT", idat), _chunk(b"IEND", b"")]
        return b"".join(parts)


class PillowPngEncoder:
    """The naive baseline: draw the same pixels with Pillow and encode a full PNG every time."""

    def __init__(self) -> None:
        self._rows = FastPngEncoder(cache_size=1)

    def encode(self, digest: bytes, width: int, height: int, infotext: str | None) -> bytes:
        row = self._rows.first_row(digest, width)[1:]
        img = Image.frombytes("RGB", (width, 1), row).resize(
            (width, height), Image.Resampling.NEAREST
        )
        info = PngImagePlugin.PngInfo()
        if infotext is not None:
            info.add_text("parameters", infotext)
        buf = io.BytesIO()
        img.save(buf, format="PNG", pnginfo=info)
        return buf.getvalue()


def make_encoder(kind: str) -> Encoder:
    return PillowPngEncoder() if kind == "pillow" else FastPngEncoder()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_image(data: str) -> tuple[bytes, tuple[int, int]] | None:
    """A1111 `decode_base64_to_image` for base64 / data URLs: (raw bytes, size), None if bad."""
    if data.startswith("data:image/"):
        data = data.split(";", 1)[1].split(",", 1)[-1]
    try:
        raw = base64.b64decode(data, validate=False)
        with Image.open(io.BytesIO(raw)) as img:
            return raw, img.size
    except Exception:  # Pillow raises many types for garbage input; any means "invalid".
        return None
