"""From a TrainConfig to the parts the loop needs: model, loaders, loss, optimizer and schedule."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fmnist.arguments import check_choice, check_int, check_type, invalid, named
from fmnist.data.augment import build_augmentation, build_mixing
from fmnist.data.loader import TensorLoader, scale_batch
from fmnist.data.splits import Split
from fmnist.errors import ConfigError
from fmnist.models import create_model
from fmnist.models.whitening import whitening_layers
from fmnist.training.config import AMP_MODES, TrainConfig
from fmnist.training.loop import Optimization
from fmnist.training.losses import build_loss
from fmnist.training.optim import SCHEDULER_INTERVAL, build_optimizer, build_scheduler
from fmnist.training.runtime import resolve_amp


@dataclass(repr=False)
class Training:
    """What the training loop needs, built from one config."""

    model: torch.nn.Module
    train_loader: TensorLoader
    val_loader: TensorLoader
    test_loader: TensorLoader
    optimization: Optimization

    def __repr__(self) -> str:  # print(training.model) shows the layers
        return (f"Training({type(self.model).__name__}, {type(self.optimization.optimizer).__name__}, "
                f"{len(self.train_loader)} training batches per epoch)")


def build_model(config: TrainConfig, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The config's model on `device`, in channels-last: the convolutions' fast layout on CPUs (and
    tensor cores on GPUs)."""
    options = {"pretrained": config.pretrained} if config.pretrained else {}
    return create_model(config.model, **options).to(device=device, memory_format=torch.channels_last)


def build_training(config: TrainConfig, train: Split, val: Split, test: Split, *,
                   total_steps: int | None = None, amp: str | None = None) -> Training:
    """Model, loaders, optimizer, schedule and loss as `config` says, on the splits' device.

    `total_steps` is where the schedule ends (default: config.epochs times the batches per epoch; a
    time budget's plan gives its own). `amp` is the precision already chosen for the run (a resumed
    run keeps the one it started with); by default config.amp, with "auto" resolved for this device.
    """
    check_build_arguments(config, train, val, test, total_steps, amp)
    model = build_model(config, train.images.device)
    for layer in whitening_layers(model):  # fitted to training images only (a resumed run then loads its own)
        layer.fit(scale_batch(train.images[:WHITENING_IMAGES], config.mean, config.std))
    # Augmentation on the training batches only: validation and test see the images as they are.
    # Alternating flips mirror in the loader (which knows each image and epoch), so not in `augment` too.
    alternate_flips = bool(config.alternate_flips)  # None unless --hflip is on (TrainConfig's CONDITIONAL)
    augmentation = build_augmentation(config.rotate_degrees, config.hflip and not alternate_flips,
                                      config.crop_padding, config.erase_prob, config.mean, config.std)
    train_loader = TensorLoader(
        train, config.batch_size, shuffle=True, seed=config.seed, mean=config.mean, std=config.std,
        augment=augmentation, limit_batches=config.limit_batches, mix=build_mixing(config.mixup, config.cutmix),
        alternate_flips=alternate_flips,
    )
    optimizer = build_optimizer(model, config)
    precision = resolve_amp(amp or config.amp, train.images.device)
    if total_steps is None:
        if config.epochs is None:
            raise ConfigError(f"{named('time_budget')}: a budgeted config has no epoch count; train it with "
                              "train(config), which plans its steps, or give build_training(..., total_steps=N)",
                              "time_budget")
        total_steps = config.epochs * len(train_loader)
    return Training(
        model=model,
        train_loader=train_loader,
        val_loader=TensorLoader(val, config.eval_batch_size, mean=config.mean, std=config.std),
        test_loader=TensorLoader(test, config.eval_batch_size, mean=config.mean, std=config.std),
        optimization=Optimization(
            loss_fn=build_loss(config),
            optimizer=optimizer,
            scheduler=build_scheduler(optimizer, config, total_steps),
            scheduler_interval=SCHEDULER_INTERVAL[config.scheduler],
            clip_grad_norm=config.clip_grad_norm,
            ema=build_ema(model, config.ema),
            autocast=AUTOCAST_DTYPES[precision],
            grad_scaler=torch.amp.GradScaler("cuda") if precision == "fp16" else None,
        ),
    )


WHITENING_IMAGES = 10_000  # ample for a 9x9 covariance: 7.8 million patches

AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_build_arguments(config, train, val, test, total_steps, amp) -> None:
    owner = "build_training"
    check_type(config, TrainConfig, "config", owner, "a TrainConfig")
    for name, split in (("train", train), ("val", val), ("test", test)):
        check_type(split, Split, name, owner, "a Split (e.g. load_splits().train)")
        if split.images.device != train.images.device:
            raise invalid(name, split, f"on {split.images.device}, the training split on {train.images.device}; "
                                       "put the three on one device (Split.to)", owner)
    if len(train) == 0:
        raise invalid("train", train, "has no images to train on", owner)
    if total_steps is not None:
        check_int(total_steps, "total_steps", owner, minimum=1)
    if amp is not None:
        check_choice(amp, AMP_MODES, "amp", owner)
        if amp == "fp16" and train.images.device.type != "cuda":
            raise invalid("amp", amp, f"fp16 needs CUDA, and the splits are on {train.images.device}", owner)


def build_ema(model: torch.nn.Module, decay: float | None) -> AveragedModel | None:
    """A moving average of the weights, BatchNorm's running statistics included (use_buffers): after
    each step, average = decay * average + (1 - decay) * weights; the first step copies the weights."""
    if decay is None:
        return None
    return MovingAverage(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


class MovingAverage(AveragedModel):
    """torch's AveragedModel with an update that never makes the CPU wait for the GPU.

    Its update counter stays on the CPU (where reading it is free); torch's own update_parameters copies
    that counter to the GPU, with a blocking copy, once per group of tensors (weights and integer buffers)
    at every step, only to hand it to an EMA function that ignores it. The arithmetic is torch's.
    """

    def update_parameters(self, model: torch.nn.Module) -> None:
        averages = [tensor.detach() for tensor in itertools.chain(self.module.parameters(), self.module.buffers())]
        currents = [tensor.detach() for tensor in itertools.chain(model.parameters(), model.buffers())]
        if int(self.n_averaged) == 0:  # the first update copies the weights
            for average, current in zip(averages, currents, strict=True):
                average.copy_(current)
        else:
            groups: dict[tuple, tuple[list, list]] = {}
            for average, current in zip(averages, currents, strict=True):
                group = groups.setdefault((average.device, average.dtype), ([], []))
                group[0].append(average)
                group[1].append(current)
            for group_averages, group_currents in groups.values():
                self.multi_avg_fn(group_averages, group_currents, self.n_averaged)
        self.n_averaged += 1
