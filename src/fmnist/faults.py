"""Stopping a run on purpose: Ctrl-C or SIGTERM between steps, and a test-only hook that SIGKILLs.

Ctrl-C and SIGTERM: `stop_after_step()` turns the first SIGINT or SIGTERM into a request that the
training loop checks after each optimizer step, so the step in flight completes and the run folder
stays consistent. A second signal interrupts at once.

SIGKILL: the kill-and-resume test sets `FMNIST_KILL_AT=POINT:N` to make the process kill itself the
N-th time it reaches POINT (`train-step`, `evaluate-batch`, or `write-<file name>` just before a
finished temporary file replaces that file). A real SIGKILL: no handler, no cleanup, no flush, the
same as a power cut or the out-of-memory killer. `FMNIST_KILL_AT=POINT:N:SIGINT` (or SIGTERM) sends
that signal instead, so a test can press Ctrl-C at an exact point; `POINT:N:SIGKILL:R` only in the
torchrun process of rank R (one process of a run dies, the others go on); `POINT:N:SIGINT:group` to
the whole process group, as a terminal's Ctrl-C does. Several targets, separated by commas, may fire
at one point (`P:1:SIGINT,P:1:SIGINT` is a first and a second Ctrl-C). A sweep's points
(`sweep-run-start`, `sweep-run-end`, `sweep-job-started`) are visited by the sweep's own process;
at `sweep-job-started` the signal goes to the job just started, not to the sweep. `fmnist tune`
visits `tune-start` before its first trial and `tune-end` after its last. Unset (always,
outside tests) it does nothing.

A stop that finishes the run: `StopTraining`, raised by an `after_epoch` callback once the epoch is
saved, ends training there, and the run is tested and reported like any other (early stopping ends
runs the same way). A stop that gives the run up: `RunAbandoned`, raised the same way, leaves it
stopped and resumable (a search pruning a trial).
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

KILL_AT_VARIABLE = "FMNIST_KILL_AT"
_points_reached: Counter = Counter()  # only ever counts while FMNIST_KILL_AT is set


class StopTraining(Exception):
    """Raised by `train(..., after_epoch=...)`'s callback to end training after the epoch just saved:
    the run then finishes (the best epoch is tested, report.md says why it stopped). Its message is
    the reason recorded; any other exception leaves the run stopped and resumable instead."""


class RunAbandoned(Exception):
    """Raised by an `after_epoch` callback that gives the run up after the epoch just saved (a search
    pruning a trial that is behind the others): the run is left stopped and resumable, as after Ctrl-C,
    and recorded as stopped on purpose, not as failed (MLflow: KILLED, its message the reason)."""


def kill_point(point: str, process_id: int | None = None) -> None:
    """Send each signal FMNIST_KILL_AT names for this point and this visit (SIGKILL unless named).

    `process_id`: the process a point's signal goes to when it is not this one (a sweep's job).
    """
    targets = os.environ.get(KILL_AT_VARIABLE)
    if not targets:
        return
    specs = [target.split(":") for target in targets.split(",")]
    if not any(spec[0] == point for spec in specs):
        return
    _points_reached[point] += 1
    for name, count, *rest in specs:
        signal_number = getattr(signal, rest[0] if rest else "SIGKILL")
        where = rest[1] if len(rest) > 1 else ""  # a rank, "group", or any process
        if name != point or int(count) != _points_reached[point]:
            continue
        if where == "group":
            os.killpg(os.getpgrp(), signal_number)
            os.kill(os.getpid(), 0)  # runs this process's handler now, as os.kill does for a signal to itself
        elif not where or where == os.environ.get("RANK", "0"):
            os.kill(process_id or os.getpid(), signal_number)


class TrainingInterrupted(Exception):
    """A stop request (Ctrl-C, SIGTERM) ended training between two steps; the run folder holds the
    last completed epoch. The exit code follows the shell's convention: 128 + the signal number."""

    def __init__(self, message: str, signal_number: int = signal.SIGINT):
        super().__init__(message)
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number
        self.run_path = None  # set by whoever knows the run folder, for the "resume with" line


class StopRequest:
    """Set by the first Ctrl-C or SIGTERM; the loop asks `requested` after each step."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_number = signal.SIGINT

    @property
    def signal_name(self) -> str:
        return "SIGTERM" if self.signal_number == signal.SIGTERM else "Ctrl-C"


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM where nothing stops after a step (sampling a trial, loading data, evaluating): the work
    ends as on Ctrl-C, a KeyboardInterrupt (so Optuna marks its trial failed), with a line and exit
    code 143 at the command line, instead of the process vanishing without a word."""

    signal_number = signal.SIGTERM


@contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within this block SIGTERM raises Terminated (Python's default would end the process at once,
    unsaid). stop_after_step blocks put their own handler on top and this one back after. On the way
    out the handlers of before come back, SIGINT's included, whatever the block set them to."""

    def on_sigterm(signum, frame):
        raise Terminated

    try:
        previous = {number: signal.getsignal(number) for number in STOP_SIGNALS}
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: signals cannot be caught here
        yield
        return
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextmanager
def stop_after_step() -> Iterator[StopRequest]:
    """Within this block the first SIGINT or SIGTERM sets a flag instead of ending the process.

    SIGTERM is what `docker stop`, batch schedulers and torchrun send: it deserves the same clean
    stop as Ctrl-C. A second signal stops at once (KeyboardInterrupt), as usual. Within another
    such block (a sweep's runs) it shares that block's request: a signal that came between two
    runs, or before a run's training began, stops the run after its first step instead of being lost.
    """
    outer = getattr(signal.getsignal(signal.SIGINT), "stop_request", None)
    if outer is not None:
        yield outer
        return
    request = StopRequest()

    def on_signal(signum, frame):
        if request.requested:  # a second signal: the user does not want to wait
            raise KeyboardInterrupt
        request.requested = True
        request.signal_number = signum

    on_signal.stop_request = request
    try:
        previous = {number: signal.signal(number, on_signal) for number in STOP_SIGNALS}
    except ValueError:  # not the main thread: signals cannot be caught here, keep the default
        yield request
        return
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
