"""`python -m batchgen` is the `batchgen` command."""

import sys

try:
    from batchgen.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python loads: a line, not a traceback
    sys.stderr.write("interrupted; run the same command again to resume\n")
    sys.exit(130)

main()
