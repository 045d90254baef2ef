"""Optimizers and learning-rate schedules, chosen by name."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR, StepLR

from fmnist.config import OPTIMIZERS, SCHEDULERS
from fmnist.errors import ConfigError

# When each schedule steps. OneCycle and cosine change the rate every batch (their curves are
# defined over the whole run); StepLR decays every `step_size` epochs.
SCHEDULER_INTERVAL = {"onecycle": "batch", "cosine": "batch", "steplr": "epoch", "none": None}


def build_optimizer(
    model: nn.Module,
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    parameters = model.parameters()
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    name: str,
    epochs: int,
    steps_per_epoch: int,
    max_lr: float = 0.01,
    step_size: int = 1,
    gamma: float = 0.7,
) -> LRScheduler | None:
    """The schedule `name`; step it as SCHEDULER_INTERVAL[name] says."""
    if name == "onecycle":
        return OneCycleLR(optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch)
    if name == "cosine":
        return CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    if name == "steplr":
        return StepLR(optimizer, step_size=step_size, gamma=gamma)
    if name == "none":
        return None
    raise ConfigError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
