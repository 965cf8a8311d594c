"""imagefolder: the images, metadata.jsonl per split (file_name first), NAME.txt captions."""

from __future__ import annotations

from batchgen.outputs.export.dest import Destination
from batchgen.outputs.export.options import ExportOptions, Progress, Written
from batchgen.outputs.export.samples import ExportPlan, Sample
from batchgen.outputs.export.shards import metadata_line

METADATA = "metadata.jsonl"


def write_imagefolder(
    plan: ExportPlan, dest: Destination, options: ExportOptions, progress: Progress
) -> Written:
    written = kept = 0
    for sample in plan.samples:
        name = _in_split(sample, sample.file_name)
        if dest.size(name) == sample.size:  # kept from an earlier attempt
            kept += 1
        else:
            dest.copy_in(str(sample.source), name)
            written += 1
        if options.captions:
            caption = _in_split(sample, sample.key + ".txt")
            data = sample.text.encode()
            if dest.size(caption) == len(data):
                kept += 1
            else:
                dest.put_bytes(caption, data)
                written += 1
        progress(1)
    for (
        split
    ) in plan.splits:  # written last: a loader sees the metadata only once every image is in
        with dest.open_whole(f"{split}/{METADATA}" if split else METADATA) as handle:
            for sample in plan.samples:
                if sample.split == split:
                    handle.write(metadata_line(sample, file_name=sample.file_name))
        written += 1
    return Written(written, kept)


def _in_split(sample: Sample, name: str) -> str:
    return f"{sample.split}/{name}" if sample.split else name
