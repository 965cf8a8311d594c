"""Ctrl-C and SIGTERM during a run: the first asks for a clean stop, the second stops at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def catch_interrupts(stop: Callable[[], None]) -> Iterator[None]:
    """Call `stop` on the first signal; cancel the current task on the second."""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    interrupted = False

    def on_interrupt() -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            stop()
        elif main is not None:
            log.warning("interrupted again: stopping now")
            main.cancel()

    try:
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
        loop.add_signal_handler(signal.SIGTERM, on_interrupt)
    except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)
