"""Batched augmentation: whole-batch tensor ops with a fresh random draw for every image.

Each op takes a normalized (N, 1, 28, 28) batch and the loader's generator, and draws one set of
random numbers per image from it (on the CPU, so a seed gives the same draws on any device, and
a checkpoint that saves the loader's generator resumes the same augmentations). The draws reach the
GPU through data/transfer.py, queued behind its work instead of waiting for it. No per-image Python,
no PIL: the cost is a few tensor ops per batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from fmnist.data.fashion import NUM_CLASSES
from fmnist.data.transfer import to_device

# Random erasing's rectangle, as torchvision's RandomErasing draws it: 2-33% of the image,
# aspect ratio (height / width) between 0.3 and 3.3, on a log scale so tall and wide are as likely.
ERASE_AREA = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)


def uniform(count: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(count, generator=generator)


def random_hflip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (clothes stay clothes when mirrored)."""
    flip = torch.rand(len(images), generator=generator) < 0.5
    return torch.where(to_device(flip, images.device).view(-1, 1, 1, 1), images.flip(3), images)


def first_pass_mirrors(count: int, seed: int) -> torch.Tensor:
    """Which of `count` images alternating flips mirror in a loader's first pass: half of them at random.

    Drawn from `seed` alone, not from the loader's generator, so a resumed run (which restores that
    generator mid-way) finds the same half. The stream (seed, 1) is apart from the generator's own.
    """
    return torch.from_numpy(np.random.default_rng((seed, 1)).random(count) < 0.5)


def alternating_hflip(images: torch.Tensor, mirrored_first: torch.Tensor, indices: torch.Tensor,
                      pass_number: int) -> torch.Tensor:
    """Mirror the batch's images that are due in this pass of the data (airbench's alternating flip).

    `indices` are the batch's places in the split. Passes 0, 2, 4, ... mirror the images marked in
    `mirrored_first`, passes 1, 3, 5, ... the others, so every image is seen both ways in every two
    epochs, where random flips show about half of the images the same way two epochs running (Jordan,
    "94% on CIFAR-10 in 3.29 seconds", 2024, found this better wherever flipping helps).
    """
    flip = mirrored_first[indices] ^ (pass_number % 2 == 1)
    return torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)


def random_crop(images: torch.Tensor, generator: torch.Generator, padding: int, fill: float) -> torch.Tensor:
    """Pad every side by `padding` pixels of `fill`, then cut a 28x28 window at a random offset.

    The same as shifting each image by -padding..padding pixels in x and y, background flowing in.
    """
    count, size = len(images), images.shape[-1]
    padded = functional.pad(images[:, 0], (padding, padding, padding, padding), value=fill)
    # One draw of both offsets, one copy to the device.
    tops, lefts = to_device(torch.randint(0, 2 * padding + 1, (2, count), generator=generator), images.device)
    offsets = torch.arange(size, device=images.device)
    rows = (tops[:, None] + offsets)[:, :, None]  # (N, 28, 1)
    columns = (lefts[:, None] + offsets)[:, None, :]  # (N, 1, 28)
    batch = torch.arange(count, device=images.device)[:, None, None]
    return padded[batch, rows, columns].unsqueeze(1)


def random_rotate(images: torch.Tensor, generator: torch.Generator, degrees: float, fill: float) -> torch.Tensor:
    """Rotate each image about its centre by an angle drawn uniformly from [-degrees, degrees].

    One affine_grid + grid_sample (bilinear) for the whole batch. grid_sample brings in zeros
    from outside the image, so the batch is shifted to make the background 0 and back after.
    """
    angles = uniform(len(images), -math.radians(degrees), math.radians(degrees), generator)
    cos, sin, zero = angles.cos(), angles.sin(), torch.zeros_like(angles)
    # Rows of the 2x3 matrix mapping output to input coordinates; both axes span [-1, 1] in a
    # square image, so a rotation in those coordinates is a rotation in pixels.
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    theta = to_device(theta, images.device).to(dtype=images.dtype)
    grid = functional.affine_grid(theta, list(images.shape), align_corners=False)
    rotated = functional.grid_sample(images - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return rotated + fill


def random_erase(images: torch.Tensor, generator: torch.Generator, probability: float) -> torch.Tensor:
    """With `probability`, set a random rectangle of each image to 0 (the data set's mean once normalized).

    Drawn like torchvision's RandomErasing, except that a rectangle too large for the image is
    clipped to it instead of being drawn again (one draw per image keeps it one batched op).
    """
    count, size = len(images), images.shape[-1]
    erase = torch.rand(count, generator=generator) < probability
    area = uniform(count, *ERASE_AREA, generator) * size * size
    ratio = uniform(count, math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]), generator).exp()
    heights = (area * ratio).sqrt().round().clamp(1, size)
    widths = (area / ratio).sqrt().round().clamp(1, size)
    tops = (torch.rand(count, generator=generator) * (size - heights + 1)).floor()
    lefts = (torch.rand(count, generator=generator) * (size - widths + 1)).floor()
    offsets = torch.arange(size)
    in_rows = (offsets >= tops[:, None]) & (offsets < (tops + heights)[:, None])  # (N, 28)
    in_columns = (offsets >= lefts[:, None]) & (offsets < (lefts + widths)[:, None])
    mask = in_rows[:, :, None] & in_columns[:, None, :] & erase[:, None, None]
    return images.masked_fill(to_device(mask, images.device).unsqueeze(1), 0.0)


