"""What each augmentation costs per epoch: seconds to produce the 55,000 training images.

Times the training loader alone (slice, normalize, augment; batch 64, no model), once per
option and with all of them, as the median of a few passes. The difference to "none" is what
an option adds to an epoch.

    PYTHONPATH=src python benchmarks/augment_cost.py [--repeats 3] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time

from fmnist.data.augment import build_augmentation
from fmnist.data.fashion import MEAN, STD
from fmnist.data.loader import TensorLoader
from fmnist.data.splits import load_splits

OPTIONS = {
    "none": {},
    "hflip": {"hflip": True},
    "crop_padding 2": {"crop_padding": 2},
    "rotate_degrees 10": {"rotate_degrees": 10.0},
    "erase_prob 0.5": {"erase_prob": 0.5},
    "all four": {"hflip": True, "crop_padding": 2, "rotate_degrees": 10.0, "erase_prob": 0.5},
}


def seconds_per_epoch(loader: TensorLoader) -> float:
    start = time.perf_counter()
    for _images, _labels in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    train = load_splits(args.data_dir, val_size=5000, split_seed=0).train
    baseline = None
    print(f"{'option':<20} {'s / 55,000 images':>18} {'added':>8}")
    for name, chosen in OPTIONS.items():
        settings = {"rotate_degrees": 0.0, "hflip": False, "crop_padding": 0, "erase_prob": 0.0, **chosen}
        augmentation = build_augmentation(**settings, mean=MEAN, std=STD)
        loader = TensorLoader(train, 64, shuffle=True, seed=0, augment=augmentation)
        seconds = statistics.median(seconds_per_epoch(loader) for _ in range(args.repeats))
        baseline = seconds if baseline is None else baseline
        print(f"{name:<20} {seconds:>18.2f} {seconds - baseline:>+8.2f}", flush=True)


if __name__ == "__main__":
    main()
