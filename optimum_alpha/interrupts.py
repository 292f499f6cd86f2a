"""Ctrl-C (SIGINT) and SIGTERM handling shared by pruning, saving and the command line.

``timeout``, ``docker stop`` and SLURM stop a job with SIGTERM, whose default action kills the process
without running any clean-up. Inside :func:`sigterm_as_interrupt` SIGTERM raises ``KeyboardInterrupt``
like Ctrl-C, so the same clean-up paths (staging folders removed, blocks written whole) run for both.
Python lets only the main thread install signal handlers; elsewhere both helpers do nothing.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Make SIGTERM raise ``KeyboardInterrupt`` inside the block (only where SIGTERM has its default action)."""
    if not _in_main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _deliver(signum: int, handler: Any, frame: Any) -> None:
    """Run the handler that was in place when ``signum`` arrived, as the signal itself would have."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        signal.raise_signal(signum)  # the default action (SIGTERM: the process ends)


@contextlib.contextmanager
def hold_interrupts(deliver: bool = True) -> Iterator[list[int]]:
    """Delay SIGINT and SIGTERM until the block exits, then deliver the first one to its previous handler.

    Yields the list of signal numbers received meanwhile. With ``deliver=False`` they are only recorded:
    for work that must finish once started and after which nothing is left to stop (deleting the backup
    of a save that already succeeded).
    """
    if not _in_main_thread():
        yield []
        return
    held: list[tuple[int, Any]] = []
    received: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        held.append((signum, frame))
        received.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in HELD_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held and deliver:
        signum, frame = held[0]
        _deliver(signum, previous[signum], frame)
