"""What `fit` reports each epoch to when a run has a folder: metrics, then best.pt and last.pt."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from fmnist.faults import StopTraining
from fmnist.runs.checkpoint import checkpoint_state, save_checkpoint
from fmnist.runs.folder import write_metrics
from fmnist.training.build import Training
from fmnist.training.config import TrainConfig


class RunRecorder:
    """Writes a run folder as training goes: fit() calls `end_epoch` after every epoch.

    `history` and `learning_rates` hold what earlier epochs recorded (a resumed run). `also` takes
    other loggers with the same `log_epoch(row, learning_rates)` (TensorBoard). `after_epoch(row)`
    is called once the epoch is saved: raising StopTraining ends training there and the run finishes
    (`stop_requested` keeps why); any other exception stops the run unfinished (a search's pruner).
    Each row gets `wall_seconds`: the run's wall time so far, `earlier_seconds` (the parts before a
    resume) plus the time since `started` (a time.perf_counter() reading at the start of this part).
    """

    def __init__(self, path: Path, config: TrainConfig, training: Training,
                 history: list[dict] | None = None, learning_rates: list[float] | None = None, also=(),
                 after_epoch: Callable[[dict], None] | None = None, resolved: dict | None = None,
                 started: float | None = None, earlier_seconds: float = 0.0, stop_requested: str | None = None,
                 planner=None):
        self.path = Path(path)
        self.config = config
        self.training = training
        self.history = list(history or [])
        self.learning_rates = list(learning_rates or [])
        self.also = list(also)
        self.after_epoch = after_epoch
        # Under torchrun, every rank's generator states, set by DistributedRecorder before each end_epoch.
        self.rank_rng: list[dict] | None = None
        self.resolved = resolved  # the run's settled precision and time plan, kept in each checkpoint
        self.started = time.perf_counter() if started is None else started
        self.earlier_seconds = earlier_seconds
        # A callback's StopTraining, once recorded in last.pt: a resumed run trains no further.
        self.stop_requested = stop_requested
        # A time budget's planner (training/replan.py): its decisions so far go into each checkpoint.
        self.planner = planner

    def end_epoch(self, row: dict, learning_rates: list[float], is_best: bool) -> None:
        """Record the epoch's metrics, then checkpoint: best.pt when it improved, then last.pt.

        best.pt goes first: a crash between the two leaves last.pt at the previous epoch, and
        resuming redoes this epoch and writes best.pt again. The other order could leave a last.pt
        whose epoch was the best but a best.pt that never got it.
        """
        row["wall_seconds"] = self.earlier_seconds + time.perf_counter() - self.started
        self.history.append(row)
        self.learning_rates.extend(learning_rates)
        write_metrics(self.path, self.history, self.learning_rates)
        for logger in self.also:
            logger.log_epoch(row, learning_rates)
        state = checkpoint_state(self.config, self.training, self.history, self.learning_rates, self.rank_rng,
                                 self.resolved, self.planner.state_dict() if self.planner is not None else None)
        if is_best:
            save_checkpoint(state, self.path / "best.pt")
        save_checkpoint(state, self.path / "last.pt")
        if self.after_epoch is not None:
            try:
                self.after_epoch(row)
            except StopTraining as request:
                self.stop_requested = str(request) or "after_epoch asked to stop"
                # Kept in last.pt, so that a process that ends before the final test (a crash, a kill)
                # is resumed to that test, not to more epochs the callback did not want.
                save_checkpoint({**state, "stop_requested": self.stop_requested}, self.path / "last.pt")
                raise
