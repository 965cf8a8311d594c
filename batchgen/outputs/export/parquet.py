"""parquet: shards NNNNNN.parquet with an `image` column in the `datasets` Image layout.

The layout is a struct of `bytes` and `path`, and the schema carries the `datasets` features
(key b"huggingface"), so `load_dataset("parquet", ...)` decodes the column to PIL images.
"""

from __future__ import annotations

import json
import mmap
import os
from array import array
from collections.abc import Iterator
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.outputs.export.dest import Destination
from batchgen.outputs.export.options import ExportOptions, Progress, Written
from batchgen.outputs.export.samples import ExportPlan, Sample
from batchgen.outputs.export.shards import Shard, cut_shards

ROW_GROUP_BYTES = 32 << 20  # images held in memory at once, whatever the number of images
# The writer checks a page's size only between batches of rows: batches of about a page of images
# keep its encode and page buffers small, cache-hot and reused, where its default (1024 rows: the
# whole row group) takes 32 MB of fresh, page-faulted memory twice per row group.
PAGE_BYTES = 1 << 20
MAPPED_IMAGE_BYTES = 256 << 10  # mean image size from which a group's files are mapped, not read
ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_parquet(
    plan: ExportPlan, dest: Destination, options: ExportOptions, progress: Progress
) -> Written:
    schema = _schema(plan)
    shards = cut_shards(
        plan.samples,
        ".parquet",
        max_count=options.max_per_shard,
        max_bytes=options.max_shard_bytes,
        weight=lambda sample: sample.size,
    )
    written = kept = 0
    for shard in shards:
        if _is_whole(dest, shard):  # kept from an earlier attempt
            kept += 1
            progress(len(shard.samples))
            continue
        with dest.whole_sink(shard.name) as sink:  # a local path: 2x faster than a Python file
            _write_shard(shard, schema, sink, progress)
        written += 1
    return Written(written, kept)


def _is_whole(dest: Destination, shard: Shard) -> bool:
    """The shard is there with its footer and every row (a power cut may leave less)."""
    if not dest.exists(shard.name):
        return False
    try:
        with dest.fs.open(dest.path(shard.name), "rb") as handle:
            rows: int = pq.ParquetFile(handle).metadata.num_rows
    except (OSError, pa.ArrowException):
        return False
    return rows == len(shard.samples)


def _schema(plan: ExportPlan) -> pa.Schema:
    columns = plan.columns
    fields = [pa.field("image", IMAGE)]
    fields += [pa.field(name, ARROW_TYPES[kind]) for name, kind in columns.items()]
    features: dict[str, Any] = {"image": {"_type": "Image"}}
    features.update({name: {"dtype": kind, "_type": "Value"} for name, kind in columns.items()})
    info = json.dumps({"info": {"features": features}}, sort_keys=True)
    return pa.schema(fields, metadata={b"huggingface": info.encode()})


def _write_shard(
    shard: Shard, schema: pa.Schema, sink: str | IO[bytes], progress: Progress
) -> None:
    names = [name for name in schema.names if name != "image"]
    with pq.ParquetWriter(
        sink,
        schema,
        compression={"image.bytes": "NONE", **dict.fromkeys(["image.path", *names], "SNAPPY")},
        use_dictionary=names,  # not the image bytes: each is unique
        write_statistics=names,
        data_page_size=PAGE_BYTES,
        write_batch_size=_batch_rows(shard),
    ) as writer:
        for group in _row_groups(shard):
            # Arrays built column by column: from_pydict over dicts of bytes is 3x slower.
            columns = [_images(group)] + [
                pa.array([s.metadata[name] for s in group], schema.field(name).type)
                for name in names
            ]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            progress(len(group))


def _batch_rows(shard: Shard) -> int:
    """Rows per writer batch: about a page of the shard's images, from 1 to arrow's 1024."""
    return min(1024, max(1, PAGE_BYTES * len(shard.samples) // max(1, shard.weight)))


def _images(group: list[Sample]) -> pa.Array | pa.ChunkedArray:
    """The group's image column; large images as a chunk each over their file mapped into memory.

    The writer copies a mapped image from the page cache straight into its pages: no read into
    a buffer of ours first (a copy, and fresh memory to fault in). The chunks do not show in
    the file, which is byte for byte the one a single array gives. Small images are read into
    one buffer instead: a mapping and a chunk cost more (~50 us) than copying them.
    """
    paths = pa.array([sample.file_name for sample in group], pa.string())
    if sum(sample.size for sample in group) < MAPPED_IMAGE_BYTES * len(group):
        return pa.StructArray.from_arrays([_read_images(group), paths], fields=list(IMAGE))
    chunks = []
    for index, sample in enumerate(group):
        bounds = pa.py_buffer(array("i", [0, sample.size]).tobytes())
        image = pa.Array.from_buffers(pa.binary(), 1, [None, bounds, _mapped(sample)])
        chunks.append(
            pa.StructArray.from_arrays([image, paths.slice(index, 1)], fields=list(IMAGE))
        )
    return pa.chunked_array(chunks, IMAGE)


def _read_images(group: list[Sample]) -> pa.Array:
    """The group's image files read straight into one arrow buffer (no copy per image)."""
    data = pa.allocate_buffer(sum(sample.size for sample in group))
    view = memoryview(data)
    offsets = [0]
    for sample in group:
        end = offsets[-1] + sample.size
        with sample.source.open("rb", buffering=0) as image:
            if image.readinto(view[offsets[-1] : end]) != sample.size or image.read(1):
                raise OSError(f"{sample.source} changed size since the export was planned")
        offsets.append(end)
    bounds = pa.py_buffer(array("i", offsets).tobytes())
    return pa.Array.from_buffers(pa.binary(), len(group), [None, bounds, data])


def _mapped(sample: Sample) -> pa.Buffer:
    """The image file's bytes, mapped read-only with its pages mapped in up front.

    A file cut short in place while mapped would kill the process (SIGBUS); runs write an image
    whole beside its name and rename it, so a rerun replaces the file and leaves the mapping be.
    """
    with sample.source.open("rb") as image:
        if os.fstat(image.fileno()).st_size != sample.size:
            raise OSError(f"{sample.source} changed size since the export was planned")
        if not sample.size:
            return pa.py_buffer(b"")  # mmap refuses an empty file
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # POPULATE: Linux only
        return pa.py_buffer(mmap.mmap(image.fileno(), sample.size, flags, mmap.PROT_READ))


def _row_groups(shard: Shard) -> Iterator[list[Sample]]:
    group: list[Sample] = []
    size = 0
    for sample in shard.samples:
        if group and size + sample.size > ROW_GROUP_BYTES:
            yield group
            group, size = [], 0
        group.append(sample)
        size += sample.size
    if group:
        yield group
