"""Shared fixtures: small generated IDX data sets, and the real one where learning is the point."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fmnist.data.fashion import FILES
from fmnist.data.idx import IMAGES_MAGIC, LABELS_MAGIC
from fmnist.data.locate import find_data_dir


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is easy to learn: a bright bar at a class-dependent row, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, 28, 28))
    for index, label in enumerate(labels):
        images[index, 2 + 2 * label : 4 + 2 * label, 4:24] = 250
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_dataset(directory: Path, train_count: int = 600, test_count: int = 200, compress: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    splits = {"train": synthetic_split(train_count, 0), "test": synthetic_split(test_count, 1)}
    for split, (images, labels) in splits.items():
        for kind, array, magic in (("images", images, IMAGES_MAGIC), ("labels", labels, LABELS_MAGIC)):
            stem = FILES[f"{split}_{kind}"]
            content = idx_bytes(array, magic)
            if compress:
                (directory / (stem + ".gz")).write_bytes(gzip.compress(content))
            else:
                (directory / stem).write_bytes(content)
    return directory


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A generated Fashion-MNIST-shaped data set: 600 train and 200 test images."""
    return write_dataset(tmp_path / "tiny-data")


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path):
    """Tests must not see the developer's $FMNIST_DATA or write into their cache."""
    real = None
    try:
        real = find_data_dir()
    except Exception:
        pass
    monkeypatch.setenv("FMNIST_REAL_DATA", str(real) if real else "")
    monkeypatch.delenv("FMNIST_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def real_data(monkeypatch) -> Path:
    """The real data set. `make test` installs it; a missing copy fails loudly rather than skipping."""
    import os

    location = os.environ.get("FMNIST_REAL_DATA")
    if not location:
        pytest.fail("the real Fashion-MNIST is needed: run `make test`, or `fmnist data ensure` first")
    return Path(location)
