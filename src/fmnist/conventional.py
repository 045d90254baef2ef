"""Seed 000's recipe done the conventional way, as a yardstick for fmnist's fast path.

torchvision's FashionMNIST dataset, per-image ToTensor/Normalize transforms and a DataLoader
(shuffled, no workers: what the projects did). Same model, optimizer, schedule, training images and
`train_one_epoch` as `fmnist train`; only where the batches come from differs.

    python -m fmnist.conventional [--epochs 3] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from fmnist.config import TrainConfig
from fmnist.data import FILES, file_path, find_data_dir, split_indices
from fmnist.losses import build_loss
from fmnist.models import create_model
from fmnist.optim import build_optimizer, build_scheduler
from fmnist.runtime import seed_everything
from fmnist.train import train_one_epoch


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
    started = time.perf_counter()
    train_set, test_set = conventional_datasets(find_data_dir(config.data_dir), config)
    seed_everything(config.seed)
    train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True)
    model = create_model(config.model)
    optimizer = build_optimizer(model, config.optimizer, config.lr, config.weight_decay)
    scheduler = build_scheduler(optimizer, config.scheduler, config.epochs, len(train_loader), config.max_lr)
    loss_fn = build_loss("ce", config.label_smoothing)
    train_seconds = 0.0
    for epoch in range(1, config.epochs + 1):
        stats = train_one_epoch(model, train_loader, loss_fn, optimizer, batch_scheduler=scheduler)
        train_seconds += stats.seconds
        print(f"epoch {epoch}/{config.epochs}  {stats.seconds:.1f} s  {stats.images_per_second:,.0f} img/s", flush=True)
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in DataLoader(test_set, batch_size=1000):
            correct += (model(images).argmax(1) == labels).sum().item()
    return {
        "test_accuracy": correct / len(test_set),
        "train_seconds": train_seconds,
        "images_per_second": config.epochs * len(train_set) / train_seconds,
        "wall_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    result = train_conventionally(TrainConfig(epochs=args.epochs, data_dir=args.data_dir).validate())
    print(
        f"conventional: test accuracy {result['test_accuracy']:.4f}  train {result['train_seconds']:.1f} s  "
        f"{result['images_per_second']:,.0f} img/s  wall {result['wall_seconds']:.1f} s"
    )


if __name__ == "__main__":
    main()
