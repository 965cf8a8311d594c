"""The placeholder PNG encoders: valid files, deterministic and distinct pixels, text chunks."""

from __future__ import annotations

import io
import zlib

import pytest
from PIL import Image

from batchgen.sim.images import (
    FastPngEncoder,
    PillowPngEncoder,
    adler32_combine,
    image_digest,
    text_chunk,
)


def test_adler32_combine_matches_zlib() -> None:
    a, b = b"hello world" * 7, bytes(range(256)) * 300
    assert adler32_combine(zlib.adler32(a), zlib.adler32(b), len(b)) == zlib.adler32(a + b)
    assert adler32_combine(zlib.adler32(b""), zlib.adler32(b), len(b)) == zlib.adler32(b)


@pytest.mark.parametrize("size", [(1, 1), (8, 3), (64, 64), (512, 512), (1024, 640)])
def test_fast_png_is_valid_and_matches_pillow(size: tuple[int, int]) -> None:
    digest = image_digest("p", "n", 1, "ckpt", *size)
    data = FastPngEncoder().encode(digest, *size, "text")
    img = Image.open(io.BytesIO(data))
    img.load()  # decodes every row and checks the zlib stream
    assert img.size == size and img.mode == "RGB" and img.info["parameters"] == "text"
    idat = data[data.index(b"IDAT") + 4 : data.index(b"IEND") - 8]
    assert len(zlib.decompress(idat)) == size[1] * (3 * size[0] + 1)
    baseline = Image.open(io.BytesIO(PillowPngEncoder().encode(digest, *size, None)))
    assert baseline.tobytes() == img.tobytes()


def test_distinct_inputs_give_distinct_pixels() -> None:
    enc = FastPngEncoder()
    keys = [("p", "n", s, "c", 512, 512) for s in range(200)]
    keys += [
        ("q", "n", 0, "c", 512, 512),
        ("p", "m", 0, "c", 512, 512),
        ("p", "n", 0, "d", 512, 512),
    ]
    rows = {enc.first_row(image_digest(*k), 512) for k in keys}
    assert len(rows) == len(keys)
    same = enc.encode(image_digest(*keys[0]), 512, 512, None)
    assert same == FastPngEncoder().encode(image_digest(*keys[0]), 512, 512, None)


def test_text_chunk_latin1_or_itxt() -> None:
    assert text_chunk("parameters", "café")[4:8] == b"tEXt"
    assert text_chunk("parameters", "狐狸")[4:8] == b"iTXt"
