"""Issue 29's averaging levers, measured in one run per seed: SWA over the last part of the schedule
(with BatchNorm's statistics averaged, or computed again afterwards) and moving averages of the weights,
against the weights the run ends with.

    python benchmarks/weight_averages.py --recipe best --epochs 11 --seeds 42 43 44
    python benchmarks/weight_averages.py --epochs 1 --seeds 1 --limit-batches 5   # a smoke test of the script

Every average is updated after each step of the same run, so all of them see the same training; their
cost (a few element-wise operations over the weights per step, and for "SWA, BN again" one forward pass
over the training images at the end) is printed, so that what they cost in a time budget can be counted.
Selection is on the validation split; the test figures are printed beside them, not chosen on. A lever
measured, not a feature: BENCHMARKS.md (issue 29) quotes the figures.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn, get_swa_multi_avg_fn, update_bn

from fmnist.data.splits import load_splits
from fmnist.training.build import MovingAverage, build_training
from fmnist.training.config import build_config
from fmnist.training.loop import evaluate, fit
from fmnist.training.runtime import seed_everything

SWA_STARTS = (0.5, 0.75, 0.9)  # the share of the steps after which SWA averages
EMA_DECAYS = (0.998, 0.9995)


def equal_average(averages: list, currents: list, updates) -> None:
    """SWA's running mean for the weights and BatchNorm's float statistics; its batch counter (an integer,
    which torch's mean cannot take) is copied."""
    if averages[0].is_floating_point():
        get_swa_multi_avg_fn()(averages, currents, updates)
    else:
        for average, current in zip(averages, currents, strict=True):
            average.copy_(current)


class Averages:
    """The averages a run keeps, each updated after every step once its start is passed."""

    def __init__(self, model: torch.nn.Module, total_steps: int):
        self.model, self.step, self.seconds = model, 0, 0.0
        self.averages = {f"SWA from {share:.0%}": (MovingAverage(model, multi_avg_fn=equal_average, use_buffers=True),
                                                   round(share * total_steps)) for share in SWA_STARTS}
        self.averages |= {f"EMA {decay}": (MovingAverage(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
                                                         use_buffers=True), 0) for decay in EMA_DECAYS}

    def __call__(self, loss: torch.Tensor, images: int) -> None:  # fit's on_step
        started = time.perf_counter()
        self.step += 1
        for average, start in self.averages.values():
            if self.step > start:
                average.update_parameters(self.model)
        self.seconds += time.perf_counter() - started


def one_seed(recipe: str, epochs: int, seed: int, limit_batches: int | None) -> dict[str, tuple[float, float]]:
    config = build_config(overrides={"recipe": recipe, "epochs": epochs, "seed": seed, "limit_batches": limit_batches})
    seed_everything(config.seed, config.deterministic)
    data = load_splits(config.data_dir, config.val_size, config.split_seed)
    training = build_training(config, data.train, data.val, data.test)
    averages = Averages(training.model, epochs * len(training.train_loader))
    started = time.perf_counter()
    fit(training.model, training.train_loader, training.val_loader, training.optimization, epochs,
        flip_tta=config.tta_flip, on_step=averages)
    print(f"  seed {seed}: trained in {time.perf_counter() - started:.0f} s; updating the {len(averages.averages)} "
          f"averages took {averages.seconds:.1f} s of it")

    def scores(model) -> tuple[float, float]:
        return (evaluate(model, training.val_loader, config.tta_flip).accuracy,
                evaluate(model, training.test_loader, config.tta_flip).accuracy)

    figures = {"the run's last weights": scores(training.model)}
    for name, (average, _) in averages.averages.items():
        figures[name] = scores(average.module)
    for share in SWA_STARTS:  # the same average, BatchNorm's statistics computed again over the training images
        average = averages.averages[f"SWA from {share:.0%}"][0]
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=training.optimization.autocast,
                            enabled=training.optimization.autocast is not None):
            update_bn(((images, labels) for images, labels in training.train_loader), average.module)
        figures[f"SWA from {share:.0%}, BN again"] = scores(average.module)
        print(f"  BatchNorm statistics again for SWA from {share:.0%}: {time.perf_counter() - started:.1f} s")
    for name, (validation, test) in figures.items():
        print(f"  seed {seed}  {name:<28} validation {validation:.4f}  test {test:.4f}")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="best")
    parser.add_argument("--epochs", type=int, required=True, help="the epochs the recipe's budget plans")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--limit-batches", type=int, help="training batches per epoch (a smoke test)")
    args = parser.parse_args()
    results = [one_seed(args.recipe, args.epochs, seed, args.limit_batches) for seed in args.seeds]
    print(f"\n{args.recipe}, {args.epochs} epochs, seeds {' '.join(map(str, args.seeds))}: mean ± std")
    for name in results[0]:
        for index, split in enumerate(("validation", "test")):
            values = [figures[name][index] for figures in results]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            print(f"  {name:<28} {split:<10} {statistics.mean(values):.4f} ± {spread:.4f}")


if __name__ == "__main__":
    main()
