"""From a config to a finished run: the wiring between data, model, loop and run folder."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fmnist.augment import build_augmentation
from fmnist.config import EVAL_BATCH_SIZE, TrainConfig
from fmnist.data import Split, find_data_dir, load_splits, read_split
from fmnist.faults import stop_after_step
from fmnist.loader import TensorLoader
from fmnist.losses import build_loss
from fmnist.models import count_parameters, create_model
from fmnist.optim import SCHEDULER_INTERVAL, build_optimizer, build_scheduler
from fmnist.report import write_report
from fmnist.resume import restore_run
from fmnist.runs import Run, checkpoint_path, load_checkpoint, load_weights, model_from_checkpoint
from fmnist.runtime import resolve_device, seed_everything
from fmnist.tensorboard_log import TensorBoardLog, require_tensorboard
from fmnist.train import EvalResult, evaluate, fit


@dataclass
class RunResult:
    path: Path
    test_accuracy: float
    test_loss: float
    best_epoch: int
    wall_seconds: float


@dataclass
class TrainingParts:
    """What the training loop needs, built from one config."""

    model: torch.nn.Module
    train_loader: TensorLoader
    val_loader: TensorLoader
    test_loader: TensorLoader
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    loss_fn: torch.nn.Module


def build_training(config: TrainConfig, train_split: Split, val_split: Split, test_split: Split) -> TrainingParts:
    """Model, loaders, optimizer, schedule and loss as `config` says, on the splits' device."""
    device = train_split.images.device
    # channels_last: the convolutions' fast layout on CPUs (and tensor cores on GPUs).
    model_options = {"pretrained": config.pretrained} if config.pretrained else {}
    model = create_model(config.model, **model_options).to(device=device, memory_format=torch.channels_last)
    # Augmentation on the training batches only: validation and test see the images as they are.
    augmentation = build_augmentation(
        config.rotate_degrees, config.hflip, config.crop_padding, config.erase_prob, config.mean, config.std
    )
    train_loader = TensorLoader(
        train_split, config.batch_size, shuffle=True, seed=config.seed,
        mean=config.mean, std=config.std, augment=augmentation, limit_batches=config.limit_batches,
    )
    optimizer = build_optimizer(
        model, config.optimizer, config.lr, config.weight_decay, config.momentum, config.nesterov
    )
    return TrainingParts(
        model=model,
        train_loader=train_loader,
        val_loader=TensorLoader(val_split, config.eval_batch_size, mean=config.mean, std=config.std),
        test_loader=TensorLoader(test_split, config.eval_batch_size, mean=config.mean, std=config.std),
        optimizer=optimizer,
        scheduler=build_scheduler(
            optimizer, config.scheduler, config.epochs, len(train_loader),
            config.max_lr, config.step_size, config.gamma,
        ),
        loss_fn=build_loss(config.loss, config.label_smoothing, config.focal_gamma, config.focal_alpha),
    )


def train_from_config(config: TrainConfig, command: list[str], resume: Path | None = None) -> RunResult:
    """Train, validate every epoch, then test the best epoch's weights once.

    With `resume` (a run folder, see resume.py), continue that run after its last completed epoch.
    """
    started = time.perf_counter()
    if config.tensorboard:
        require_tensorboard()  # fail now, not after training
    device = resolve_device(config.device)
    data = load_splits(config.data_dir, config.val_size, config.split_seed)
    print(f"data: {data.directory} (train {len(data.train):,}, val {len(data.val):,}, test {len(data.test):,})")
    # Seed after loading so the same seed gives the same run whatever the data path did.
    seed_everything(config.seed)
    train_split, val_split, test_split = data.train.to(device), data.val.to(device), data.test.to(device)

    parts = build_training(config, train_split, val_split, test_split)
    model, optimizer, scheduler, train_loader = parts.model, parts.optimizer, parts.scheduler, parts.train_loader

    if resume is None:
        run, start_epoch = Run.create(config, device, command), 1
    else:
        run, start_epoch = restore_run(resume, config, model, optimizer, scheduler, train_loader)
        print(f"resuming {run.path} at epoch {start_epoch}/{config.epochs}")
    run.tensorboard = TensorBoardLog(run.path) if config.tensorboard else None
    print(f"run: {run.path}  model {config.model} ({count_parameters(model):,} parameters) on {device}")
    with stop_after_step() as stop:  # Ctrl-C ends training after the current step
        history = fit(
            model, train_loader, parts.val_loader, parts.loss_fn, optimizer,
            scheduler, SCHEDULER_INTERVAL[config.scheduler], config.epochs, run, start_epoch, stop,
            flip_tta=config.tta_flip,
        )

    best = load_checkpoint(run.path / "best.pt")
    load_weights(model, best["model"], str(run.path / "best.pt"))
    test = evaluate(model, parts.test_loader, config.tta_flip)
    best_epoch = best["epoch"]
    wall_seconds = time.perf_counter() - started
    run.write_summary({
        "model": config.model,
        "parameters": count_parameters(model),
        "epochs": config.epochs,
        "best_epoch": best_epoch,
        "best_val_accuracy": history[best_epoch - 1]["val_accuracy"],
        "test_loss": test.loss,
        "test_accuracy": test.accuracy,
        "test_per_class_accuracy": test.per_class_accuracy(),
        "train_seconds": sum(row["seconds"] for row in history),
        "wall_seconds": wall_seconds,
        "images_per_second": sum(row["images_per_second"] for row in history) / len(history),
        "device": str(device),
    })
    report_path = write_report(run.path, model, test_split, test, config)
    print(f"report: {report_path}")
    if run.tensorboard is not None:
        run.tensorboard.log_confusion_matrix(test, best_epoch)
        run.tensorboard.close()
    return RunResult(run.path, test.accuracy, test.loss, best_epoch, wall_seconds)


@dataclass
class CheckpointEvaluation:
    path: Path
    state: dict
    config: TrainConfig
    model: torch.nn.Module
    test_split: Split
    result: EvalResult


def evaluate_checkpoint(
    checkpoint: str | Path, data_dir: str | None = None, device_name: str = "auto", batch_size: int = EVAL_BATCH_SIZE
) -> CheckpointEvaluation:
    """Rebuild a checkpoint's model and evaluate it on the test split, normalized as in its training."""
    path = checkpoint_path(checkpoint)
    state = load_checkpoint(path)
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    # Keys a newer fmnist wrote are ignored: the model and its normalization are all that is needed.
    config = TrainConfig(**{key: value for key, value in state["config"].items() if key in known})
    device = resolve_device(device_name)
    model = model_from_checkpoint(state, path).to(device=device, memory_format=torch.channels_last)
    test_split = read_split(find_data_dir(data_dir or config.data_dir), "test").to(device)
    result = evaluate(model, TensorLoader(test_split, batch_size, mean=config.mean, std=config.std), config.tta_flip)
    return CheckpointEvaluation(path, state, config, model, test_split, result)
