"""Throughput benchmark: fmnist's fast path and the conventional DataLoader loop, in one process.

Both sides run the very same `train_one_epoch` on the same model and optimizer settings; only where
the batches come from differs. Timings on a shared CPU are only as good as the machine is idle, so
the result also says how busy the other processes kept the machine while it ran.
"""

from __future__ import annotations

import itertools
import logging
import os
import resource
import time
from dataclasses import dataclass

import torch

from fmnist.data.loader import endless
from fmnist.data.splits import load_splits
from fmnist.errors import ConfigError
from fmnist.experiment import check_device_options
from fmnist.models import count_parameters
from fmnist.tools.conventional import conventional_train_loader
from fmnist.training.budget import plan_time_budget
from fmnist.training.build import build_training
from fmnist.training.config import TrainConfig
from fmnist.training.loop import Optimization, evaluate, fit, train_one_epoch
from fmnist.training.replan import BudgetPlanner, planner_for
from fmnist.training.runtime import resolve_amp, resolve_device, seed_everything, tf32_applies

logger = logging.getLogger(__name__)


def cpu_busy_seconds() -> float | None:
    """Seconds all CPUs spent busy since boot, from /proc/stat (None where there is no /proc)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:]]
    except OSError:
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class LoadMeter:
    """How many cores *other* processes kept busy while a benchmark ran."""

    started: float = 0.0
    busy_at_start: float | None = None
    own_at_start: float = 0.0

    def start(self) -> LoadMeter:
        self.started = time.perf_counter()
        self.busy_at_start = cpu_busy_seconds()
        self.own_at_start = own_cpu_seconds()
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self.started
        busy_now = cpu_busy_seconds()
        own = own_cpu_seconds() - self.own_at_start
        others = None
        if busy_now is not None and self.busy_at_start is not None and wall > 0:
            others = max(0.0, (busy_now - self.busy_at_start - own) / wall)
        return {
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "other_processes_cores_busy": others,
            "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        }


def timed_training(model, loader, optimization: Optimization, warmup: int, steps: int) -> tuple[float, int]:
    """(images per second, batches timed) over `steps` batches, after `warmup` batches that are not timed."""
    batches = endless(loader)
    if warmup > 0:
        train_one_epoch(model, itertools.islice(batches, warmup), optimization)
    stats = train_one_epoch(model, itertools.islice(batches, steps), optimization)
    return stats.images_per_second, len(stats.learning_rates)


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def benchmark(config: TrainConfig, warmup: int = 20, steps: int = 200, conventional: bool = True) -> dict:
    """Training and evaluation images/s of `config`'s model and batch size, fast path vs conventional."""
    if steps < 1 or warmup < 0:
        raise ConfigError(f"--steps {steps} and --warmup {warmup}: steps must be at least 1 and warm-up at least 0")
    device = resolve_device(config.device)
    check_device_options(config, device)  # what a run on this device refuses or sets, as `fmnist train` does
    data = load_splits(config.data_dir, config.val_size, config.split_seed, verify=not config.allow_unverified_data)
    meter = LoadMeter().start()
    # The loop's own speed: no augmentation.
    plain = config.replace(hflip=False, alternate_flips=None, rotate_degrees=0.0, crop_padding=0, erase_prob=0.0)

    def fresh_training(amp: str | None = None):
        seed_everything(config.seed)
        return build_training(plain, data.train.to(device), data.val.to(device), data.test.to(device), amp=amp)

    training = fresh_training()
    rate, timed = timed_training(training.model, training.train_loader, training.optimization, warmup, steps)
    result = {
        "model": config.model,
        "parameters": count_parameters(training.model),
        "batch_size": config.batch_size,
        "device": str(device),
        "precision": resolve_amp(config.amp, device),
        "tf32": bool(config.tf32) if tf32_applies(device) else None,
        "timed_batches": timed,
        "train_images_per_second": rate,
    }
    evaluate(training.model, training.test_loader)  # warm-up
    evaluation = evaluate(training.model, training.test_loader)
    result["eval_images_per_second"] = len(evaluation.labels) / evaluation.seconds
    result["eval_seconds_test_set"] = evaluation.seconds
    result["peak_memory_mib"] = peak_memory_mib(device)

    if conventional:
        training = fresh_training(amp="none")  # fp32, as the projects ran it
        model = training.model.to(memory_format=torch.contiguous_format)  # as the projects ran it
        loader = conventional_train_loader(data.directory, plain)
        rate, _ = timed_training(model, to_device(loader, device), training.optimization, warmup, steps)
        result["conventional_train_images_per_second"] = rate
        result["speedup"] = result["train_images_per_second"] / rate
    result["machine"] = meter.stop()
    return result


