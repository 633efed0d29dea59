"""feds2r.signals: SIGTERM and SIGHUP cancel as Ctrl-C does."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from feds2r.signals import Terminated, cancel_on_signals, signals_deferred


def test_sigterm_raises_a_keyboard_interrupt_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    cleaned = []
    with pytest.raises(KeyboardInterrupt) as err, cancel_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            cleaned.append(False)  # not reached: the signal raised
        finally:
            cleaned.append(True)  # finally blocks run, as on Ctrl-C
    assert isinstance(err.value, Terminated) and err.value.signum == signal.SIGTERM
    assert cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) == before


def test_an_ignored_sighup_stays_ignored_and_deferred_signals_arrive_after_the_block():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as under nohup
    try:
        with cancel_on_signals():
            assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # ignored: nothing raised
            order = []
            other = threading.Thread(target=time.sleep, args=(2.0,))  # may take the signal
            other.start()
            with pytest.raises(Terminated):
                with signals_deferred():
                    os.kill(os.getpid(), signal.SIGTERM)
                    order.append("block ran to its end")
            assert order == ["block ran to its end"]
            other.join()
    finally:
        signal.signal(signal.SIGHUP, previous)
