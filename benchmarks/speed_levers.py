"""Training images/s of affine-cnn's step under one change at a time (issue #4's speed levers).

    python benchmarks/speed_levers.py            # two rounds of one line per variant

Each variant trains 20 untimed batches, then three timed windows of 100 batches on the real
training split with the fast path (in-memory batches), and reports their median. The whole list
runs twice in one process: the rates of a process rise over its first minutes, so only variants
of the same round are compared, and the second round is the steadier. Run it on an idle machine.
"""

from __future__ import annotations

import itertools
import statistics
import time

import torch

from fmnist.data import load_splits
from fmnist.loader import TensorLoader
from fmnist.models import create_model
from fmnist.train import train_one_epoch

WARMUP, WINDOW, WINDOWS = 20, 100, 3


def images_per_second(batch_size=64, threads=2, optimizer_options=None, compile_model=False, channels_last=True):
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = create_model("affine-cnn")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, **(optimizer_options or {}))
    compile_seconds = 0.0
    if compile_model:
        model = torch.compile(model)
    loader = TensorLoader(SPLIT, batch_size, shuffle=True, seed=0)
    batches = itertools.cycle(loader) if channels_last else (
        (images.contiguous(), labels) for images, labels in itertools.cycle(loader)
    )
    loss_fn = torch.nn.CrossEntropyLoss()
    start = time.perf_counter()
    train_one_epoch(model, itertools.islice(batches, WARMUP), loss_fn, optimizer)
    if compile_model:
        compile_seconds = time.perf_counter() - start
    rates = [
        train_one_epoch(model, itertools.islice(batches, WINDOW), loss_fn, optimizer).images_per_second
        for _ in range(WINDOWS)
    ]
    return statistics.median(rates), min(rates), max(rates), compile_seconds


VARIANTS = {
    "baseline: batch 64, 2 threads, channels-last, foreach AdamW": {},
    "default layout (not channels-last)": {"channels_last": False},
    "1 thread": {"threads": 1},
    "batch 128": {"batch_size": 128},
    "batch 256": {"batch_size": 256},
    "AdamW fused=True": {"optimizer_options": {"fused": True}},
    "AdamW foreach=False (a loop over parameters)": {"optimizer_options": {"foreach": False}},
    "torch.compile": {"compile_model": True},
}

if __name__ == "__main__":
    SPLIT = load_splits(None, 5000, 0).train
    for round_number in (1, 2):
        print(f"round {round_number}")
        for name, options in VARIANTS.items():
            median, low, high, compile_seconds = images_per_second(**options)
            extra = f"  (warm-up incl. compilation {compile_seconds:.1f} s)" if options.get("compile_model") else ""
            print(f"  {name:<60} {median:>7,.0f} images/s  (min {low:,.0f}, max {high:,.0f}){extra}", flush=True)