def to_device(loader, device):
    """A DataLoader's CPU batches moved to `device`, pass after pass."""

    class OnDevice:
        def __iter__(self):
            for images, labels in loader:
                yield images.to(device), labels.to(device)

    return OnDevice()


def format_result(result: dict) -> str:
    lines = [
        f"model {result['model']} ({result['parameters']:,} parameters), batch {result['batch_size']}, "
        f"{result['device']}, {result['timed_batches']} timed batches",
        f"  training   {result['train_images_per_second']:>10,.0f} images/s  (fmnist fast path, "
        f"{PRECISION_NAMES[result['precision']]}{', TF32 on' if result.get('tf32') else ''})",
    ]
    if "conventional_train_images_per_second" in result:
        lines.append(
            f"  training   {result['conventional_train_images_per_second']:>10,.0f} images/s  "
            f"(torchvision DataLoader, per-image transforms, fp32): fmnist is {result['speedup']:.2f}x"
        )
    lines.append(
        f"  evaluation {result['eval_images_per_second']:>10,.0f} images/s  "
        f"({result['eval_seconds_test_set']:.2f} s for the test set)"
    )
    lines.append(f"  peak memory {result['peak_memory_mib']:,.0f} MiB")
    machine = result["machine"]
    others = machine["other_processes_cores_busy"]
    busy = "unknown" if others is None else f"{others:.2f} of {machine['cores']} cores"
    load = machine["loadavg_1min"]
    lines.append(f"  other processes kept {busy} busy during the run (1-min load average {load:.2f})")
    return "\n".join(lines)


PRECISION_NAMES = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast"}

THRESHOLDS = (0.90, 0.91, 0.92, 0.93, 0.94, 0.95)


class TestTimer:
    """A recorder for fit that evaluates the test set after each epoch, timed apart from training."""

    def __init__(self, model, test_loader, flip_tta: bool, thresholds: tuple[float, ...], epochs: int,
                 planner: BudgetPlanner | None = None, shift_tta: bool = False):
        self.model, self.test_loader, self.flip_tta, self.shift_tta = model, test_loader, flip_tta, shift_tta
        self.planner = planner  # a time budget's: the test evaluations are not the budget's time
        self.thresholds, self.epochs = thresholds, epochs
        self.history: list[dict] = []
        self.train_seconds = self.eval_seconds = 0.0
        self.curve: list[dict] = []
        self.reached: dict[float, float] = {}

    def end_epoch(self, row: dict, learning_rates: list[float], is_best: bool) -> None:
        self.history.append(row)
        self.train_seconds += row["seconds"]
        test = evaluate(self.model, self.test_loader, self.flip_tta, self.shift_tta)
        self.eval_seconds += test.seconds
        if self.planner is not None:
            self.planner.leave_out(test.seconds)
            self.epochs = self.planner.epochs
        self.curve.append({"epoch": row["epoch"], "train_seconds": self.train_seconds, "test_accuracy": test.accuracy})
        for threshold in self.thresholds:
            if threshold not in self.reached and test.accuracy >= threshold:
                self.reached[threshold] = self.train_seconds
        logger.info("epoch %d/%d  test accuracy %.4f  training %.1f s  (+%.2f s evaluation)",
                    row["epoch"], self.epochs, test.accuracy, self.train_seconds, test.seconds)


