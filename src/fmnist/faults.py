"""Stopping a run on purpose: Ctrl-C between steps, and a test-only hook that SIGKILLs the process.

Ctrl-C: `stop_after_step()` turns the first SIGINT into a request that the training loop checks
after each optimizer step, so the step in flight completes and the run folder stays consistent.
A second Ctrl-C interrupts at once, as usual.

SIGKILL: the kill-and-resume test sets `FMNIST_KILL_AT=POINT:N` to make the process kill itself the
N-th time it reaches POINT (`train-step`, `evaluate-batch`, or `write-<file name>` just before a
finished temporary file replaces that file). A real SIGKILL: no handler, no cleanup, no flush, the
same as a power cut or the out-of-memory killer. Unset (always, outside tests) it does nothing.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

KILL_AT_VARIABLE = "FMNIST_KILL_AT"
_points_reached: Counter = Counter()  # only ever counts while FMNIST_KILL_AT is set


def kill_point(point: str) -> None:
    """SIGKILL this process if FMNIST_KILL_AT names this point and this is its N-th visit."""
    target = os.environ.get(KILL_AT_VARIABLE)
    if not target:
        return
    name, _, count = target.rpartition(":")
    if name != point:
        return
    _points_reached[point] += 1
    if _points_reached[point] == int(count):
        os.kill(os.getpid(), signal.SIGKILL)


class TrainingInterrupted(Exception):
    """Ctrl-C stopped training between two steps; the run folder holds the last completed epoch."""

    exit_code = 130


class StopRequest:
    """Set by the first Ctrl-C; the loop asks `requested` after each step."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def stop_after_step() -> Iterator[StopRequest]:
    """Within this block the first SIGINT sets a flag instead of raising KeyboardInterrupt."""
    request = StopRequest()

    def on_sigint(signum, frame):
        if request.requested:  # a second Ctrl-C: the user does not want to wait
            raise KeyboardInterrupt
        request.requested = True

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: signals cannot be caught here, keep the default
        yield request
        return
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)
