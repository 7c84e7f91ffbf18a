"""SIGTERM / SIGINT (preemption, Ctrl-C) for the training loops of pretraining and fine-tuning:
the first signal asks the loop to stop after its step (it then saves its state, exit 143 / 130),
a second one stops at once."""
from __future__ import annotations

import logging
import signal
from typing import Callable

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def catch_stop_signals(on_stop: Callable[[str], None], then: str) -> Callable[[], None]:
    """Install handlers that call on_stop("SIGTERM" / "SIGINT") for the first signal (the loop
    reads what on_stop set after each step; `then` says what it does next, for the log) and
    raise KeyboardInterrupt for a second. Returns the function that puts the previous handlers
    back. Outside the main thread Python cannot install handlers: signals act as before."""
    got: list[str] = []

    def handler(signum, frame):
        if got:  # a second signal: stop now, without saving
            raise KeyboardInterrupt
        got.append(signal.Signals(signum).name)
        log.warning("%s received: finishing this step, then %s", got[0], then)
        on_stop(got[0])

    old = {}
    for s in STOP_SIGNALS:
        try:
            old[s] = signal.signal(s, handler)
        except ValueError:  # not the main thread
            pass

    def restore() -> None:
        for s, h in old.items():
            signal.signal(s, h)
    return restore
