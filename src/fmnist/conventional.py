"""Seed 000's recipe done the conventional way, as a yardstick for fmnist's fast path.

torchvision's FashionMNIST dataset, per-image ToTensor/Normalize transforms and a DataLoader
(batch 64, shuffled, no workers: what the projects did). Same model, optimizer, schedule and
training images as `fmnist train`; only the data path differs.

    python -m fmnist.conventional [--epochs 3] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from fmnist.config import TrainConfig
from fmnist.data import FILES, MEAN, STD, file_path, find_data_dir, split_indices
from fmnist.models import create_model
from fmnist.runtime import seed_everything


def torchvision_root(data_dir: Path, scratch: Path) -> Path:
    """torchvision expects decompressed files in <root>/FashionMNIST/raw/."""
    raw = scratch / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for stem in FILES.values():
        source = file_path(data_dir, stem)
        content = gzip.decompress(source.read_bytes()) if source.suffix == ".gz" else source.read_bytes()
        (raw / stem).write_bytes(content)
    return scratch


def train_conventionally(config: TrainConfig) -> dict:
    from torchvision import datasets, transforms

    started = time.perf_counter()
    data_dir = find_data_dir(config.data_dir)
    with tempfile.TemporaryDirectory() as scratch:
        root = torchvision_root(data_dir, Path(scratch))
        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])
        full_train = datasets.FashionMNIST(root, train=True, download=False, transform=transform)
        test_set = datasets.FashionMNIST(root, train=False, download=False, transform=transform)
        # Hold out the same 5,000 validation images as fmnist, so both train on the same 55,000.
        train_indices, _ = split_indices(len(full_train), config.val_size, config.split_seed)
        train_indices = train_indices.tolist()
        seed_everything(config.seed)
        train_loader = DataLoader(Subset(full_train, train_indices), batch_size=config.batch_size, shuffle=True)
        test_loader = DataLoader(test_set, batch_size=1000)

        model = create_model(config.model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.max_lr, epochs=config.epochs, steps_per_epoch=len(train_loader)
        )
        loss_fn = nn.CrossEntropyLoss()
        train_seconds = 0.0
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            model.train()
            for images, labels in train_loader:
                loss = loss_fn(model(images), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
            seconds = time.perf_counter() - epoch_start
            train_seconds += seconds
            rate = len(train_indices) / seconds
            print(f"epoch {epoch}/{config.epochs}  {seconds:.1f} s  {rate:,.0f} img/s", flush=True)
        model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in test_loader:
                correct += (model(images).argmax(1) == labels).sum().item()
    return {
        "test_accuracy": correct / len(test_set),
        "train_seconds": train_seconds,
        "images_per_second": config.epochs * len(train_indices) / train_seconds,
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
