"""Export: run folders (their manifests and images) in; a dataset training code loads out.

`plan_export` reads each run's manifest through `ManifestRecord` and yields one `Sample` per image
of a row that ended ok; a format writer (imagefolder, webdataset, parquet) puts them in DEST, a
folder or an fsspec URL, one whole file at a time; the dataset card (README.md) is written last.
"""

from batchgen.outputs.export.options import FORMATS, ExportOptions, parse_size
from batchgen.outputs.export.run import ExportSummary, export_runs

__all__ = ["FORMATS", "ExportOptions", "ExportSummary", "export_runs", "parse_size"]
