"""The `batchgen` command's entry point: a Ctrl-C while Python loads ends it without a traceback."""

import signal


def main() -> None:
    # While the CLI loads, Ctrl-C ends the process by the signal itself, as before Python starts:
    # nothing has begun, and there is no half-imported module to raise KeyboardInterrupt from.
    loading = signal.signal(signal.SIGINT, signal.SIG_DFL)
    from batchgen.cli import main as run_cli

    signal.signal(signal.SIGINT, loading)  # from here on the CLI says "interrupted" and exits 130
    run_cli()
