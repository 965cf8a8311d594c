"""Rows: from a spreadsheet to requests.

In: the job (JobSpec) and its sheet file (CSV, TSV, XLSX, JSONL). `sheet` reads rows as the
spreadsheet shows them, `expand` turns template and sweep cells into one row per request,
`payload` (with `columns`, `fields`, `controlnet`, `images`, `traps`) builds each into the exact
request body, and `prepare` does all of it in one pass. Out: a `Prepared` holding the plan's
counts, every problem with its file, row and column, and every request as a Task in sheet order
(in a `spool`, so memory stays flat); `wire` makes a Task into what one endpoint is sent.
Nothing here talks to a server.
"""