@dataclass(frozen=True)
class Augmentation:
    """The training-time augmentation of a run: TensorLoader calls it on each normalized batch.

    `fill` is the normalized value of a black pixel: the background that shifts and rotations
    bring in (with normalization, black is -mean/std, not 0).
    """

    rotate_degrees: float = 0.0
    hflip: bool = False
    crop_padding: int = 0
    erase_prob: float = 0.0
    fill: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.rotate_degrees > 0 or self.hflip or self.crop_padding > 0 or self.erase_prob > 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # Geometry first, erasing last, so an erased rectangle is never rotated or shifted away.
        if self.hflip:
            images = random_hflip(images, generator)
        if self.crop_padding > 0:
            images = random_crop(images, generator, self.crop_padding, self.fill)
        if self.rotate_degrees > 0:
            images = random_rotate(images, generator, self.rotate_degrees, self.fill)
        if self.erase_prob > 0:
            images = random_erase(images, generator, self.erase_prob)
        return images


def build_augmentation(
    rotate_degrees: float, hflip: bool, crop_padding: int, erase_prob: float, mean: float, std: float
) -> Augmentation | None:
    """The augmentation these options ask for, or None when all are off (the loader's fast path)."""
    augmentation = Augmentation(rotate_degrees, hflip, crop_padding, erase_prob, fill=-mean / std)
    return augmentation if augmentation.enabled else None


# ---------------------------------------------------------------- mixing images and labels

def beta_draw(alpha: float, generator: torch.Generator) -> float:
    """One draw from Beta(alpha, alpha), seeded from `generator` so that a checkpoint of the
    generator's state repeats it (torch's own Beta sampler only uses the global generator)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def one_hot(labels: torch.Tensor) -> torch.Tensor:
    return functional.one_hot(labels, NUM_CLASSES).float()


def mixup(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, alpha: float):
    """Blend each image with another of the batch, weight lam ~ Beta(alpha, alpha), labels likewise
    (Zhang et al., 2018). One lam per batch and a random pairing, as timm and torchvision do."""
    lam = beta_draw(alpha, generator)
    partner = to_device(torch.randperm(len(images), generator=generator), images.device)
    targets = one_hot(labels)
    return lam * images + (1 - lam) * images[partner], lam * targets + (1 - lam) * targets[partner]


def cutmix(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator, alpha: float):
    """Paste a box of another image of the batch into each image; the labels are mixed by the box's
    share of the area (Yun et al., 2019). The box covers 1 - lam of the image, lam ~ Beta(alpha, alpha),
    centred anywhere and clipped at the edges; lam is then recomputed from the clipped box."""
    lam = beta_draw(alpha, generator)
    partner = to_device(torch.randperm(len(images), generator=generator), images.device)
    size = images.shape[-1]
    side = size * math.sqrt(1 - lam)
    centre_row, centre_column = (torch.rand(2, generator=generator) * size).tolist()
    top, bottom = int(max(0, round(centre_row - side / 2))), int(min(size, round(centre_row + side / 2)))
    left, right = int(max(0, round(centre_column - side / 2))), int(min(size, round(centre_column + side / 2)))
    mixed = images.clone()
    mixed[:, :, top:bottom, left:right] = images[partner][:, :, top:bottom, left:right]
    lam = 1 - (bottom - top) * (right - left) / (size * size)
    targets = one_hot(labels)
    return mixed, lam * targets + (1 - lam) * targets[partner]


@dataclass(frozen=True)
class Mixing:
    """Mixup and/or CutMix for TensorLoader's training batches: the labels become soft targets
    (N, 10). With both on, each batch gets one of the two, as timm does."""

    mixup: float = 0.0
    cutmix: float = 0.0

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator):
        use_cutmix = self.cutmix > 0 and (self.mixup == 0 or bool(torch.rand(1, generator=generator) < 0.5))
        if use_cutmix:
            return cutmix(images, labels, generator, self.cutmix)
        return mixup(images, labels, generator, self.mixup)


def build_mixing(mixup_alpha: float | None, cutmix_alpha: float | None) -> Mixing | None:
    """The mixing these options ask for, or None when both are off."""
    mixup_alpha, cutmix_alpha = mixup_alpha or 0.0, cutmix_alpha or 0.0
    return Mixing(mixup_alpha, cutmix_alpha) if mixup_alpha > 0 or cutmix_alpha > 0 else None
