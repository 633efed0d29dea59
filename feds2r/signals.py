"""One signal policy for feds2r's processes: SIGTERM and SIGHUP cancel a run as Ctrl-C does.

Python ends a process on SIGTERM (what ``kill``, ``timeout`` and CI send) without running any
``finally`` block, so the processes a command started and its half-written files would be left
behind. Inside :func:`cancel_on_signals` these signals raise :class:`Terminated`, a
``KeyboardInterrupt``, in the main thread instead: every cleanup that runs on Ctrl-C runs on
them too, and the CLI exits with ``128 + signal number``. :func:`signals_deferred` holds the
signals back while a cleanup or a process start must not be cut in two.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
"""Signals that :func:`cancel_on_signals` turns into :class:`Terminated`."""


class Terminated(KeyboardInterrupt):
    """The process received ``signum`` (SIGTERM or SIGHUP): cancel, as on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"received {signal.Signals(signum).name}")
        self.signum = signum


def _raise_terminated(signum: int, _frame) -> None:
    raise Terminated(signum)


@contextlib.contextmanager
def cancel_on_signals() -> Iterator[None]:
    """Within this block, SIGTERM and SIGHUP raise :class:`Terminated` in the main thread.

    The previous handlers come back on exit. A signal the process ignores (``nohup`` ignores
    SIGHUP) stays ignored. Outside the main thread (where Python cannot set handlers) this does
    nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {
        sig: signal.signal(sig, _raise_terminated)
        for sig in CANCEL_SIGNALS
        if signal.getsignal(sig) != signal.SIG_IGN
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back during this block; they arrive when it ends.

    The handlers are swapped for one that only records the signal (a signal mask would not do:
    any other thread may take a process's signal), then put back, and the first signal that came
    is raised again, to be handled as it would have been. Outside the main thread this does
    nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: list[int] = []

    def hold(signum: int, _frame) -> None:
        came.append(signum)

    previous = {
        sig: signal.signal(sig, hold)
        for sig in (signal.SIGINT, *CANCEL_SIGNALS)
        if signal.getsignal(sig) not in (signal.SIG_IGN, None)
    }
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if came:
            signal.raise_signal(came[0])
