"""Optional TensorBoard logging (`--tensorboard`): per-epoch scalars, the learning rate per step and
the test confusion matrix, written as event files into the run folder's `tensorboard/`.

TensorBoard is an optional extra (`pip install -e '.[tensorboard]' in the fmnist checkout`); the run's own CSV files and
report.md hold the same numbers without it. Watch a run live with `tensorboard --logdir runs`.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fmnist.arguments import named
from fmnist.data.fashion import CLASS_NAMES
from fmnist.errors import ConfigError
from fmnist.reports import plots
from fmnist.training.loop import EvalResult
from fmnist.training.metrics import confusion_matrix


def require_tensorboard() -> None:
    """Fail before training starts, in one line, if the extra is not installed."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ConfigError(f"{named('tensorboard')} needs the tensorboard package; install it with pip install -e "
                          "'.[tensorboard]' in the fmnist checkout", "tensorboard") from None


class TensorBoardLog:
    """A SummaryWriter plus the step counter that places each learning rate on the step axis."""

    def __init__(self, run_path: Path, first_step: int = 0):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_path) / "tensorboard"))
        self.step = first_step  # a resumed run continues the step axis where it stopped

    def log_epoch(self, row: dict, learning_rates: list[float]) -> None:
        """One metrics.csv row as scalars (x axis: epoch), and every step's learning rate (x axis: step)."""
        epoch = row["epoch"]
        for split in ("train", "val"):
            self.writer.add_scalar(f"loss/{split}", row[f"{split}_loss"], epoch)
            self.writer.add_scalar(f"accuracy/{split}", row[f"{split}_accuracy"], epoch)
        self.writer.add_scalar("speed/images_per_second", row["images_per_second"], epoch)
        for lr in learning_rates:
            self.step += 1
            self.writer.add_scalar("learning_rate", lr, self.step)
        self.writer.flush()  # so a live TensorBoard sees the epoch now

    def log_confusion_matrix(self, test: EvalResult, epoch: int) -> None:
        """The test confusion matrix of the best weights, as a figure."""
        matrix = confusion_matrix(test.labels, test.predictions).to(torch.float64)
        figure = plots.new_figure(figsize=(7, 6), layout="constrained")
        axes = figure.subplots()
        plots.draw_matrix(axes, figure, matrix, list(CLASS_NAMES), "test confusion matrix (counts)",
                          lambda value: f"{int(value)}")
        self.writer.add_figure("test/confusion_matrix", figure, epoch)  # a Figure of its own: none left in pyplot

    def close(self) -> None:
        self.writer.close()
