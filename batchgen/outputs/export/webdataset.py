"""webdataset: tar shards NNNNNN.tar; each sample is KEY.png (or .jpg...), KEY.json and KEY.txt."""

from __future__ import annotations

import tarfile
from typing import IO

from batchgen.outputs.export.dest import Destination
from batchgen.outputs.export.options import ExportOptions, Progress, Written
from batchgen.outputs.export.samples import ExportPlan, Sample
from batchgen.outputs.export.shards import Shard, cut_shards, metadata_line

BLOCK = 512
FIXED_MTIME = 0  # byte-identical shards: no clock, owner or mode of this machine in a header


def write_webdataset(
    plan: ExportPlan, dest: Destination, options: ExportOptions, progress: Progress
) -> Written:
    shards = cut_shards(
        plan.samples,
        ".tar",
        max_count=options.max_per_shard,
        max_bytes=options.max_shard_bytes,
        weight=_tar_bytes,
    )
    written = kept = 0
    for shard in shards:
        if dest.size(shard.name) == _shard_bytes(shard):  # kept from an earlier attempt
            kept += 1
        else:
            with dest.open_whole(shard.name) as handle:
                _write_tar(shard, handle, progress)
            written += 1
            continue
        progress(len(shard.samples))
    return Written(written, kept)


def _write_tar(shard: Shard, handle: IO[bytes], progress: Progress) -> None:
    """A tar archive written one member at a time in one write each, as tar lays it out.

    (tarfile's stream mode copies in 10 KB records, at half the speed of `tar cf`.)
    """
    size = 0
    for sample in shard.samples:
        for name, data in ((sample.file_name, sample.source.read_bytes()), *_texts(sample)):
            header = _header(name, len(data))
            handle.write(header)
            handle.write(data)
            handle.write(bytes(-len(data) % BLOCK))
            size += len(header) + len(data) + (-len(data) % BLOCK)
        progress(1)
    end = 2 * BLOCK  # two zero blocks, then zeros up to a whole record, as tar writes them
    handle.write(bytes(end + (-(size + end) % tarfile.RECORDSIZE)))


def _texts(sample: Sample) -> tuple[tuple[str, bytes], ...]:
    return (
        (f"{sample.key}.json", metadata_line(sample)),
        (f"{sample.key}.txt", sample.text.encode()),
    )


def _header(name: str, size: int) -> bytes:
    """A ustar header (pax only for a name ustar cannot hold), with no clock or owner in it."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


def _shard_bytes(shard: Shard) -> int:
    """The shard's exact size: a resumed export keeps a shard only if it has this size."""
    size = shard.weight + 2 * BLOCK  # cut_shards summed _tar_bytes
    return size + -size % tarfile.RECORDSIZE


def _tar_bytes(sample: Sample) -> int:
    members = [(sample.file_name, sample.size)]
    members += [(name, len(data)) for name, data in _texts(sample)]
    return sum(_header_bytes(name, size) + -(-size // BLOCK) * BLOCK for name, size in members)


def _header_bytes(name: str, size: int) -> int:
    if name.isascii() and len(name) < 100:  # fits ustar's name field: one block, no pax
        return BLOCK
    return len(_header(name, size))