def time_to_accuracy(config: TrainConfig, thresholds: tuple[float, ...] = THRESHOLDS) -> dict:
    """Train `config` and note the training time at which test accuracy first reaches each threshold.

    A benchmark, not model selection: the test set is evaluated after every epoch only to time the
    run, and that evaluation is timed apart and not counted. Training time runs from the first
    batch and adds up the epochs' training loops; start-up, data loading and the validation after
    each epoch are not in it. The loop is `fit`, as in `fmnist train`. With a time budget
    (config.time_budget) the steps are planned, and planned again at each epoch's end, as `fmnist train`
    plans them; the test evaluations are left out of the budget's time.
    """
    device = resolve_device(config.device)
    check_device_options(config, device)
    data = load_splits(config.data_dir, config.val_size, config.split_seed, verify=not config.allow_unverified_data)
    splits = (data.train.to(device), data.val.to(device), data.test.to(device))
    meter = LoadMeter().start()
    plan = plan_time_budget(config, *splits) if config.time_budget is not None else None
    seed_everything(config.seed, config.deterministic)
    training = build_training(config, *splits, total_steps=plan.total_steps if plan else None)
    epochs = plan.epochs if plan else config.epochs
    planner = planner_for(plan, training) if plan else None
    timer = TestTimer(training.model, training.test_loader, config.tta_flip, thresholds, epochs, planner,
                      shift_tta=config.tta_shift)
    fit(training.model, training.train_loader, training.val_loader, training.optimization, epochs,
        flip_tta=config.tta_flip, recorder=timer, planner=planner)
    return {
        "recipe": config.recipe,
        "model": config.model,
        "seed": config.seed,
        "device": str(device),
        "time_plan": plan.to_dict() if plan else None,
        "budget": planner.record() if planner else None,
        "final_test_accuracy": timer.curve[-1]["test_accuracy"],
        "train_seconds": timer.train_seconds,
        "eval_seconds": timer.eval_seconds,
        "seconds_to_accuracy": {f"{threshold:.2f}": timer.reached.get(threshold) for threshold in thresholds},
        "curve": timer.curve,
        "machine": meter.stop(),
    }


def summarize_seeds(results: list[dict]) -> dict:
    """Mean ± sample std over seeds of the final accuracy and of each time to accuracy."""

    def mean_std(values: list[float]) -> dict | None:
        if not values:
            return None
        mean = sum(values) / len(values)
        variance = sum((value - mean) ** 2 for value in values) / (len(values) - 1) if len(values) > 1 else 0.0
        return {"mean": mean, "std": variance**0.5, "runs": len(values)}

    thresholds = results[0]["seconds_to_accuracy"]
    return {
        "seeds": [result["seed"] for result in results],
        "final_test_accuracy": mean_std([result["final_test_accuracy"] for result in results]),
        "train_seconds": mean_std([result["train_seconds"] for result in results]),
        "seconds_to_accuracy": {
            threshold: mean_std([
                result["seconds_to_accuracy"][threshold] for result in results
                if result["seconds_to_accuracy"][threshold] is not None
            ])
            for threshold in thresholds
        },
    }


def format_time_to_accuracy(summary: dict) -> str:
    final = summary["final_test_accuracy"]
    lines = [
        f"seeds {summary['seeds']}: final test accuracy {final['mean']:.4f} ± {final['std']:.4f}, "
        f"training {summary['train_seconds']['mean']:.1f} ± {summary['train_seconds']['std']:.1f} s"
    ]
    for threshold, seconds in summary["seconds_to_accuracy"].items():
        if seconds is None:
            lines.append(f"  test accuracy ≥ {threshold}: not reached")
        else:
            lines.append(
                f"  test accuracy ≥ {threshold}: {seconds['mean']:.1f} ± {seconds['std']:.1f} s of training "
                f"({seconds['runs']} of {len(summary['seeds'])} seeds reached it)"
            )
    return "\n".join(lines)
