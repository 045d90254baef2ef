"""Batches sliced out of a split that already lives on the training device.

This replaces torch's DataLoader for a data set that fits in memory many times over: each epoch
draws one random permutation, and a batch is an index slice of one uint8 tensor, converted and
normalized as a whole. No worker processes, no per-image Python, no PIL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from fmnist.arguments import (
    check_bool,
    check_callable,
    check_images,
    check_int,
    check_number,
    check_seed,
    check_type,
    invalid,
)
from fmnist.data.augment import Augmentation, alternating_hflip, first_pass_mirrors
from fmnist.data.fashion import MEAN, STD
from fmnist.data.splits import Split
from fmnist.data.transfer import to_device

BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
# (images, labels, generator) -> (images, soft targets (N, 10)): mixup and cutmix (augment.Mixing).
BatchMixing = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


def normalize(images: torch.Tensor, mean: float = MEAN, std: float = STD) -> torch.Tensor:
    """uint8 (N, 28, 28) -> float32 (N, 1, 28, 28) with the data set's mean 0 and std 1."""
    check_images(images, "images", "normalize")
    check_normalization(mean, std, "normalize")
    return scale_batch(images, mean, std)


def check_normalization(mean, std, owner: str) -> None:
    check_number(mean, "mean", owner, minimum=0.0, maximum=1.0)
    check_number(std, "std", owner, above=0.0)


def scale_batch(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """normalize() without its checks, for the loader's every batch (checked once, when it was made)."""
    scaled = images.unsqueeze(1).float()
    # One subtract and one multiply on the 0..255 scale: cheaper than /255, -mean, /std.
    return scaled.sub_(mean * 255.0).mul_(1.0 / (std * 255.0))


class TensorLoader:
    """Iterate over (images, labels) batches of a split held on one device.

    `shuffle` draws a fresh permutation each epoch from the loader's own generator, whose state a
    checkpoint can save; `augment` (train only) changes each image of a normalized batch, again
    drawing from that generator, and `mix` (train only: mixup, cutmix) mixes images and turns the
    labels into soft targets. Batches are channels-last, the faster layout for CPU convolutions.

    `alternate_flips` (train only) mirrors each image in every other pass of the data instead of at
    random (augment.alternating_hflip), before `augment`. It lives here, not in `augment`, because it
    needs what only the loader knows: which image a batch holds and which pass this is. `passes`
    counts the passes begun; a resumed run sets it to the epochs it had done.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        mean: float = MEAN,
        std: float = STD,
        augment: BatchTransform | None = None,
        limit_batches: int | None = None,
        mix: BatchMixing | None = None,
        alternate_flips: bool = False,
    ):
        check_type(split, Split, "split", "TensorLoader", "a Split (e.g. load_splits().train)")
        check_int(batch_size, "batch_size", "TensorLoader", minimum=1)
        check_bool(shuffle, "shuffle", "TensorLoader")
        check_seed(seed, "seed", "TensorLoader")
        check_normalization(mean, std, "TensorLoader")
        for name, function in (("augment", augment), ("mix", mix)):
            if function is not None:
                check_callable(function, name, "TensorLoader")
        if limit_batches is not None:
            check_int(limit_batches, "limit_batches", "TensorLoader", minimum=1)
        check_bool(alternate_flips, "alternate_flips", "TensorLoader")
        if alternate_flips and not shuffle:
            raise invalid("alternate_flips", True, "alternating flips augment training batches: give shuffle=True "
                          "too (validation and test batches are never augmented)", "TensorLoader")
        if alternate_flips and isinstance(augment, Augmentation) and augment.hflip:
            raise invalid("alternate_flips", True, "augment also mirrors at random, which would undo the "
                          "alternation: give augment=Augmentation(hflip=False, ...)", "TensorLoader")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.mean = mean
        self.std = std
        self.augment = augment
        self.limit_batches = limit_batches
        self.mix = mix
        # CPU generator even for CUDA data: randperm on the CPU is reproducible across devices.
        self.generator = torch.Generator().manual_seed(seed)
        self.passes = 0
        self.mirrored_first = (to_device(first_pass_mirrors(len(split), seed), split.images.device)
                               if alternate_flips else None)

    def __len__(self) -> int:
        batches = -(-len(self.split) // self.batch_size)
        if self.shuffle and len(self.split) % self.batch_size == 1 and batches > 1:
            # A training batch of one image breaks BatchNorm (no batch statistics): leave it out.
            batches -= 1
        return batches if self.limit_batches is None else min(batches, self.limit_batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.split.images.device
        pass_number = self.passes
        self.passes += 1
        if self.shuffle:
            order = to_device(torch.randperm(len(self.split), generator=self.generator), device)
        else:
            order = None
        for index in range(len(self)):
            start = index * self.batch_size
            if order is None:
                raw_images = self.split.images[start : start + self.batch_size]
                labels = self.split.labels[start : start + self.batch_size]
            else:
                batch_indices = order[start : start + self.batch_size]
                raw_images = self.split.images[batch_indices]
                labels = self.split.labels[batch_indices]
            images = scale_batch(raw_images, self.mean, self.std)
            if self.mirrored_first is not None:
                images = alternating_hflip(images, self.mirrored_first, batch_indices, pass_number)
            if self.augment is not None:
                images = self.augment(images, self.generator)
            if self.mix is not None:
                images, labels = self.mix(images, labels, self.generator)
            yield images.contiguous(memory_format=torch.channels_last), labels


def endless(loader) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's batches, epoch after epoch, from one iterator: a benchmark or a time budget's probe may
    time more batches than one epoch has, and a fresh iterator per timed chunk would time its start too."""
    while True:
        yield from loader
