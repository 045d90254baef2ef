"""The training loop: train_one_epoch, evaluate and fit, in that order. Read it top to bottom."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from fmnist.errors import FmnistError
from fmnist.faults import StopRequest, TrainingInterrupted, kill_point
from fmnist.loader import TensorLoader


class NonFiniteLossError(FmnistError):
    """The loss became NaN or infinite: going on would only spread NaN through the weights."""

    exit_code = 3


@dataclass
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float
    learning_rates: list[float] = field(default_factory=list)  # the rate used at each step

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0


def train_one_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    progress: tqdm | None = None,
    stop: StopRequest | None = None,
) -> EpochStats:
    """One pass over the training batches, updating the weights after each batch.

    `loader` is any iterable of (images, labels) batches already on the model's device.
    `stop` (set by Ctrl-C, see faults.stop_after_step) ends the epoch early, after a whole step.
    """
    model.train()  # dropout on, BatchNorm uses and updates batch statistics
    device = next(model.parameters()).device
    # Sums stay on the device: a .item() per batch would make the CPU wait for the GPU each step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    learning_rates = []
    start = time.perf_counter()
    for batch_index, (images, labels) in enumerate(loader):
        logits = model(images)
        loss = loss_fn(logits, labels)
        if device.type == "cpu" and not math.isfinite(loss.item()):  # free on the CPU: no device sync
            raise NonFiniteLossError(f"loss became {loss.item()} at batch {batch_index + 1}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        learning_rates.append(optimizer.param_groups[0]["lr"])
        if batch_scheduler is not None:
            batch_scheduler.step()
        loss_sum += loss.detach() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
        seen += len(labels)
        if progress is not None:
            progress.update(1)
        kill_point("train-step")  # test-only: a SIGKILL in the middle of an epoch
        if stop is not None and stop.requested:
            raise TrainingInterrupted(f"after batch {batch_index + 1}")
    mean_loss = loss_sum.item() / seen
    if not math.isfinite(mean_loss):  # on accelerators, checked once per epoch
        raise NonFiniteLossError(f"loss became {mean_loss} during the epoch")
    return EpochStats(mean_loss, correct.item() / seen, seen, time.perf_counter() - start, learning_rates)


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    predictions: torch.Tensor  # predicted class per image, on the CPU
    labels: torch.Tensor
    seconds: float

    def per_class_accuracy(self, num_classes: int = 10) -> list[float]:
        accuracies = []
        for cls in range(num_classes):
            mask = self.labels == cls
            hits = (self.predictions[mask] == cls).sum().item()
            accuracies.append(hits / mask.sum().item() if mask.any() else float("nan"))
        return accuracies


def predict_logits(model: nn.Module, images: torch.Tensor, flip_tta: bool = False) -> torch.Tensor:
    """The model's logits; with `flip_tta` (test-time augmentation), averaged with the logits of
    each image mirrored left-right: a model trained with flips has learned both views, and two
    opinions err less than one."""
    logits = model(images)
    if flip_tta:
        logits = (logits + model(images.flip(3))) / 2
    return logits


def evaluate(model: nn.Module, loader: TensorLoader, flip_tta: bool = False) -> EvalResult:
    """Loss and accuracy on a split, with dropout off and no gradient bookkeeping.

    The loss is plain cross-entropy whatever the training loss was, so that validation losses of
    runs trained with label smoothing or focal loss stay comparable. `flip_tta`: see predict_logits.
    """
    model.eval()  # dropout off, BatchNorm uses its running statistics
    device = loader.split.images.device
    loss_sum = torch.zeros((), device=device)
    all_predictions = []
    start = time.perf_counter()
    with torch.inference_mode():  # like no_grad, and tensors skip version tracking too
        for images, labels in loader:
            logits = predict_logits(model, images, flip_tta)
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
            kill_point("evaluate-batch")  # test-only: a SIGKILL during evaluation
            all_predictions.append(logits.argmax(dim=1))
    predictions = torch.cat(all_predictions).cpu()
    labels = loader.split.labels[: len(predictions)].cpu()
    return EvalResult(
        loss=loss_sum.item() / len(labels),
        accuracy=(predictions == labels).sum().item() / len(labels),
        predictions=predictions,
        labels=labels,
        seconds=time.perf_counter() - start,
    )


def show_progress() -> bool:
    """A live bar only on a terminal: in a log file its carriage returns would be noise."""
    return sys.stderr.isatty()


def format_epoch(row: dict, epochs: int) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}  "
        f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
        f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}  "
        f"lr {row['lr']:.2e}  {row['seconds']:.1f} s  {row['images_per_second']:,.0f} img/s"
    )


def fit(
    model: nn.Module,
    train_loader: TensorLoader,
    val_loader: TensorLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    scheduler_interval: str | None,
    epochs: int,
    run=None,
    start_epoch: int = 1,
    stop: StopRequest | None = None,
    flip_tta: bool = False,
) -> list[dict]:
    """Train for `epochs`, validating after each; `run` (a runs.Run) records metrics and checkpoints.

    Returns one metrics row per epoch. Model selection uses validation accuracy only: the test
    set is kept for the final figure. A resumed run starts at `start_epoch` with `run.history`
    holding the epochs before it. When `stop` is requested (Ctrl-C) it raises TrainingInterrupted
    after the current step; the run folder then holds the last completed epoch. `flip_tta`: see
    `evaluate`.
    """
    history = list(run.history) if run is not None else []
    best_accuracy = max((row["val_accuracy"] for row in history), default=-1.0)
    for epoch in range(start_epoch, epochs + 1):
        bar = tqdm(total=len(train_loader), desc=f"epoch {epoch}/{epochs}", leave=False, disable=not show_progress())
        try:
            stats = train_one_epoch(
                model, train_loader, loss_fn, optimizer,
                batch_scheduler=scheduler if scheduler_interval == "batch" else None,
                progress=bar,
                stop=stop,
            )
        except TrainingInterrupted as interruption:
            raise interrupted(run, f"in epoch {epoch} {interruption}") from None
        except NonFiniteLossError as error:
            raise NonFiniteLossError(
                f"epoch {epoch}: {error}; training stopped, the last good checkpoint is kept "
                "(try a lower --lr or --max-lr)"
            ) from None
        finally:
            bar.close()
        if scheduler is not None and scheduler_interval == "epoch":
            scheduler.step()
        validation = evaluate(model, val_loader, flip_tta)
        row = {
            "epoch": epoch,
            "train_loss": stats.loss,
            "train_accuracy": stats.accuracy,
            "val_loss": validation.loss,
            "val_accuracy": validation.accuracy,
            "lr": stats.learning_rates[-1],
            "seconds": stats.seconds,
            "images_per_second": stats.images_per_second,
            "eval_seconds": validation.seconds,
        }
        history.append(row)
        is_best = validation.accuracy > best_accuracy
        best_accuracy = max(best_accuracy, validation.accuracy)
        if run is not None:
            run.end_epoch(row, stats.learning_rates, model, optimizer, scheduler, train_loader, is_best)
        print(format_epoch(row, epochs), flush=True)
        if stop is not None and stop.requested and epoch < epochs:  # Ctrl-C during evaluation
            raise interrupted(run, f"after epoch {epoch}")
    return history


def interrupted(run, where: str) -> TrainingInterrupted:
    """The Ctrl-C message: where training stopped and what the run folder still holds."""
    if run is None:
        return TrainingInterrupted(f"stopped by Ctrl-C {where}")
    kept = f"epoch {run.history[-1]['epoch']} is saved" if run.history else "no epoch was completed"
    error = TrainingInterrupted(f"stopped by Ctrl-C {where}; {kept} in {run.path}")
    error.run_path = run.path  # for the CLI's "resume with" line
    return error
