"""The training loop: train_one_epoch, evaluate and fit, in that order. Read it top to bottom.

These are plain functions over any iterable of (images, labels) batches: fmnist's TensorLoader, a
torch DataLoader or a Python list. Nothing here prints; each finished epoch is logged to the
`fmnist.training.loop` logger, and whoever calls decides what is shown (the CLI shows it).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from fmnist.errors import FmnistError
from fmnist.faults import StopRequest, TrainingInterrupted, kill_point
from fmnist.training.metrics import per_class_accuracy

logger = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


class NonFiniteLossError(FmnistError):
    """The loss became NaN or infinite: going on would only spread NaN through the weights."""

    exit_code = 3


@dataclass
class Optimization:
    """Everything a training step does to the weights, besides the model and the batch.

    `scheduler_interval` says when the scheduler steps: "batch" (OneCycle, cosine), "epoch"
    (StepLR) or None (no scheduler). The rest is optional: `clip_grad_norm` bounds the gradients'
    total norm, `ema` keeps a moving average of the weights (updated after every step; validation
    uses it), `autocast` runs the forward pass in that lower precision, and `grad_scaler` (fp16 on
    CUDA) keeps small fp16 gradients from rounding to zero.
    """

    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    scheduler_interval: str | None = None
    clip_grad_norm: float | None = None
    ema: AveragedModel | None = None
    autocast: torch.dtype | None = None
    grad_scaler: torch.amp.GradScaler | None = None


@dataclass(repr=False)
class EpochStats:
    loss: float
    accuracy: float
    images: int
    seconds: float
    learning_rates: list[float] = field(default_factory=list)  # the rate used at each step

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def __repr__(self) -> str:  # learning_rates holds one rate per step
        return (f"EpochStats(loss={self.loss:.4f}, accuracy={self.accuracy:.4f}, images={self.images:,}, "
                f"seconds={self.seconds:.1f}, steps={len(self.learning_rates)})")


def train_one_epoch(
    model: nn.Module, batches: Batches, optimization: Optimization, stop: StopRequest | None = None,
    max_batches: int | None = None,
) -> EpochStats:
    """One pass over the training batches, updating the weights after each batch.

    The batches must already be on the model's device. Labels are class indices (N,), or soft
    targets (N, 10) when images were mixed (mixup, cutmix); accuracy then counts the larger share.
    `stop` (set by Ctrl-C or SIGTERM, see faults.stop_after_step) ends the epoch early, after a
    whole step, with TrainingInterrupted. `max_batches` ends the pass early: the last epoch of a time
    budget's plan stops where the plan's steps run out.
    """
    loss_fn, optimizer = optimization.loss_fn, optimization.optimizer
    batch_scheduler = optimization.scheduler if optimization.scheduler_interval == "batch" else None
    model.train()  # dropout on, BatchNorm uses and updates batch statistics
    device = next(model.parameters()).device
    # Sums stay on the device: a .item() per batch would make the CPU wait for the GPU each step.
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    learning_rates = []
    start = time.perf_counter()
    if max_batches is not None:
        batches = itertools.islice(batches, max_batches)
    for batch_index, (images, labels) in enumerate(batches):
        with autocast(optimization, device):
            logits = model(images)
            loss = loss_fn(logits, labels)
        if device.type == "cpu" and not math.isfinite(loss.item()):  # free on the CPU: no device sync
            raise NonFiniteLossError(f"loss became {loss.item()} at batch {batch_index + 1}")
        optimizer.zero_grad(set_to_none=True)
        backward_and_step(model, loss, optimization)
        if optimization.ema is not None:
            optimization.ema.update_parameters(model)
        learning_rates.append(optimizer.param_groups[0]["lr"])
        if batch_scheduler is not None:
            batch_scheduler.step()
        loss_sum += loss.detach() * len(labels)
        classes = labels if labels.dim() == 1 else labels.argmax(dim=1)
        correct += (logits.argmax(dim=1) == classes).sum()
        seen += len(labels)
        kill_point("train-step")  # test-only: a SIGKILL in the middle of an epoch
        if stop is not None and stop.requested:
            raise TrainingInterrupted(f"after batch {batch_index + 1}", stop.signal_number)
    if seen == 0:
        raise FmnistError("no training batches: the training split is empty or --limit-batches cut every batch")
    mean_loss = loss_sum.item() / seen
    if not math.isfinite(mean_loss):  # on accelerators, checked once per epoch
        raise NonFiniteLossError(f"loss became {mean_loss} during the epoch")
    return EpochStats(mean_loss, correct.item() / seen, seen, time.perf_counter() - start, learning_rates)


def autocast(optimization: Optimization, device: torch.device):
    """The forward pass in lower precision when asked (--amp), else as it is."""
    if optimization.autocast is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=optimization.autocast)


def backward_and_step(model: nn.Module, loss: torch.Tensor, optimization: Optimization) -> None:
    """Gradients, then one optimizer step: clipped first if asked, and through the gradient scaler
    for fp16 (it multiplies the loss before backward and divides the gradients again before the step)."""
    scaler = optimization.grad_scaler
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimization.optimizer)
    if optimization.clip_grad_norm is not None:
        nn.utils.clip_grad_norm_(model.parameters(), optimization.clip_grad_norm)
    if scaler is None:
        optimization.optimizer.step()
    else:
        scaler.step(optimization.optimizer)
        scaler.update()


@dataclass(repr=False)
class EvalResult:
    """Loss and accuracy over the batches, and per image (on the CPU): the predicted class, the true
    label and the ten class probabilities (softmax of the logits the loss and accuracy came from)."""

    loss: float
    accuracy: float
    predictions: torch.Tensor  # (N,) predicted class per image
    labels: torch.Tensor  # (N,)
    seconds: float
    probabilities: torch.Tensor | None = None  # (N, 10), float32

    def per_class_accuracy(self) -> list[float]:
        return per_class_accuracy(self.labels, self.predictions)

    def __repr__(self) -> str:  # a summary: the tensors hold one entry per image
        return (f"EvalResult(accuracy={self.accuracy:.4f}, loss={self.loss:.4f}, images={len(self.labels):,}, "
                f"seconds={self.seconds:.1f})")


def predict_logits(model: nn.Module, images: torch.Tensor, flip_tta: bool = False) -> torch.Tensor:
    """The model's logits; with `flip_tta` (test-time augmentation), averaged with the logits of
    each image mirrored left-right: a model trained with flips has learned both views, and two
    opinions err less than one."""
    logits = model(images)
    if flip_tta:
        logits = (logits + model(images.flip(3))) / 2
    return logits


def evaluate(model: nn.Module, batches: Batches, flip_tta: bool = False) -> EvalResult:
    """Loss and accuracy over (images, labels) batches, with dropout off and no gradient bookkeeping.

    The loss is plain cross-entropy whatever the training loss was, so that validation losses of
    runs trained with label smoothing or focal loss stay comparable. `flip_tta`: see predict_logits.
    """
    model.eval()  # dropout off, BatchNorm uses its running statistics
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    all_predictions, all_labels, all_probabilities = [], [], []
    start = time.perf_counter()
    with torch.inference_mode():  # like no_grad, and tensors skip version tracking too
        for images, labels in batches:
            images, labels = images.to(device), labels.to(device)
            logits = predict_logits(model, images, flip_tta)
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
            kill_point("evaluate-batch")  # test-only: a SIGKILL during evaluation
            all_predictions.append(logits.argmax(dim=1))
            all_labels.append(labels)
            all_probabilities.append(torch.softmax(logits.float(), dim=1))
    if not all_labels:
        raise FmnistError("evaluate: no batches to evaluate")
    predictions, labels = torch.cat(all_predictions).cpu(), torch.cat(all_labels).cpu()
    return EvalResult(
        loss=loss_sum.item() / len(labels),
        accuracy=(predictions == labels).sum().item() / len(labels),
        predictions=predictions,
        labels=labels,
        seconds=time.perf_counter() - start,
        probabilities=torch.cat(all_probabilities).cpu(),
    )


class EpochRecorder(Protocol):
    """What fit reports each epoch to (a run folder, a benchmark): see runs.folder.RunRecorder."""

    history: list[dict]  # the epochs recorded so far; a resumed run starts after them

    def end_epoch(self, row: dict, learning_rates: list[float], is_best: bool) -> None: ...


def weights_to_use(model: nn.Module, optimization: Optimization) -> nn.Module:
    """The network to evaluate: the moving average of the weights when there is one (--ema)."""
    return optimization.ema.module if optimization.ema is not None else model


def format_epoch(row: dict, epochs: int) -> str:
    return (
        f"epoch {row['epoch']}/{epochs}  "
        f"train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  "
        f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}  "
        f"lr {row['lr']:.2e}  {row['seconds']:.1f} s  {row['images_per_second']:,.0f} img/s"
    )


def fit(
    model: nn.Module,
    train_batches: Batches,
    val_batches: Batches,
    optimization: Optimization,
    epochs: int,
    *,
    flip_tta: bool = False,
    recorder: EpochRecorder | None = None,
    stop: StopRequest | None = None,
    last_epoch_steps: int | None = None,
) -> list[dict]:
    """Train for `epochs`, validating after each; return one metrics row per epoch.

    Model selection uses validation accuracy only (`is_best` tells the recorder which epoch to keep):
    the test set is kept for the final figure. With an EMA (optimization.ema), the averaged weights
    are the ones validated. With a `recorder` that already holds epochs (a
    resumed run), training continues after them. `stop` (Ctrl-C, SIGTERM) ends training after the
    current step with TrainingInterrupted. `flip_tta`: see evaluate. `last_epoch_steps` cuts the
    last epoch short after that many batches (a time budget's plan: see training/budget.py).
    """
    history = list(recorder.history) if recorder is not None else []
    best_accuracy = max((row["val_accuracy"] for row in history), default=-1.0)
    for epoch in range(len(history) + 1, epochs + 1):
        try:
            max_batches = last_epoch_steps if epoch == epochs else None
            stats = train_one_epoch(model, train_batches, optimization, stop, max_batches)
        except TrainingInterrupted as interruption:
            raise TrainingInterrupted(f"in epoch {epoch} {interruption}", interruption.signal_number) from None
        except NonFiniteLossError as error:
            raise NonFiniteLossError(f"epoch {epoch}: {error}") from None
        if optimization.scheduler is not None and optimization.scheduler_interval == "epoch":
            optimization.scheduler.step()
        validation = evaluate(weights_to_use(model, optimization), val_batches, flip_tta)
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
        if recorder is not None:
            recorder.end_epoch(row, stats.learning_rates, is_best)
        logger.info(format_epoch(row, epochs))
        if stop is not None and stop.requested and epoch < epochs:  # the signal came during evaluation
            raise TrainingInterrupted(f"after epoch {epoch}", stop.signal_number)
    return history
