"""Fashion-MNIST on disk -> validated uint8 tensors held in memory.

The four IDX files are read once, checked thoroughly (a bad file gets one clear line, never a
traceback), and kept as one uint8 tensor per split. Training slices batches out of that tensor;
there is no per-image Python on the hot path.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fmnist.errors import DataError

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
IMAGE_SIZE = 28

# Fashion-MNIST's own pixel statistics over the 60,000 training images (on the 0..1 scale).
# MNIST's 0.1307/0.3081 are a common copy-paste mistake: they are the wrong data set.
MEAN = 0.2860
STD = 0.3530

# File stem -> what it holds. Each may be stored as `.gz` or decompressed.
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
HOW_TO_GET = (
    "get it with `fmnist data download`, or `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as root), "
    "or point --data-dir or $FMNIST_DATA at a folder holding the four IDX files"
)


def user_cache_dir() -> Path:
    """Where `fmnist data download` puts the files by default (honours $XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fmnist"


def file_path(directory: Path, stem: str) -> Path | None:
    """The IDX file `stem` in `directory`, compressed or not, or None if neither is there."""
    for name in (stem + ".gz", stem):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def missing_files(directory: Path) -> list[str]:
    return [stem for stem in FILES.values() if file_path(directory, stem) is None]


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Find the folder holding the four IDX files.

    An explicit choice (`data_dir`, then $FMNIST_DATA) must hold the files: silently falling back
    to another copy would hide the user's mistake. Otherwise the user cache and Debian's folder are
    searched in that order.
    """
    for explicit, what in ((data_dir, "--data-dir"), (os.environ.get("FMNIST_DATA"), "$FMNIST_DATA")):
        if explicit:
            directory = Path(explicit).expanduser()
            missing = missing_files(directory)
            if missing:
                raise DataError(
                    f"{what} {directory}: missing {', '.join(missing)} (.gz or decompressed); {HOW_TO_GET}"
                )
            return directory
    for directory in (user_cache_dir(), DEBIAN_DIR):
        if not missing_files(directory):
            return directory
    raise DataError(
        f"Fashion-MNIST not found in {user_cache_dir()} or {DEBIAN_DIR}; {HOW_TO_GET}"
    )


def read_bytes(path: Path) -> bytes:
    """The file's content, decompressed if it ends in .gz."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        reason = str(error) or type(error).__name__
        raise DataError(f"{path}: cannot read ({reason}); delete it and get the data set again") from None


def parse_idx(content: bytes, path: Path, expected_magic: int) -> np.ndarray:
    """Check an IDX file's header against its length and return its uint8 array."""
    if len(content) < 8:
        raise DataError(f"{path}: only {len(content)} bytes, too short for an IDX header; get the file again")
    magic = int.from_bytes(content[0:4], "big")
    if magic != expected_magic:
        kind = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}[expected_magic]
        raise DataError(
            f"{path}: magic number {magic}, expected {expected_magic} for an IDX {kind} file; "
            "is this the right file? get the data set again"
        )
    ndim = content[3]
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise DataError(f"{path}: header cut short ({len(content)} bytes); get the file again")
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected_size = header_size + math.prod(shape)  # Python ints: no overflow for absurd headers
    if len(content) != expected_size:
        raise DataError(
            f"{path}: {len(content)} bytes but its header {shape} needs {expected_size}; "
            "the file is truncated or corrupt, get it again"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def read_images(path: Path) -> np.ndarray:
    images = parse_idx(read_bytes(path), path, IMAGES_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{path}: images of shape {images.shape[1:]}, expected ({IMAGE_SIZE}, {IMAGE_SIZE}); "
            "this is not Fashion-MNIST"
        )
    return images


def read_labels(path: Path) -> np.ndarray:
    labels = parse_idx(read_bytes(path), path, LABELS_MAGIC)
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{path}: label {int(labels.max())} found, expected 0-{NUM_CLASSES - 1}; the file is corrupt"
        )
    return labels


@dataclass
class Split:
    """One split held in memory: uint8 images (N, 28, 28) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> Split:
        return Split(self.images[indices], self.labels[indices])

    def to(self, device: torch.device) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


def read_split(directory: Path, split: str) -> Split:
    """Read 'train' or 'test' from `directory` and check that images and labels agree."""
    images_path = file_path(directory, FILES[f"{split}_images"])
    labels_path = file_path(directory, FILES[f"{split}_labels"])
    if images_path is None or labels_path is None:
        raise DataError(f"{directory}: the {split} files are missing; {HOW_TO_GET}")
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
        raise DataError(f"--val-size {val_size}: must be less than the {count} training images")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(split_seed))
    return order[val_size:].sort().values, order[:val_size].sort().values


def train_val_split(train: Split, val_size: int, split_seed: int) -> tuple[Split, Split]:
    """Hold `val_size` images out of the training split for model selection."""
    train_indices, val_indices = split_indices(len(train), val_size, split_seed)
    return train.subset(train_indices), train.subset(val_indices)


@dataclass
class DataSplits:
    train: Split
    val: Split
    test: Split
    directory: Path


def load_splits(data_dir: str | None, val_size: int, split_seed: int) -> DataSplits:
    """Find the data set and return train / validation / test splits on the CPU."""
    directory = find_data_dir(data_dir)
    full_train = read_split(directory, "train")
    test = read_split(directory, "test")
    train, val = train_val_split(full_train, val_size, split_seed)
    return DataSplits(train=train, val=val, test=test, directory=directory)


def describe_split(split: Split) -> dict:
    """Counts per class and pixel mean/std (0..1 scale) of a split."""
    pixels = split.images.float().div_(255.0)
    return {
        "count": len(split),
        "per_class": torch.bincount(split.labels, minlength=NUM_CLASSES).tolist(),
        "mean": pixels.mean().item(),
        "std": pixels.std().item(),
    }
