"""Outputs: the run folder, and everything made from it.

In: each Result from the runner. `store` writes images atomically and then their line in the
manifest (`manifest` is the one typed record every reader uses), keeps the folder's `rowindex`
for resume and results.csv, and `writer` batches that off the event loop. From a run folder:
`gallery` (the HTML report), `status`, `export` (datasets), `shards` and `merge`, `changes` (what
differs from the folder's last run). Out: files in the output folder, nothing else.
"""
