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
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from fmnist.arguments import (
    as_argument_of,
    check_bool,
    check_callable,
    check_choice,
    check_int,
    check_iterable,
    check_module,
    check_number,
    check_type,
    invalid,
    wrong_type,
)
from fmnist.errors import ConfigError, FmnistError
from fmnist.faults import StopRequest, StopTraining, TrainingInterrupted, kill_point
from fmnist.training.early_stopping import EarlyStopping
from fmnist.training.metrics import per_class_accuracy
from fmnist.training.stretch import StretchedSchedule
from fmnist.training.views import view_logits

logger = logging.getLogger(__name__)

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
# Told about each step: its loss (still on the device) and its number of images (a progress bar's running loss).
StepObserver = Callable[[torch.Tensor, int], None]


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
    scheduler: torch.optim.lr_scheduler.LRScheduler | StretchedSchedule | None = None
    scheduler_interval: str | None = None
    clip_grad_norm: float | None = None
    ema: AveragedModel | None = None
    autocast: torch.dtype | None = None
    grad_scaler: torch.amp.GradScaler | None = None

    def __post_init__(self) -> None:
        owner = "Optimization"
        check_callable(self.loss_fn, "loss_fn", owner)
        check_type(self.optimizer, torch.optim.Optimizer, "optimizer", owner, "a torch.optim.Optimizer")
        optional = {"scheduler": ((torch.optim.lr_scheduler.LRScheduler, StretchedSchedule), "a torch LRScheduler"),
                    "ema": (AveragedModel, "a torch AveragedModel"), "autocast": (torch.dtype, "a torch.dtype"),
                    "grad_scaler": (torch.amp.GradScaler, "a torch.amp.GradScaler")}
        for name, (kind, expected) in optional.items():
            if getattr(self, name) is not None:
                check_type(getattr(self, name), kind, name, owner, expected)
        if self.scheduler_interval is not None:
            check_choice(self.scheduler_interval, SCHEDULER_INTERVALS, "scheduler_interval", owner)
        if self.clip_grad_norm is not None:
            self.clip_grad_norm = check_number(self.clip_grad_norm, "clip_grad_norm", owner, above=0.0)


SCHEDULER_INTERVALS = ("batch", "epoch")


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
    max_batches: int | None = None, on_step: StepObserver | None = None,
) -> EpochStats:
    """One pass over the training batches, updating the weights after each batch.

    The batches must already be on the model's device. Labels are class indices (N,), or soft
    targets (N, 10) when images were mixed (mixup, cutmix); accuracy then counts the larger share.
    `stop` (set by Ctrl-C or SIGTERM, see faults.stop_after_step) ends the epoch early, after a
    whole step, with TrainingInterrupted. `max_batches` ends the pass early: the last epoch of a time
    budget's plan stops where the plan's steps run out. `on_step(loss, images)` is called after each step
    (a progress bar); it gets the loss tensor, so that the GPU need not wait unless the bar reads it.
    """
    check_loop_arguments("train_one_epoch", model, batches, True, optimization, stop)
    if max_batches is not None:
        check_int(max_batches, "max_batches", "train_one_epoch", minimum=1)
    if on_step is not None:
        check_callable(on_step, "on_step", "train_one_epoch")
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
    for batch_index, batch in enumerate(batches):
        images, labels = batch_pair(batch, batch_index, "train_one_epoch", soft_labels=True)
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
        if on_step is not None:
            on_step(loss.detach(), len(labels))
        kill_point("train-step")  # test-only: a SIGKILL in the middle of an epoch
        if stop is not None and stop.requested:
            raise TrainingInterrupted(f"after batch {batch_index + 1}", stop.signal_number)
    if seen == 0:
        raise invalid("batches", batches, "gave no batch: the training split or the batches given are empty",
                      "train_one_epoch")
    mean_loss = loss_sum.item() / seen
    if not math.isfinite(mean_loss):  # on accelerators, checked once per epoch
        raise NonFiniteLossError(f"loss became {mean_loss} during the epoch")
    return EpochStats(mean_loss, correct.item() / seen, seen, time.perf_counter() - start, learning_rates)


