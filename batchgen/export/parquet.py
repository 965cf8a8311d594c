"""parquet: shards NNNNNN.parquet with an `image` column in the `datasets` Image layout.

The layout is a struct of `bytes` and `path`, and the schema carries the `datasets` features
(key b"huggingface"), so `load_dataset("parquet", ...)` decodes the column to PIL images.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from batchgen.export.dest import Destination
from batchgen.export.options import ExportOptions, Progress, Written
from batchgen.export.samples import ExportPlan, Sample
from batchgen.export.shards import Shard, cut_shards

ROW_GROUP_BYTES = 32 << 20  # images held in memory at once, whatever the number of images
# The writer checks a page's size only between batches of rows: batches of about a page of images
# keep its encode and page buffers small, cache-hot and reused, where its default (1024 rows: the
# whole row group) takes 32 MB of fresh, page-faulted memory twice per row group.
PAGE_BYTES = 1 << 20
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
    buffers: list[pa.Buffer | None] = [None, None]  # what images are read into, every shard
    for shard in shards:
        if _is_whole(dest, shard):  # kept from an earlier attempt
            kept += 1
            progress(len(shard.samples))
            continue
        with dest.whole_sink(shard.name) as sink:  # a local path: 2x faster than a Python file
            _write_shard(shard, schema, sink, progress, buffers)
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
    shard: Shard,
    schema: pa.Schema,
    sink: str | IO[bytes],
    progress: Progress,
    buffers: list[pa.Buffer | None],
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
        for group, image_bytes in _read_ahead(_row_groups(shard), buffers):
            # Arrays built column by column: from_pydict over dicts of bytes is 3x slower.
            images = pa.StructArray.from_arrays(
                [image_bytes, pa.array([s.file_name for s in group], pa.string())],
                fields=list(IMAGE),
            )
            columns = [images] + [
                pa.array([s.metadata[name] for s in group], schema.field(name).type)
                for name in names
            ]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))
            progress(len(group))


def _batch_rows(shard: Shard) -> int:
    """Rows per writer batch: about a page of the shard's images, from 1 to arrow's 1024."""
    return min(1024, max(1, PAGE_BYTES * len(shard.samples) // max(1, shard.weight)))


def _read_ahead(
    groups: Iterator[list[Sample]], buffers: list[pa.Buffer | None]
) -> Iterator[tuple[list[Sample], pa.Array]]:
    """Each group with its images, the next group read while this one is written (both calls
    release the GIL); two groups in memory at most, in the two `buffers` used in turn.

    A group is read into the buffer of the group before the last, whose write has returned
    (the writer has encoded its values into pages of its own by then). Fresh memory per group
    costs page faults and zeroing, on every group: the pool hands memory this large back.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="batchgen-export") as reader:
        group = next(groups, None)
        number = 0
        pending = reader.submit(_read_images, group, buffers, number) if group else None
        while group is not None and pending is not None:
            following = next(groups, None)
            images = pending.result()
            if following:
                pending = reader.submit(_read_images, following, buffers, number + 1)
            else:
                pending = None
            yield group, images
            group, number = following, number + 1


def _read_images(group: list[Sample], buffers: list[pa.Buffer | None], number: int) -> pa.Array:
    """The group's image files read straight into one arrow buffer (no copy per image): the
    group's turn of `buffers`, replaced by a larger one when the group does not fit."""
    size = sum(sample.size for sample in group)
    data = buffers[number % 2]
    if data is None or data.size < size:
        # A group's full size whatever this one's, so that the next groups fit; the pages a
        # small export never touches are never mapped in.
        data = buffers[number % 2] = pa.allocate_buffer(max(size, ROW_GROUP_BYTES))
    view = memoryview(data)
    offsets = [0]
    for sample in group:
        end = offsets[-1] + sample.size
        with sample.source.open("rb", buffering=0) as image:
            if image.readinto(view[offsets[-1] : end]) != sample.size or image.read(1):
                raise OSError(f"{sample.source} changed size while being exported")
        offsets.append(end)
    bounds = pa.py_buffer(array("i", offsets).tobytes())
    return pa.Array.from_buffers(pa.binary(), len(group), [None, bounds, data.slice(0, size)])


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
