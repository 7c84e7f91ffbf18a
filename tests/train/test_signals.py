"""The SIGTERM / SIGINT handling both training loops share (xlmr_fast/train/signals.py)."""
import os
import signal
import threading

import pytest

from xlmr_fast.train.signals import catch_stop_signals


def test_first_signal_asks_to_stop_a_second_stops_at_once(caplog):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    asked = []
    restore = catch_stop_signals(asked.append, "saving the state")
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        assert asked == ["SIGTERM"]
        assert "SIGTERM received: finishing this step, then saving the state" in caplog.text
        # any second signal (Ctrl-C after a preemption notice too) does not wait for the step
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
        assert asked == ["SIGTERM"]
    finally:
        restore()
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_outside_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGTERM)
    out = []
    t = threading.Thread(target=lambda: out.append(catch_stop_signals(print, "x")))
    t.start()
    t.join()
    out[0]()  # restoring what was never installed is a no-op
    assert signal.getsignal(signal.SIGTERM) is before