def check_loop_arguments(owner: str, model, batches, training: bool, optimization=None, stop=None) -> None:
    """The arguments train_one_epoch, evaluate and fit share, checked once per call."""
    check_module(model, "model", owner)
    check_iterable(batches, "batches" if owner != "fit" else "train_batches", owner)
    if training:
        check_type(optimization, Optimization, "optimization", owner, "an Optimization(loss_fn, optimizer, ...)")
    if stop is not None and not hasattr(stop, "requested"):
        raise wrong_type("stop", stop, "a StopRequest (see fmnist.faults.stop_after_step)", owner)


def batch_pair(batch, index: int, owner: str, soft_labels: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch as (images, labels) tensors of one length; labels are class indices, or soft targets
    (N, classes) where training mixes images. Three isinstance checks per batch: nothing beside a step."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        images, labels = batch
        if isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor) and images.dim() >= 1:
            class_indices = labels.dim() == 1 and not labels.is_floating_point()
            soft = soft_labels and labels.dim() == 2 and labels.is_floating_point()
            if (class_indices or soft) and len(labels) == len(images):
                return images, labels
    expected = "class indices (N,)" + (" or soft targets (N, classes)" if soft_labels else "")
    raise invalid("batches", batch, f"batch {index + 1} is not an (images, labels) pair of tensors with one "
                                    f"label per image, labels as {expected}", owner)


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


def predict_logits(model: nn.Module, images: torch.Tensor, flip_tta: bool = False,
                   shift_tta: bool = False) -> torch.Tensor:
    """The model's logits; with `flip_tta` (test-time augmentation), averaged with the logits of
    each image mirrored left-right: a model trained with flips has learned both views, and two
    opinions err less than one. `shift_tta` adds each image moved by one pixel in each of the eight
    directions (each mirrored too with `flip_tta`: 18 views), for models trained with random crops."""
    return view_logits(model, images, flip_tta, shift_tta)


def evaluate(model: nn.Module, batches: Batches, flip_tta: bool = False, shift_tta: bool = False) -> EvalResult:
    """Loss and accuracy over (images, labels) batches, with dropout off and no gradient bookkeeping.

    The loss is plain cross-entropy whatever the training loss was, so that validation losses of
    runs trained with label smoothing or focal loss stay comparable. `flip_tta`, `shift_tta`: see
    predict_logits.
    """
    check_loop_arguments("evaluate", model, batches, False)
    check_bool(flip_tta, "flip_tta", "evaluate")
    check_bool(shift_tta, "shift_tta", "evaluate")
    model.eval()  # dropout off, BatchNorm uses its running statistics
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    all_predictions, all_labels, all_probabilities = [], [], []
    start = time.perf_counter()
    with torch.inference_mode():  # like no_grad, and tensors skip version tracking too
        for index, batch in enumerate(batches):
            images, labels = batch_pair(batch, index, "evaluate")
            images, labels = images.to(device), labels.to(device)
            logits = predict_logits(model, images, flip_tta, shift_tta)
            loss_sum += nn.functional.cross_entropy(logits, labels, reduction="sum")
            kill_point("evaluate-batch")  # test-only: a SIGKILL during evaluation
            all_predictions.append(logits.argmax(dim=1))
            all_labels.append(labels)
            all_probabilities.append(torch.softmax(logits.float(), dim=1))
    if not all_labels:
        raise invalid("batches", batches, "gave no batch to evaluate", "evaluate")
    predictions, labels = torch.cat(all_predictions).cpu(), torch.cat(all_labels).cpu()
    return EvalResult(
        loss=loss_sum.item() / len(labels),
        accuracy=(predictions == labels).sum().item() / len(labels),
        predictions=predictions,
        labels=labels,
        seconds=time.perf_counter() - start,
        probabilities=torch.cat(all_probabilities).cpu(),
    )


