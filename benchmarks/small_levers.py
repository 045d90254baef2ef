"""Two levers that cost little to check: `inference_mode` against `no_grad`, and `.item()` per step.

    python benchmarks/small_levers.py

1. Evaluation of the 10,000 test images with affine-cnn at batch 256, the forward passes under
   `torch.no_grad()` or `torch.inference_mode()` (what `fmnist.training.loop.evaluate` uses); median of
   five passes each, taken in turns.
2. What `loss.item()` costs per training step on a CPU, where `train_one_epoch` calls it to stop
   at the first non-finite loss: on a GPU it would make the host wait for the device every step,
   which is why the loop calls it only on a CPU. Timed over 100,000 calls on a real loss tensor.
Run it on an idle machine.
"""

from __future__ import annotations

import statistics
import time

import torch

from fmnist.data.loader import TensorLoader
from fmnist.data.splits import load_splits
from fmnist.models import create_model

PASSES, ITEM_CALLS = 5, 100_000


def forward_seconds(model, loader, context) -> float:
    start = time.perf_counter()
    with context():
        for images, _ in loader:
            model(images).argmax(dim=1)
    return time.perf_counter() - start


if __name__ == "__main__":
    torch.manual_seed(0)
    model = create_model("affine-cnn").to(memory_format=torch.channels_last).eval()
    loader = TensorLoader(load_splits(None, 5000, 0).test, 256)
    contexts = {"torch.no_grad()": torch.no_grad, "torch.inference_mode()": torch.inference_mode}
    seconds = {name: [] for name in contexts}
    for context in contexts.values():
        forward_seconds(model, loader, context)  # warm-up
    for _ in range(PASSES):
        for name, context in contexts.items():
            seconds[name].append(forward_seconds(model, loader, context))
    print("evaluation of the test set at batch 256:")
    for name, values in seconds.items():
        print(f"  {name:<24} {statistics.median(values):.3f} s (min {min(values):.3f}, max {max(values):.3f})")

    images, labels = next(iter(TensorLoader(load_splits(None, 5000, 0).train, 64)))
    loss = torch.nn.functional.cross_entropy(model.train()(images), labels)
    start = time.perf_counter()
    for _ in range(ITEM_CALLS):
        loss.item()
    per_call = (time.perf_counter() - start) / ITEM_CALLS
    print(f"loss.item() on the CPU: {per_call * 1e6:.2f} µs per call")
