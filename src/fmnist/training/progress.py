"""Progress for someone watching a run: a bar within each epoch, and each epoch's line.

The training loop draws nothing itself. `TrainingProgress` travels with it: its `batches()` wrap the
training batches (a bar opens when an epoch starts and closes when it ends), `step()` is the loop's
`on_step` (the running loss and images/s), and `log_epoch()` sits with the run's other loggers.

Where the bar goes: a notebook gets tqdm's notebook widget (with ipywidgets installed); elsewhere a bar is
drawn only on a terminal, never into a file or a pipe, where carriage-return bars would fill the log.
The epoch lines are written only when `logging` does not already show them (the CLI's handler, a
`logging.basicConfig(level=logging.INFO)`), so `train(config, progress=True)` shows them with no set-up
and nobody sees them twice.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from collections.abc import Iterator

import torch
from tqdm.std import tqdm as terminal_tqdm

from fmnist.training.loop import format_epoch

# The loop's own logger: when it shows INFO somewhere, the epoch lines are already on screen.
EPOCH_LOGGER = "fmnist.training.loop"
# Reading the running loss makes a GPU wait for its queue: do it at most this often (seconds).
REFRESH_SECONDS = 0.5
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| step {n_fmt}/{total_fmt}{postfix}  {remaining} left"


def bar_class() -> type:
    """tqdm's notebook widget in a Jupyter kernel with ipywidgets, else the terminal bar.

    Chosen when a bar is asked for, not when fmnist is imported: tqdm warns on import in a kernel
    without ipywidgets, and that kernel simply gets no bar (its stderr is no terminal), only the lines.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tqdm.autonotebook import tqdm
    return tqdm


def in_notebook() -> bool:
    return bar_class() is not terminal_tqdm


def can_draw_bar(stream) -> bool:
    """A widget in a notebook; a terminal; never redirected output (a file, a pipe, a CI log)."""
    return in_notebook() or (hasattr(stream, "isatty") and stream.isatty())


def logging_shows(logger_name: str, level: int = logging.INFO) -> bool:
    """Whether a record of `level` on this logger reaches a handler that would emit it."""
    logger = logging.getLogger(logger_name)
    if not logger.isEnabledFor(level):
        return False
    current: logging.Logger | None = logger
    while current is not None:
        if any(handler.level <= level for handler in current.handlers):
            return True
        current = current.parent if current.propagate else None
    return False


class TrainingProgress:
    """A bar per epoch (step, images/s, running loss, time left) and, if logging does not show
    them, the epoch lines. `first_epoch` is where a resumed run starts; `last_epoch_steps` the
    shorter last epoch of a time budget's plan. `plan`: a time budget's planner (training/replan.py),
    whose epochs and last epoch's steps, made again at each epoch's end, replace the two given."""

    def __init__(self, epochs: int, steps_per_epoch: int, first_epoch: int = 1,
                 last_epoch_steps: int | None = None, stream=None, plan=None):
        self.plan = plan
        self.epochs = epochs
        self.steps_per_epoch = steps_per_epoch
        self.last_epoch_steps = last_epoch_steps
        self.epoch = first_epoch - 1
        self.stream = stream if stream is not None else sys.stderr
        self.draw = can_draw_bar(self.stream)
        # A notebook shows stderr in red: its lines go to stdout, where tqdm's own widget output goes.
        self.lines_to = sys.stdout if in_notebook() else self.stream
        self.bar = None

    def batches(self, batches) -> EpochBatches:
        return EpochBatches(batches, self)

    def open_bar(self) -> None:
        self.epoch += 1
        if self.plan is not None:
            self.epochs, self.last_epoch_steps = self.plan.epochs, self.plan.last_epoch_steps
        self.loss_sum, self.images, self.started, self.shown_at = None, 0, time.perf_counter(), 0.0
        if not self.draw:
            return
        total = self.last_epoch_steps if self.epoch == self.epochs and self.last_epoch_steps else self.steps_per_epoch
        # leave=False: the epoch's line takes the bar's place when the epoch ends.
        self.bar = bar_class()(total=total, desc=f"epoch {self.epoch}/{self.epochs}", leave=False, file=self.stream,
                             bar_format=BAR_FORMAT, dynamic_ncols=True, mininterval=REFRESH_SECONDS)

    def step(self, loss: torch.Tensor, images: int) -> None:
        """After each training step (the loop's `on_step`)."""
        self.loss_sum = loss * images if self.loss_sum is None else self.loss_sum + loss * images
        self.images += images
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.perf_counter()
        if now - self.shown_at >= REFRESH_SECONDS or self.bar.n == self.bar.total:
            self.shown_at = now
            speed = self.images / (now - self.started) if now > self.started else 0.0
            self.bar.set_postfix_str(f"loss {self.loss_sum.item() / self.images:.4f}  {speed:,.0f} img/s")
        if self.bar.n >= self.bar.total:
            self.close_bar()

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def log_epoch(self, row: dict, learning_rates: list[float]) -> None:
        """With the run's loggers after each epoch: its line, unless logging shows it already."""
        if self.plan is not None:
            self.epochs = self.plan.epochs
        if not logging_shows(EPOCH_LOGGER):
            terminal_tqdm.write(format_epoch(row, self.epochs), file=self.lines_to)


class EpochBatches:
    """The training batches; each pass over them (one epoch) opens a bar and closes it."""

    def __init__(self, batches, progress: TrainingProgress):
        self.inner = batches
        self.progress = progress

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self) -> Iterator:
        self.progress.open_bar()
        try:
            yield from self.inner
        finally:  # also when the loop stops early (a time budget's last epoch, Ctrl-C)
            self.progress.close_bar()
