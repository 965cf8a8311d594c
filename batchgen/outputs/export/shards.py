"""What the shard formats share: a sample's metadata line and samples cut into numbered shards."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from batchgen.outputs.export.samples import Sample


@dataclass(frozen=True, slots=True)
class Shard:
    """One shard file to write: its name under DEST and its samples, in order."""

    name: str  # e.g. "000000.tar", or "train/000000.tar" with splits
    samples: tuple[Sample, ...]
    weight: int  # the samples' weights summed (a tar shard: its members' bytes)


def metadata_line(sample: Sample, **first: Any) -> bytes:
    """The sample's metadata as one JSON line, `first` (e.g. file_name) leading."""
    return (json.dumps({**first, **sample.metadata}, ensure_ascii=False) + "\n").encode()


def cut_shards(
    samples: Sequence[Sample],
    suffix: str,
    *,
    max_count: int,
    max_bytes: int,
    weight: Callable[[Sample], int],
) -> list[Shard]:
    """Consecutive samples per split into shards of at most `max_count` samples and `max_bytes`.

    A sample heavier than `max_bytes` gets a shard of its own rather than none.
    """
    shards: list[Shard] = []
    for split in sorted({sample.split for sample in samples}):
        prefix = f"{split}/" if split else ""
        first = len(shards)  # numbers start at 0 in each split
        current: list[Sample] = []
        size = 0
        for sample in (s for s in samples if s.split == split):
            cost = weight(sample)
            if current and (len(current) >= max_count or size + cost > max_bytes):
                shards.append(_shard(prefix, len(shards) - first, suffix, current, size))
                current, size = [], 0
            current.append(sample)
            size += cost
        if current:
            shards.append(_shard(prefix, len(shards) - first, suffix, current, size))
    return shards


def _shard(prefix: str, number: int, suffix: str, samples: list[Sample], weight: int) -> Shard:
    return Shard(f"{prefix}{number:06d}{suffix}", tuple(samples), weight)
