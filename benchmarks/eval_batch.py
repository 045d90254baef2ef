"""Seconds to evaluate the 10,000 test images with affine-cnn, by evaluation batch size.

    python benchmarks/eval_batch.py

Evaluation is memory-bound here: the first block's output alone is 32 x 28 x 28 floats (100 KB)
per image. A batch of 1,000 makes 100 MB of it, far beyond the CPU's caches; a batch of a few
hundred keeps it within them. Median of five passes per batch size, alternating, after one
warm-up pass each. Run it on an idle machine.
"""

from __future__ import annotations

import statistics

import torch

from fmnist.data.loader import TensorLoader
from fmnist.data.splits import load_splits
from fmnist.models import create_model
from fmnist.training.loop import evaluate

BATCH_SIZES = (64, 128, 256, 512, 1000, 2500)
PASSES = 5

if __name__ == "__main__":
    torch.manual_seed(0)
    model = create_model("affine-cnn").to(memory_format=torch.channels_last)
    test = load_splits(None, 5000, 0).test
    loaders = {size: TensorLoader(test, size) for size in BATCH_SIZES}
    seconds = {size: [] for size in BATCH_SIZES}
    for loader in loaders.values():
        evaluate(model, loader)
    for _ in range(PASSES):
        for size, loader in loaders.items():
            seconds[size].append(evaluate(model, loader).seconds)
    for size, values in seconds.items():
        print(f"  batch {size:>5}: {statistics.median(values):.3f} s for the test set "
              f"(min {min(values):.3f}, max {max(values):.3f})")
