"""webdataset: tar shards NNNNNN.tar; each sample is KEY.png (or .jpg...), KEY.json and KEY.txt."""

from __future__ import annotations

import io
import tarfile
from typing import IO

from batchgen.export.dest import Destination
from batchgen.export.options import ExportOptions, Progress, Written
from batchgen.export.samples import ExportPlan, Sample
from batchgen.export.shards import Shard, cut_shards, metadata_line

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
        if dest.exists(shard.name):  # shards appear only whole
            kept += 1
        else:
            with dest.open_whole(shard.name) as handle:
                _write_tar(shard, handle, progress)
            written += 1
            continue
        progress(len(shard.samples))
    return Written(written, kept)


def _write_tar(shard: Shard, handle: IO[bytes], progress: Progress) -> None:
    with tarfile.open(fileobj=handle, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
        for sample in shard.samples:
            with sample.source.open("rb") as image:
                tar.addfile(_member(sample.file_name, sample.size), image)
            for suffix, data in _texts(sample):
                tar.addfile(_member(sample.key + suffix, len(data)), io.BytesIO(data))
            progress(1)


def _texts(sample: Sample) -> tuple[tuple[str, bytes], ...]:
    return ((".json", metadata_line(sample)), (".txt", sample.text.encode()))


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = FIXED_MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _tar_bytes(sample: Sample) -> int:
    sizes = [sample.size, *(len(data) for _, data in _texts(sample))]
    return sum(BLOCK + -(-size // BLOCK) * BLOCK for size in sizes)
