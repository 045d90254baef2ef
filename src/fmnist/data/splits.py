"""Fashion-MNIST in memory: train / validation / test splits as uint8 tensors.

The four IDX files are read once and kept as one uint8 tensor per split. Training slices batches
out of that tensor (loader.py); there is no per-image Python on the hot path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmnist.arguments import (
    check_bool,
    check_device,
    check_images,
    check_int,
    check_path,
    check_seed,
    check_type,
    invalid,
)
from fmnist.data.fashion import FILES, NUM_CLASSES, SPLIT_SEED, VAL_SIZE
from fmnist.data.idx import read_images, read_labels
from fmnist.data.locate import file_path, find_data_dir, how_to_get
from fmnist.data.verify import unverified_files
from fmnist.errors import DataError


@dataclass(repr=False)
class Split:
    """One split held in memory: uint8 images (N, 28, 28) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        check_images(self.images, "images", "Split")
        check_type(self.labels, torch.Tensor, "labels", "Split", "a torch.Tensor of int64 class indices")
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise invalid("labels", self.labels, "give int64 class indices of shape (N,)", "Split")
        if len(self.labels) != len(self.images) or self.labels.device != self.images.device:
            raise invalid("labels", self.labels, f"give one label per image, on the images' device "
                                                 f"({len(self.images)} on {self.images.device})", "Split")

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:  # a summary, not 60,000 images
        return f"Split({len(self):,} images {tuple(self.images.shape)} {self.images.dtype} on {self.images.device})"

    def subset(self, indices: torch.Tensor) -> Split:
        check_type(indices, torch.Tensor, "indices", "Split.subset", "a torch.Tensor of int64 indices")
        if indices.dtype != torch.int64 or indices.dim() != 1:
            raise invalid("indices", indices, "give int64 indices of shape (K,)", "Split.subset")
        if len(indices) and not (-len(self) <= int(indices.min()) and int(indices.max()) < len(self)):
            raise invalid("indices", indices, f"out of range for a split of {len(self)} images", "Split.subset")
        return Split(self.images[indices], self.labels[indices])

    def to(self, device: torch.device | str) -> Split:
        device = check_device(device, "device", "Split.to")
        return Split(self.images.to(device), self.labels.to(device))


def read_split(directory: Path, split: str) -> Split:
    """Read 'train' or 'test' from `directory` and check that images and labels agree."""
    images_path = file_path(directory, FILES[f"{split}_images"])
    labels_path = file_path(directory, FILES[f"{split}_labels"])
    if images_path is None or labels_path is None:
        raise DataError(f"{directory}: the {split} files are missing; {how_to_get()}")
    images = read_images(images_path)
    labels = read_labels(labels_path)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path}: {len(images)} images but {labels_path.name} has {len(labels)} labels; "
            "the files do not belong together, get the data set again"
        )
    # frombuffer arrays are read-only views of `bytes`; copy into tensors that own their memory.
    return Split(torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64)))


def split_indices(count: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted (train, validation) indices that hold `val_size` of `count` images out.

    The split depends only on `split_seed`, not on the training seed, so runs with different
    seeds are compared on the same validation images.
    """
    if not 0 <= val_size < count:
        raise invalid("val_size", val_size, f"must be less than the {count} training images", "load_splits")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(split_seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def train_val_split(train: Split, val_size: int, split_seed: int) -> tuple[Split, Split]:
    """Hold `val_size` images out of the training split for model selection."""
    train_indices, val_indices = split_indices(len(train), val_size, split_seed)
    return train.subset(train_indices), train.subset(val_indices)


@dataclass(repr=False)
class DataSplits:
    train: Split
    val: Split
    test: Split
    directory: Path
    verified: bool  # the files' content is the official Fashion-MNIST (verify.py)

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            check_type(getattr(self, name), Split, name, "DataSplits", "a Split")
        self.directory = check_path(self.directory, "directory", "DataSplits")
        check_bool(self.verified, "verified", "DataSplits")

    def __repr__(self) -> str:
        return (f"DataSplits(train {len(self.train):,}, val {len(self.val):,}, test {len(self.test):,} images from "
                f"{str(self.directory)!r}{'' if self.verified else ', NOT verified'})")


def load_splits(
    data_dir: str | os.PathLike | None = None, val_size: int = VAL_SIZE, split_seed: int = SPLIT_SEED,
    verify: bool = True,
) -> DataSplits:
    """Find the data set and return train / validation / test splits on the CPU.

    The validation split is `val_size` images held out of the 60,000 training images (the same
    ones for the same `split_seed`); the test split is the 10,000 test images, for reporting only.
    With `verify`, files whose content is not the official Fashion-MNIST are refused (DataError);
    `verify=False` reads any valid IDX files (generated test data, a modified copy).
    """
    if data_dir is not None:
        check_path(data_dir, "data_dir", "load_splits")
    check_int(val_size, "val_size", "load_splits", minimum=0)
    check_seed(split_seed, "split_seed", "load_splits")
    check_bool(verify, "verify", "load_splits")
    directory = find_data_dir(data_dir)
    problems = unverified_files(directory)
    if verify and problems:
        raise problems[0]
    full_train = read_split(directory, "train")
    test = read_split(directory, "test")
    train, val = train_val_split(full_train, val_size, split_seed)
    return DataSplits(train=train, val=val, test=test, directory=directory, verified=not problems)


def describe_split(split: Split) -> dict:
    """Counts per class and pixel mean/std (0..1 scale) of a split."""
    pixels = split.images.float().div_(255.0)
    return {
        "count": len(split),
        "per_class": torch.bincount(split.labels, minlength=NUM_CLASSES).tolist(),
        "mean": pixels.mean().item(),
        "std": pixels.std().item(),
    }