class EpochPlanner(Protocol):
    """What decides, epoch by epoch, how long fit trains (a time budget's: see training/replan.py)."""

    epochs: int
    last_epoch_steps: int

    def start(self) -> None: ...

    def epoch_ended(self, epoch: int, steps: int, train_seconds: float, validation_seconds: float) -> None: ...


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
    early_stopping: EarlyStopping | None = None,
    on_step: StepObserver | None = None,
    planner: EpochPlanner | None = None,
) -> list[dict]:
    """Train for `epochs`, validating after each; return one metrics row per epoch.

    Model selection uses validation accuracy only (`is_best` tells the recorder which epoch to keep):
    the test set is kept for the final figure. With an EMA (optimization.ema), the averaged weights
    are the ones validated. With a `recorder` that already holds epochs (a
    resumed run), training continues after them. `stop` (Ctrl-C, SIGTERM) ends training after the
    current step with TrainingInterrupted. `flip_tta`: see evaluate. `last_epoch_steps` cuts the
    last epoch short after that many batches (a time budget's plan: see training/budget.py).

    Training ends before `epochs` when `early_stopping` says so (training/early_stopping.py), or when
    the recorder raises StopTraining (a callback asked): the epoch is recorded, and the history so
    far is returned as for a run that went all the way. `on_step`: see train_one_epoch.

    With a `planner` (a time budget's: training/replan.py), the epochs and the last epoch's steps are
    the planner's, made again after each epoch's validation and before its checkpoint.
    """
    check_fit_arguments(model, train_batches, val_batches, optimization, epochs, flip_tta, recorder, stop,
                        last_epoch_steps)
    if early_stopping is not None:
        check_type(early_stopping, EarlyStopping, "early_stopping", "fit", "an EarlyStopping")
    if on_step is not None:
        check_callable(on_step, "on_step", "fit")
    history = list(recorder.history) if recorder is not None else []
    if early_stopping is not None and early_stopping.reason_to_stop(history):
        return history  # resumed after the epoch that stopped it: nothing is left to train
    best_accuracy = max((row["val_accuracy"] for row in history), default=-1.0)
    if planner is not None:
        planner.start()
        epochs, last_epoch_steps = planner.epochs, planner.last_epoch_steps
    epoch = len(history)
    while epoch < epochs:
        epoch += 1
        try:
            max_batches = last_epoch_steps if epoch == epochs else None
            stats = train_one_epoch(model, train_batches, optimization, stop, max_batches, on_step)
        except ConfigError as error:  # a bad batch: name it as fit's argument
            raise as_argument_of("fit", error, "train_batches") if error.field == "batches" else error from None
        except TrainingInterrupted as interruption:
            raise TrainingInterrupted(f"in epoch {epoch} {interruption}", interruption.signal_number) from None
        except NonFiniteLossError as error:
            raise NonFiniteLossError(f"epoch {epoch}: {error}") from None
        if optimization.scheduler is not None and optimization.scheduler_interval == "epoch":
            optimization.scheduler.step()
        try:
            validation = evaluate(weights_to_use(model, optimization), val_batches, flip_tta)
        except ConfigError as error:
            raise as_argument_of("fit", error, "val_batches") if error.field == "batches" else error from None
        if planner is not None:
            planner.epoch_ended(epoch, len(stats.learning_rates), stats.seconds, validation.seconds)
            epochs, last_epoch_steps = planner.epochs, planner.last_epoch_steps
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
        asked_to_stop = None
        if recorder is not None:
            try:
                recorder.end_epoch(row, stats.learning_rates, is_best)
            except StopTraining as request:  # raised once the epoch was saved: see faults.StopTraining
                asked_to_stop = str(request) or "after_epoch asked to stop"
        logger.info(format_epoch(row, epochs))
        reason = asked_to_stop or (early_stopping.reason_to_stop(history) if early_stopping else None)
        if reason is not None and epoch < epochs:
            logger.info("stopping after epoch %d of %d: %s", epoch, epochs, reason)
            break
        if stop is not None and stop.requested and epoch < epochs:  # the signal came during evaluation
            raise TrainingInterrupted(f"after epoch {epoch}", stop.signal_number)
    return history


def check_fit_arguments(model, train_batches, val_batches, optimization, epochs, flip_tta, recorder, stop,
                        last_epoch_steps) -> None:
    check_loop_arguments("fit", model, train_batches, True, optimization, stop)
    check_iterable(val_batches, "val_batches", "fit")
    check_int(epochs, "epochs", "fit", minimum=1)
    check_bool(flip_tta, "flip_tta", "fit")
    if recorder is not None and not (isinstance(getattr(recorder, "history", None), list)
                                     and callable(getattr(recorder, "end_epoch", None))):
        raise wrong_type("recorder", recorder, "an EpochRecorder (a `history` list and `end_epoch(row, "
                                               "learning_rates, is_best)`)", "fit")
    if last_epoch_steps is not None:
        check_int(last_epoch_steps, "last_epoch_steps", "fit", minimum=1)
