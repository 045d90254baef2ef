"""Optimizers and learning-rate schedules, chosen by name from a TrainConfig."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR, StepLR

from fmnist.training.config import TrainConfig

# When each schedule steps. OneCycle and cosine change the rate every batch (their curves are
# defined over the whole run); StepLR decays every `step_size` epochs.
SCHEDULER_INTERVAL = {"onecycle": "batch", "cosine": "batch", "steplr": "epoch", "none": None}
# OneCycle's own momentum cycle (torch's defaults): it starts at the maximum and overwrites what the
# optimizer was given.
ONECYCLE_MAX_MOMENTUM = 0.95


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW over the model's parameters, as `config` says.

    Under OneCycle the `lr` and SGD's `momentum` given here are only placeholders: the schedule sets
    both at every step (and Adam's first beta), so the config holds None for them.
    """
    parameters = model.parameters()
    lr = config.lr if config.lr is not None else config.max_lr
    if config.optimizer == "sgd":
        momentum = config.momentum if config.momentum is not None else ONECYCLE_MAX_MOMENTUM
        return torch.optim.SGD(
            parameters, lr=lr, momentum=momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=config.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> LRScheduler | None:
    """The schedule `config.scheduler`; step it as SCHEDULER_INTERVAL says."""
    if config.scheduler == "onecycle":
        return OneCycleLR(optimizer, max_lr=config.max_lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch)
    if config.scheduler == "cosine":
        return CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    if config.scheduler == "steplr":
        return StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    return None
