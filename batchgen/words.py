"""Counts in messages: "1 image", "2 images", "1,000 rows"."""

from __future__ import annotations


def counted(count: int, noun: str, plural: str | None = None) -> str:
    """The count with the noun in the form it takes: 1 row, 0 rows, 1,204 rows."""
    return f"{count:,} {noun if count == 1 else plural or noun + 's'}"
