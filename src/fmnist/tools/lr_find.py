"""The learning-rate range test (Smith, 2017; fastai's lr_find, Lightning's lr_finder).

Train from the config's starting point for a few hundred batches while the learning rate grows
exponentially from `start_lr` to `end_lr`, one rate per batch, and record the loss. The loss first
falls, then flattens, then explodes: a good learning rate sits on the falling slope. The suggestion
is the rate at the lowest smoothed loss divided by 10 (fastai's rule of thumb); for OneCycle, that
is a reasonable --max-lr. Nothing is saved: the model is built for the test and thrown away, and a
run folder it starts from is only read.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from torch.optim.lr_scheduler import LambdaLR

from fmnist.arguments import check_int, check_number, check_type, invalid, setting
from fmnist.data.loader import endless
from fmnist.data.splits import load_splits
from fmnist.experiment import check_device_options
from fmnist.reports import plots
from fmnist.training.build import build_training
from fmnist.training.config import TrainConfig
from fmnist.training.loop import NonFiniteLossError, Optimization, train_one_epoch
from fmnist.training.runtime import resolve_device, seed_everything

logger = logging.getLogger(__name__)
OWNER = "find_lr"  # how errors name the arguments in Python (the CLI: --start-lr, --end-lr, --steps)
SMOOTHING = 0.98  # exponential smoothing of the per-batch loss, with bias correction (as fastai does)
DIVERGED = 4.0  # stop once the smoothed loss is this many times its minimum


@dataclass
class LrFindResult:
    learning_rates: list[float]
    losses: list[float]  # smoothed
    suggestion: float | None  # the rate at the lowest smoothed loss / 10
    lowest_loss_at: float | None


def find_lr(config: TrainConfig, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200,
            initial_weights: dict | None = None) -> LrFindResult:
    """Run the range test on `config`'s model, data, batch size, optimizer, loss and augmentation.

    `initial_weights` (a state_dict) starts from a trained model instead of a fresh one. The config's
    settings of a whole run (epochs, schedule, evaluation, reporting) play no part: the rate grows from
    `start_lr` to `end_lr` over `steps` batches, and the test stops early once the loss has diverged.
    """
    check_type(config, TrainConfig, "config", OWNER, "a TrainConfig")
    check_number(start_lr, "start_lr", OWNER, above=0)
    if check_number(end_lr, "end_lr", OWNER, above=0) <= start_lr:
        raise invalid("end_lr", end_lr, f"must be greater than {setting('start_lr', start_lr, OWNER)}", OWNER)
    check_int(steps, "steps", OWNER, minimum=10)
    if initial_weights is not None:
        check_type(initial_weights, dict, "initial_weights", OWNER, "a state_dict (a dict of tensors) or None")
    device = resolve_device(config.device)
    check_device_options(config, device)  # --amp fp16 on a CPU: one line, as `fmnist train` says it
    data = load_splits(config.data_dir, config.val_size, config.split_seed, verify=not config.allow_unverified_data)
    seed_everything(config.seed, config.deterministic)
    # The test drives the learning rate itself: no schedule, and SGD keeps the config's momentum.
    sweep = config.replace(scheduler="none", lr=start_lr, max_lr=None, step_size=None, gamma=None)
    training = build_training(sweep, data.train.to(device), data.val.to(device), data.test.to(device))
    if initial_weights is not None:
        training.model.load_state_dict(initial_weights)
    optimization = range_test_optimization(training.optimization, (end_lr / start_lr) ** (1 / (steps - 1)))
    batches = endless(training.train_loader)
    learning_rates, losses = [], []
    average, lowest = 0.0, math.inf
    for step in range(steps):
        try:
            stats = train_one_epoch(training.model, itertools.islice(batches, 1), optimization)
        except NonFiniteLossError:
            break
        average = SMOOTHING * average + (1 - SMOOTHING) * stats.loss
        smoothed = average / (1 - SMOOTHING ** (step + 1))
        learning_rates.append(stats.learning_rates[0])
        losses.append(smoothed)
        lowest = min(lowest, smoothed)
        if smoothed > DIVERGED * lowest:
            break
    if not losses:
        return LrFindResult([], [], None, None)
    lowest_at = learning_rates[losses.index(min(losses))]
    logger.info("lr-find: %d batches from %.1e to %.1e; lowest smoothed loss %.4f at %.2e", len(losses),
                learning_rates[0], learning_rates[-1], min(losses), lowest_at)
    return LrFindResult(learning_rates, losses, lowest_at / 10, lowest_at)


def range_test_optimization(optimization: Optimization, growth: float) -> Optimization:
    """The run's own optimization (loss, optimizer, clipping, precision and fp16's GradScaler: without the
    scaler, small fp16 gradients round to zero and the curve is wrong), with the rate growing by `growth`
    every batch instead of the run's schedule. No moving average: the test looks at the raw weights' loss."""
    schedule = LambdaLR(optimization.optimizer, lambda step: growth**step)
    return dataclasses.replace(optimization, scheduler=schedule, scheduler_interval="batch", ema=None)


def plot(result: LrFindResult, path: Path) -> Path:
    return plots.lr_find_curve(result.learning_rates, result.losses, result.suggestion, path)
