"""Optimizers and learning-rate schedules, chosen by name from a TrainConfig."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler, OneCycleLR, StepLR

from fmnist.training.config import TrainConfig

# When each schedule steps. OneCycle, cosine and linear change the rate every batch (their curves are
# defined over the whole run, and end at its last step); StepLR decays every `step_size` epochs.
SCHEDULER_INTERVAL = {"onecycle": "batch", "cosine": "batch", "linear": "batch", "steplr": "epoch", "none": None}
# Adam and AdamW update every parameter in one fused kernel on these devices; torch's default on a CPU
# is a Python loop over the parameters. The same update (up to rounding), and 4-7% more images/s for
# the default recipe here (benchmarks/speed_levers.py, BENCHMARKS.md). A resumed run keeps the
# implementation its checkpoint's optimizer state names.
FUSED_ADAM_DEVICES = ("cpu", "cuda")
# SGD is fused on CUDA for another reason: a fused optimizer takes fp16's GradScaler verdict (inf or NaN
# found) as a tensor, while a plain one makes the CPU read it from the GPU at every step. On the CPU,
# SGD stays torch's default, so the CPU's recorded results stay as they were.
FUSED_SGD_DEVICES = ("cuda",)
# OneCycle's own momentum cycle (torch's defaults): it starts at the maximum and overwrites what the
# optimizer was given.
ONECYCLE_MAX_MOMENTUM = 0.95


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov), Adam or AdamW over the model's parameters, as `config` says.

    Under OneCycle the `lr` (its peak) and SGD's `momentum` given here are only placeholders: the
    schedule sets both at every step (and Adam's first beta); the config holds None for the momentum.
    """
    parameters = list(model.parameters())
    lr = config.lr
    if config.optimizer == "sgd":
        momentum = config.momentum if config.momentum is not None else ONECYCLE_MAX_MOMENTUM
        fused = bool(parameters) and parameters[0].device.type in FUSED_SGD_DEVICES
        return torch.optim.SGD(
            parameters, lr=lr, momentum=momentum, nesterov=config.nesterov, weight_decay=config.weight_decay,
            fused=fused or None,
        )
    fused = bool(parameters) and parameters[0].device.type in FUSED_ADAM_DEVICES
    adam = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return adam(parameters, lr=lr, weight_decay=config.weight_decay, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> LRScheduler | None:
    """The schedule `config.scheduler` over `total_steps` training steps; step it as SCHEDULER_INTERVAL says.

    The per-batch schedules end at `total_steps`: the epochs times the batches per epoch, or the
    steps a time budget planned (training/budget.py), so that the rate is annealed when training ends.
    """
    if config.scheduler == "onecycle":
        return OneCycleLR(optimizer, max_lr=config.max_lr, total_steps=total_steps)
    if config.scheduler == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total_steps)
    if config.scheduler == "linear":
        # Budgeted training's choice (Li, Yumer and Ramanan, ICLR 2020): straight down to 0 at the end.
        return LambdaLR(optimizer, lambda step: max(0.0, 1 - step / total_steps))
    if config.scheduler == "steplr":
        return StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    return None
