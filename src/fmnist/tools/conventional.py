"""The custom-layer assignment's recipe done the conventional way, as a yardstick for fmnist's fast path.

torchvision's FashionMNIST dataset, per-image ToTensor/Normalize transforms and a DataLoader
(shuffled, no workers: what the projects did). Same model, optimizer, schedule, training images and
loop (`build_training` and `fit`) as `fmnist train`; only where the batches come from differs.

    python -m fmnist.tools.conventional [--epochs 3] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import logging
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from fmnist.data.fashion import FILES
from fmnist.data.locate import file_path
from fmnist.data.splits import load_splits, split_indices
from fmnist.training.build import build_training
from fmnist.training.config import TrainConfig
from fmnist.training.loop import evaluate, fit
from fmnist.training.runtime import seed_everything


def write_torchvision_layout(data_dir: Path, root: Path) -> None:
    """torchvision expects the decompressed files in <root>/FashionMNIST/raw/."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in FILES.values():
        source = file_path(data_dir, stem)
        content = gzip.decompress(source.read_bytes()) if source.suffix == ".gz" else source.read_bytes()
        (raw / stem).write_bytes(content)


def conventional_datasets(data_dir: Path, config: TrainConfig):
    """(train, test) torchvision datasets with per-image transforms; train without the validation images."""
    from torchvision import datasets, transforms

    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((config.mean,), (config.std,))])
    # torchvision reads the files into memory when the dataset is built, so the folder can go at once.
    with tempfile.TemporaryDirectory(prefix="fmnist-torchvision-") as root:
        write_torchvision_layout(data_dir, Path(root))
        full_train = datasets.FashionMNIST(root, train=True, download=False, transform=transform)
        test = datasets.FashionMNIST(root, train=False, download=False, transform=transform)
    # Hold out the same validation images as fmnist, so both train on the same 55,000.
    train_indices, _ = split_indices(len(full_train), config.val_size, config.split_seed)
    return Subset(full_train, train_indices.tolist()), test


def conventional_train_loader(data_dir: Path, config: TrainConfig) -> DataLoader:
    train, _ = conventional_datasets(data_dir, config)
    return DataLoader(train, batch_size=config.batch_size, shuffle=True)


def train_conventionally(config: TrainConfig) -> dict:
    """Train `config` with the conventional batches; the rest is what `fmnist train` builds."""
    started = time.perf_counter()
    data = load_splits(config.data_dir, config.val_size, config.split_seed)
    train_set, test_set = conventional_datasets(data.directory, config)
    seed_everything(config.seed)
    training = build_training(config, data.train, data.val, data.test, amp="none")  # fp32, as the projects ran it
    model = training.model.to(memory_format=torch.contiguous_format)  # as the projects ran it
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True)
    history = fit(model, train_loader, training.val_loader, training.optimization, config.epochs)
    test = evaluate(model, DataLoader(test_set, batch_size=1000))
    train_seconds = sum(row["seconds"] for row in history)
    return {
        "test_accuracy": test.accuracy,
        "train_seconds": train_seconds,
        "images_per_second": config.epochs * len(train_set) / train_seconds,
        "wall_seconds": time.perf_counter() - started,
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    result = train_conventionally(TrainConfig(epochs=args.epochs, data_dir=args.data_dir))
    print(
        f"conventional: test accuracy {result['test_accuracy']:.4f}  train {result['train_seconds']:.1f} s  "
        f"{result['images_per_second']:,.0f} img/s  wall {result['wall_seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
