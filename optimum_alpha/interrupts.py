"""Ctrl-C (SIGINT) and SIGTERM handling shared by pruning, saving and the command line.

``timeout``, ``docker stop`` and SLURM stop a job with SIGTERM, whose default action kills the process
without running any clean-up. Inside :func:`sigterm_as_interrupt` SIGTERM raises ``KeyboardInterrupt``
like Ctrl-C, so the same clean-up paths (staging folders removed, blocks written whole) run for both.
Python lets only the main thread install signal handlers; elsewhere both helpers do nothing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _replaced_handler(signum: int, expected: Any, handler: Any, active: bool = True) -> Iterator[None]:
    """``handler`` for ``signum`` inside the block, only where the current handler is ``expected``."""
    if not active or not _in_main_thread() or signal.getsignal(signum) is not expected:
        yield
        return
    signal.signal(signum, handler)
    try:
        yield
    finally:
        signal.signal(signum, expected)


def sigterm_as_interrupt() -> contextlib.AbstractContextManager:
    """Make SIGTERM raise ``KeyboardInterrupt`` inside the block (only where SIGTERM has its default action)."""
    return _replaced_handler(signal.SIGTERM, signal.SIG_DFL, _raise_interrupt)


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

    # A handler installed outside Python (getsignal() is None) cannot be restored later: left alone.
    previous = {sig: signal.signal(sig, hold) for sig in HELD_SIGNALS if signal.getsignal(sig) is not None}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held and deliver:
        signum, frame = held[0]
        _deliver(signum, previous[signum], frame)


COMMAND_NAMES = ("optimum-alpha", "optimum-cli")
INTERRUPTED_EXIT_CODE = 130


def is_command_line() -> bool:
    """True inside one of our command-line programs (the console scripts or ``python -m ...commands.cli``)."""
    program = sys.argv[0] if sys.argv and sys.argv[0] else ""
    return Path(program).name in COMMAND_NAMES or program.replace("\\", "/").endswith("optimum_alpha/commands/cli.py")


def _exit_interrupted(signum: int, frame: Any) -> None:
    sys.stderr.write("error: interrupted\n")
    sys.stderr.flush()
    os._exit(INTERRUPTED_EXIT_CODE)  # nothing is written yet: no clean-up to run


def exit_on_interrupt_while_starting() -> contextlib.AbstractContextManager:
    """In a command-line program, a Ctrl-C during the block ends it at once with exit code 130.

    For the seconds ``import optimum_alpha`` spends importing torch and transformers: a
    ``KeyboardInterrupt`` raised inside a third-party import can surface as another error (numpy's lazy
    attributes turn it into a ``RecursionError``), so the process exits from the signal handler itself.
    """
    return _replaced_handler(signal.SIGINT, signal.default_int_handler, _exit_interrupted, active=is_command_line())
