"""Throughput benchmark: fmnist's fast path and the conventional DataLoader loop, in one process.

Both sides run the very same `train_one_epoch` on the same model and optimizer settings; only where
the batches come from differs. Timings on a shared CPU are only as good as the machine is idle, so
the result also says how busy the other processes kept the machine while it ran.
"""

from __future__ import annotations

import itertools
import os
import resource
import sys
import time
from dataclasses import dataclass

import torch

from fmnist.config import TrainConfig
from fmnist.conventional import conventional_train_loader
from fmnist.data import load_splits
from fmnist.loader import TensorLoader
from fmnist.losses import build_loss
from fmnist.models import count_parameters, create_model
from fmnist.optim import build_optimizer
from fmnist.runtime import resolve_device, seed_everything
from fmnist.train import evaluate, train_one_epoch


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


def timed_training(model, batches, loss_fn, optimizer, warmup: int, steps: int) -> float:
    """Images per second over `steps` batches, after `warmup` batches that are not timed."""
    batches = iter(batches)
    train_one_epoch(model, itertools.islice(batches, warmup), loss_fn, optimizer)
    stats = train_one_epoch(model, itertools.islice(batches, steps), loss_fn, optimizer)
    return stats.images_per_second


def peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def benchmark(config: TrainConfig, warmup: int = 20, steps: int = 200, conventional: bool = True) -> dict:
    """Training and evaluation images/s of `config`'s model and batch size, fast path vs conventional."""
    device = resolve_device(config.device)
    data = load_splits(config.data_dir, config.val_size, config.split_seed)
    meter = LoadMeter().start()

    def fresh_model_and_optimizer():
        seed_everything(config.seed)
        model = create_model(config.model).to(device=device, memory_format=torch.channels_last)
        optimizer = build_optimizer(
            model, config.optimizer, config.lr, config.weight_decay, config.momentum, config.nesterov
        )
        return model, optimizer

    loss_fn = build_loss("ce", config.label_smoothing)
    model, optimizer = fresh_model_and_optimizer()
    train_split = data.train.to(device)
    fast_loader = TensorLoader(train_split, config.batch_size, shuffle=True, seed=config.seed,
                               mean=config.mean, std=config.std)
    result = {
        "model": config.model,
        "parameters": count_parameters(model),
        "batch_size": config.batch_size,
        "device": str(device),
        "timed_batches": steps,
        "train_images_per_second": timed_training(model, fast_loader, loss_fn, optimizer, warmup, steps),
    }
    test_loader = TensorLoader(data.test.to(device), config.eval_batch_size, mean=config.mean, std=config.std)
    evaluate(model, test_loader)  # warm-up
    evaluation = evaluate(model, test_loader)
    result["eval_images_per_second"] = len(evaluation.labels) / evaluation.seconds
    result["eval_seconds_test_set"] = evaluation.seconds
    result["peak_memory_mib"] = peak_memory_mib(device)

    if conventional:
        model, optimizer = fresh_model_and_optimizer()
        model = model.to(memory_format=torch.contiguous_format)  # as the projects ran it
        loader = conventional_train_loader(data.directory, config)
        rate = timed_training(model, _to_device(loader, device), loss_fn, optimizer, warmup, steps)
        result["conventional_train_images_per_second"] = rate
        result["speedup"] = result["train_images_per_second"] / rate
    result["machine"] = meter.stop()
    return result


def _to_device(batches, device):
    for images, labels in batches:
        yield images.to(device), labels.to(device)


def format_result(result: dict) -> str:
    lines = [
        f"model {result['model']} ({result['parameters']:,} parameters), batch {result['batch_size']}, "
        f"{result['device']}, {result['timed_batches']} timed batches",
        f"  training   {result['train_images_per_second']:>10,.0f} images/s  (fmnist fast path)",
    ]
    if "conventional_train_images_per_second" in result:
        lines.append(
            f"  training   {result['conventional_train_images_per_second']:>10,.0f} images/s  "
            f"(torchvision DataLoader, per-image transforms): fmnist is {result['speedup']:.2f}x"
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


THRESHOLDS = (0.90, 0.91, 0.92, 0.93, 0.94, 0.95)


def time_to_accuracy(config: TrainConfig, thresholds: tuple[float, ...] = THRESHOLDS) -> dict:
    """Train `config` and note the training time at which test accuracy first reaches each threshold.

    A benchmark, not model selection: the test set is evaluated after every epoch only to time the
    run, and that evaluation is timed apart and not counted. Training time runs from the first
    batch and adds up the epochs' training loops; start-up and data loading are not in it.
    """
    from fmnist.experiment import build_training  # late: experiment imports the whole package
    from fmnist.optim import SCHEDULER_INTERVAL

    device = resolve_device(config.device)
    data = load_splits(config.data_dir, config.val_size, config.split_seed)
    seed_everything(config.seed)
    parts = build_training(config, data.train.to(device), data.val.to(device), data.test.to(device))
    per_batch = SCHEDULER_INTERVAL[config.scheduler] == "batch"
    meter = LoadMeter().start()
    train_seconds = eval_seconds = 0.0
    curve, reached = [], {}
    for epoch in range(1, config.epochs + 1):
        stats = train_one_epoch(
            parts.model, parts.train_loader, parts.loss_fn, parts.optimizer,
            batch_scheduler=parts.scheduler if per_batch else None,
        )
        if parts.scheduler is not None and not per_batch:
            parts.scheduler.step()
        train_seconds += stats.seconds
        test = evaluate(parts.model, parts.test_loader, config.tta_flip)
        eval_seconds += test.seconds
        curve.append({"epoch": epoch, "train_seconds": train_seconds, "test_accuracy": test.accuracy})
        for threshold in thresholds:
            if threshold not in reached and test.accuracy >= threshold:
                reached[threshold] = train_seconds
        print(f"epoch {epoch}/{config.epochs}  test accuracy {test.accuracy:.4f}  training {train_seconds:.1f} s  "
              f"(+{test.seconds:.2f} s evaluation)", file=sys.stderr, flush=True)
    return {
        "recipe": config.recipe,
        "model": config.model,
        "seed": config.seed,
        "device": str(device),
        "final_test_accuracy": curve[-1]["test_accuracy"],
        "train_seconds": train_seconds,
        "eval_seconds": eval_seconds,
        "seconds_to_accuracy": {f"{threshold:.2f}": reached.get(threshold) for threshold in thresholds},
        "curve": curve,
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
