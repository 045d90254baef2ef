"""Training images/s of affine-cnn's step under one change at a time (issue #4's speed levers).

    python benchmarks/speed_levers.py            # one line per variant

Every variant gets its own model, optimizer and batch stream, trains 20 untimed batches, and is
then timed in turns: one 100-batch window of each variant, then the next round, five rounds in
all. Taking turns matters on this machine: a process's rates drift over its first minutes, and a
variant timed after another would inherit that drift as a false gain. Each line gives the median
of its five windows and its ratio to the baseline's median. Run it on an idle machine.
"""

from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass, field

import torch

from fmnist.data.loader import TensorLoader
from fmnist.data.splits import load_splits
from fmnist.models import create_model
from fmnist.training.loop import Optimization, train_one_epoch

WARMUP, WINDOW, ROUNDS = 20, 100, 5


def pool_before_relu(model: torch.nn.Sequential) -> torch.nn.Sequential:
    """The same function with each ReLU -> MaxPool pair swapped: max and ReLU commute, and the ReLU
    then runs on a quarter of the values."""
    layers = list(model)
    for index in range(len(layers) - 1):
        if isinstance(layers[index], torch.nn.ReLU) and isinstance(layers[index + 1], torch.nn.MaxPool2d):
            layers[index], layers[index + 1] = layers[index + 1], layers[index]
    return torch.nn.Sequential(*layers)


@dataclass
class Variant:
    """One way of running the training step, ready to be timed window by window."""

    batch_size: int = 64
    threads: int = 2
    optimizer_options: dict = field(default_factory=dict)
    compile_model: bool = False
    channels_last: bool = True
    pool_first: bool = False
    autocast: torch.dtype | None = None  # bf16: the forward pass under torch.autocast, as --amp bf16 runs it

    def prepare(self, split) -> float:
        """Build model, optimizer and batches, and train the warm-up batches; returns their seconds."""
        torch.set_num_threads(self.threads)
        torch.manual_seed(0)
        model = create_model("affine-cnn")
        if self.pool_first:
            model = pool_before_relu(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, **self.optimizer_options)
        self.model = torch.compile(model) if self.compile_model else model
        loader = TensorLoader(split, self.batch_size, shuffle=True, seed=0)
        self.batches = itertools.cycle(loader) if self.channels_last else (
            (images.contiguous(), labels) for images, labels in itertools.cycle(loader)
        )
        self.loss_fn = torch.nn.CrossEntropyLoss()
        self.rates = []
        start = time.perf_counter()
        self.window(WARMUP)
        return time.perf_counter() - start

    def window(self, batches: int) -> float:
        torch.set_num_threads(self.threads)
        stats = train_one_epoch(self.model, itertools.islice(self.batches, batches),
                                Optimization(self.loss_fn, self.optimizer, autocast=self.autocast))
        return stats.images_per_second


VARIANTS = {
    "baseline: batch 64, 2 threads, channels-last, AdamW": Variant(),
    "default layout (not channels-last)": Variant(channels_last=False),
    "1 thread": Variant(threads=1),
    "batch 128": Variant(batch_size=128),
    "batch 256": Variant(batch_size=256),
    # On a CPU torch's AdamW defaults to a Python loop over the parameters; these batch them.
    "AdamW foreach=True (one kernel per op for all parameters)": Variant(optimizer_options={"foreach": True}),
    "AdamW fused=True (one kernel for the whole step)": Variant(optimizer_options={"fused": True}),
    "max-pool before ReLU (same function)": Variant(pool_first=True),
    "max-pool before ReLU + AdamW fused=True": Variant(pool_first=True, optimizer_options={"fused": True}),
    "torch.compile": Variant(compile_model=True),
    # Issue 20: with bf16 autocast the convolutions get faster and the optimizer's share grows.
    "bf16 autocast (where the CPU has bf16 instructions)": Variant(autocast=torch.bfloat16),
    "bf16 autocast + AdamW fused=True": Variant(autocast=torch.bfloat16, optimizer_options={"fused": True}),
}

if __name__ == "__main__":
    SPLIT = load_splits(None, 5000, 0).train
    reference = create_model("affine-cnn").eval()
    sample = torch.randn(8, 1, 28, 28)
    torch.testing.assert_close(pool_before_relu(reference)(sample), reference(sample))  # same function
    for variant in VARIANTS.values():
        seconds = variant.prepare(SPLIT)
        if variant.compile_model:
            print(f"torch.compile: the {WARMUP} warm-up batches, compilation included, took {seconds:.1f} s")
    for _ in range(ROUNDS):
        for variant in VARIANTS.values():
            variant.rates.append(variant.window(WINDOW))
    baseline = statistics.median(next(iter(VARIANTS.values())).rates)
    for name, variant in VARIANTS.items():
        median = statistics.median(variant.rates)
        print(f"  {name:<58} {median:>7,.0f} images/s  {median / baseline:5.2f}x  "
              f"(min {min(variant.rates):,.0f}, max {max(variant.rates):,.0f})", flush=True)
