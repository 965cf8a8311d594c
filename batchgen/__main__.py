"""`python -m batchgen` is the `batchgen` command."""

from batchgen.entry import main

main()
