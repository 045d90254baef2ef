"""From a config to a finished run folder: `train(config)` and `resume(run_dir)`.

This is the wiring between data, model, loop and run folder; the loop itself is training/loop.py.
Nothing is printed: progress goes to the `fmnist` loggers (the CLI shows them), and a progress bar
is drawn only with `progress=True`.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from fmnist.data.splits import DataSplits, load_splits
from fmnist.errors import CheckpointError, ConfigError, FmnistError
from fmnist.faults import StopRequest, TrainingInterrupted, stop_after_step
from fmnist.files import atomic_write_json, check_writable, exclusive_lock
from fmnist.models import count_parameters, create_model
from fmnist.reports.report import write_report
from fmnist.reports.tensorboard_log import TensorBoardLog, require_tensorboard
from fmnist.runs.calibration import fit_run_temperature
from fmnist.runs.checkpoint import load_checkpoint, load_weights
from fmnist.runs.folder import create_run_folder, environment, read_saved_config, write_config, write_summary
from fmnist.runs.recorder import RunRecorder
from fmnist.runs.resume import ResumePoint, config_to_resume, remove_leftovers, restore_run
from fmnist.training.budget import TimePlan, overrun_line, plan_time_budget
from fmnist.training.build import Training, build_training
from fmnist.training.calibration import calibration_record, scaled_probabilities
from fmnist.training.config import TrainConfig
from fmnist.training.distributed import (
    DistributedRecorder,
    Processes,
    ShardedBatches,
    agreed_stop,
    is_main,
    join_processes,
    on_main,
    together,
    wrap_model,
)
from fmnist.training.loop import EpochRecorder, EvalResult, NonFiniteLossError, evaluate, fit
from fmnist.training.progress import WithProgress
from fmnist.training.runtime import resolve_amp, resolve_device, seed_everything

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a finished run reports; everything else is in its folder (`path`)."""

    path: Path
    test_accuracy: float
    test_loss: float
    best_epoch: int
    best_val_accuracy: float
    wall_seconds: float


def train(config: TrainConfig, *, progress: bool = False, details: dict | None = None,
          after_epoch: Callable[[dict], None] | None = None) -> RunResult:
    """Train `config` in a new run folder, validate every epoch, then test the best epoch's weights once.

    `progress` draws a bar per epoch on stderr. `details` (e.g. the command that started the run)
    are recorded in config.json. `after_epoch(row)` is called once each epoch is saved (it may
    raise to stop the run). Stops with TrainingInterrupted on Ctrl-C or SIGTERM (the folder can
    be resumed) and NonFiniteLossError when the loss turns NaN. Under torchrun every process calls
    this; rank 0 alone writes the folder, and every process returns the same result.
    """
    started = time.perf_counter()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train() takes a TrainConfig, not {type(config).__name__}")
    config.check_files()
    if config.tensorboard:
        require_tensorboard()  # fail now, not after training
    with join_processes(config) as group:  # None in one process, see training/distributed.py
        device = group.device if group else resolve_device(config.device)
        check_device_options(config, device)
        data = together(group, lambda: load_data(config))
        check_batch_statistics(config, len(data.train), group.world_size if group else 1)
        resolved = resolve_run(config, data, device, group)
        path = on_main(group, lambda: create_run_folder(config))
        with main_holds_lock(path, "run folder", group):
            try:
                on_main(group, lambda: write_config(path, config, {
                    **(details or {}), "data": data_record(data), "environment": environment(device),
                    "options_given": {name: getattr(config, name) for name in sorted(config.given)},
                    "resolved": resolved, **({"processes": group.world_size} if group else {}),
                }))
                return run(path, config, data, device, None, progress, started, group, after_epoch)
            except (FmnistError, OSError) as error:
                diverged = isinstance(error, NonFiniteLossError)  # a result worth keeping (a sweep's too-high rate)
                if is_main(group) and not diverged and not (path / "metrics.csv").exists():
                    shutil.rmtree(path, ignore_errors=True)  # nothing recorded: leave nothing behind
                    if isinstance(error, FmnistError):
                        error.args = (f"{error}; {path} was removed, as it recorded nothing",)
                raise


def resume(run_dir: str | Path, *, progress: bool = False, **changes) -> RunResult:
    """Continue the stopped run in `run_dir` after its last completed epoch, with its saved config.

    Only `device` and `data_dir` may change (`changes`); anything else is refused. Under torchrun,
    with any number of processes.
    """
    started = time.perf_counter()
    path = Path(run_dir)
    config = config_to_resume(path, changes)
    if config.tensorboard:
        require_tensorboard()
    with join_processes(config) as group:
        # A read-only folder fails now, not after an epoch of training.
        on_main(group, lambda: check_writable(path, "--resume"))
        device = group.device if group else resolve_device(config.device)
        check_device_options(config, device)
        with main_holds_lock(path, "--resume", group):
            on_main(group, lambda: remove_leftovers(path, checkpoints_too=False))
            data = together(group, lambda: load_data(config))
            return run(path, config, data, device, path, progress, started, group)


@contextmanager
def main_holds_lock(path: Path, what: str, group: Processes | None) -> Iterator[None]:
    """The run folder's lock, held by the process that writes the folder (rank 0 under torchrun)."""
    with ExitStack() as held:
        on_main(group, lambda: held.enter_context(exclusive_lock(path, what)))
        yield


def check_device_options(config: TrainConfig, device: torch.device) -> None:
    if config.amp == "fp16" and device.type != "cuda":
        raise ConfigError(f"--amp fp16: needs a CUDA device, and this run is on {device}; use --amp bf16 or none",
                          "amp")


def resolve_run(config: TrainConfig, data: DataSplits, device: torch.device, group: Processes | None) -> dict:
    """What a run settles at its start and keeps when resumed elsewhere: the precision `--amp auto` chose
    on this machine, and a time budget's plan (measured here: see training/budget.py)."""
    plan = None
    if config.time_budget is not None:
        if group is not None:
            raise ConfigError("--time-budget: not under torchrun yet (each process would measure its own plan); "
                              "give --epochs", "time_budget")
        plan = plan_time_budget(config, data.train.to(device), data.val.to(device), data.test.to(device))
    return {"amp": resolve_amp(config.amp, device), "time_plan": plan.to_dict() if plan else None}


def resolved_at_start(path: Path, config: TrainConfig, device: torch.device) -> dict:
    """The run's resolved settings from config.json (runs of older versions: resolved now, as they were)."""
    resolved = read_saved_config(path).get("resolved")
    if not isinstance(resolved, dict):
        return {"amp": resolve_amp(config.amp, device), "time_plan": None}
    if config.time_budget is not None and not isinstance(resolved.get("time_plan"), dict):
        raise CheckpointError(f"{path}/config.json: a time-budgeted run without its plan (resolved.time_plan); "
                              "restore config.json or start a new run")
    return resolved


def record_resume(path: Path, data: DataSplits, device: torch.device) -> None:
    """config.json keeps the first process's environment; each resume adds where it ran and on which data."""
    saved = read_saved_config(path)
    saved.setdefault("resumes", []).append({"data": data_record(data), "environment": environment(device)})
    atomic_write_json(path / "config.json", saved)


def check_batch_statistics(config: TrainConfig, train_images: int, processes: int = 1) -> None:
    """BatchNorm1d cannot train on a batch of one image (it has no batch statistics then): say so now."""
    if config.batch_size // processes >= 2 and train_images >= 2:
        return
    if any(isinstance(module, torch.nn.BatchNorm1d) for module in create_model(config.model).modules()):
        per_process = f" ({config.batch_size // processes} per process)" if processes > 1 else ""
        raise ConfigError(f"--batch-size {config.batch_size}{per_process} with {train_images:,} training images: "
                          f"{config.model} has BatchNorm1d layers, which need at least 2 images per batch; "
                          "use a larger batch")


def load_data(config: TrainConfig) -> DataSplits:
    data = load_splits(config.data_dir, config.val_size, config.split_seed, verify=not config.allow_unverified_data)
    logger.info("data: %s (train %s, val %s, test %s)%s", data.directory, f"{len(data.train):,}",
                f"{len(data.val):,}", f"{len(data.test):,}", "" if data.verified else ", NOT verified")
    return data


def data_record(data: DataSplits) -> dict:
    return {"directory": str(data.directory), "verified": data.verified,
            "train": len(data.train), "val": len(data.val), "test": len(data.test)}


def run(path: Path, config: TrainConfig, data: DataSplits, device: torch.device, resume_from: Path | None,
        progress: bool, started: float, group: Processes | None = None,
        after_epoch: Callable[[dict], None] | None = None) -> RunResult:
    """Build, restore (when resuming), fit, then test best.pt and write the summary and report."""
    resolved = on_main(group, lambda: resolved_at_start(path, config, device))
    plan = TimePlan.from_dict(resolved["time_plan"]) if resolved["time_plan"] else None
    epochs = plan.epochs if plan else config.epochs
    # Seed after loading (and after a time budget's measuring) so the same seed gives the same run.
    seed_everything(config.seed, config.deterministic)
    training = build_training(config, data.train.to(device), data.val.to(device), data.test.to(device),
                              total_steps=plan.total_steps if plan else None, amp=resolved["amp"])
    point = restore_run(resume_from, config, training) if resume_from is not None else ResumePoint()
    if resume_from is not None:
        on_main(group, lambda: remove_leftovers(path))  # after every process restored: see restore_run
        on_main(group, lambda: record_resume(path, data, device))
        logger.info("resuming %s at epoch %d/%d", path, len(point.history) + 1, epochs)
    tensorboard = recorder = None
    if is_main(group):  # the process that writes the run folder (the only one without torchrun)
        tensorboard = TensorBoardLog(path, first_step=len(point.learning_rates)) if config.tensorboard else None
        recorder = RunRecorder(path, config, training, point.history, point.learning_rates,
                               also=[tensorboard] if tensorboard else [], after_epoch=after_epoch)
    network, train_batches = training.model, training.train_loader
    if group is not None:  # one of several processes: see training/distributed.py
        network = wrap_model(training.model, group, config.sync_bn)
        training.model = network.module
        train_batches = ShardedBatches(training.train_loader, group)
        recorder = DistributedRecorder(group, recorder, point.history, train_batches.images_per_epoch())
    precision = "" if resolved["amp"] == "none" else f", {resolved['amp']} autocast"
    logger.info("run: %s  model %s (%s parameters) on %s%s%s", path, config.model,
                f"{count_parameters(training.model):,}", device, f" x {group.world_size} processes" if group else "",
                precision)
    if progress:
        train_batches = WithProgress(train_batches, epochs, len(point.history) + 1)
    # A compiled model shares the original's parameters; checkpoints keep saving the original.
    network = torch.compile(network) if config.compile else network
    with stop_after_step() as stop:
        try:
            fit_started = time.perf_counter()
            history = fit(network, train_batches, training.val_loader, training.optimization, epochs,
                          flip_tta=config.tta_flip, recorder=recorder, stop=agreed_stop(stop, group),
                          last_epoch_steps=plan.last_epoch_steps if plan else None)
            budget = budget_record(plan, time.perf_counter() - fit_started, history,
                                   resumed=resume_from is not None)
            return on_main(group, lambda: finish(path, config, data, device, training, history, stop, tensorboard,
                                                 started, budget))
        except TrainingInterrupted as interruption:
            raise interrupted(path, recorder, interruption, stop) from None
        except NonFiniteLossError as error:
            if is_main(group):  # no message between processes here: another one may not have diverged
                write_summary(path, {"finished": True, "diverged": str(error), "model": config.model,
                                     "epochs": epochs, "epochs_completed": len(recorder.history)})
            raise NonFiniteLossError(f"{error}; training stopped: {kept(path, recorder)}, and summary.json records "
                                     "the divergence (try a lower --lr or --max-lr)") from None


def budget_record(plan: TimePlan | None, fit_seconds: float, history: list[dict], resumed: bool) -> dict:
    """summary.json's account of a time budget: what was planned, and (for a run that never stopped)
    the time it took, measuring included; the final test evaluation comes after and is not in it.
    An overrun is also logged, with the step time that caused it."""
    if plan is None:
        return {}
    used = None if resumed else plan.measure_seconds + fit_seconds
    overrun = None if used is None else overrun_line(plan, used, sum(row["seconds"] for row in history))
    if overrun:
        logger.warning("%s", overrun)
    return {"time_budget": plan.budget, "time_budget_seconds": plan.budget_seconds,
            "planned_steps": plan.total_steps, "planned_seconds": plan.planned_seconds(),
            "budget_used_seconds": used}


def finish(path: Path, config: TrainConfig, data: DataSplits, device: torch.device, training: Training,
           history: list[dict], stop: StopRequest, tensorboard: TensorBoardLog | None, started: float,
           budget: dict) -> RunResult:
    """After the last epoch: test best.pt once, then write the summary and the report."""
    test, best_epoch = test_best_weights(path, config, training)
    calibration = calibrate_best_weights(path, config, training, test, best_epoch)
    if stop.requested:
        raise TrainingInterrupted("during the final test evaluation", stop.signal_number)
    wall_seconds = time.perf_counter() - started
    write_summary(path, {
        "finished": True,
        "model": config.model,
        "parameters": count_parameters(training.model),
        "epochs": len(history),
        "best_epoch": best_epoch,
        "best_val_accuracy": history[best_epoch - 1]["val_accuracy"],
        "test_loss": test.loss,
        "test_accuracy": test.accuracy,
        "test_per_class_accuracy": test.per_class_accuracy(),
        "train_seconds": sum(row["seconds"] for row in history),
        "wall_seconds": wall_seconds,
        "images_per_second": sum(row["images_per_second"] for row in history) / len(history),
        "device": str(device),
        **budget,
    })
    report_path = write_report(path, training.model, data.test.images, test, config.mean, config.std,
                               {"directory": str(data.directory), "verified": data.verified}, calibration)
    logger.info("report: %s", report_path)
    if tensorboard is not None:
        tensorboard.log_confusion_matrix(test, best_epoch)
        tensorboard.close()
    return RunResult(path, test.accuracy, test.loss, best_epoch, history[best_epoch - 1]["val_accuracy"], wall_seconds)


def test_best_weights(path: Path, config: TrainConfig, training: Training):
    """The one test evaluation of a run: best.pt's weights on the test split."""
    best = load_checkpoint(path / "best.pt")
    load_weights(training.model, best["model"], str(path / "best.pt"))
    return evaluate(training.model, training.test_loader, config.tta_flip), best["epoch"]


def calibrate_best_weights(path: Path, config: TrainConfig, training: Training, test: EvalResult,
                           best_epoch: int) -> dict:
    """With config.calibrate: fit best.pt's temperature on the validation split (never the test split),
    save it as calibration.json, and measure the test probabilities before and after it; the test
    result's probabilities become the scaled ones, which the report shows."""
    temperature = None
    if config.calibrate:
        record = fit_run_temperature(path, training.model, training.val_loader, config.tta_flip, config.model,
                                     best_epoch)
        temperature = record["temperature"]
        logger.info("calibration: temperature %.3f, fitted on the validation split", temperature)
    measured = calibration_record(test.probabilities, test.labels, temperature)
    if temperature is not None:
        test.probabilities = scaled_probabilities(test.probabilities, temperature)
    return measured


def kept(path: Path, recorder: EpochRecorder) -> str:
    if recorder.history:
        return f"epoch {recorder.history[-1]['epoch']} is saved in {path}"
    return "no epoch was completed yet, so there is no checkpoint"


def interrupted(path: Path, recorder: EpochRecorder, interruption: TrainingInterrupted,
                stop: StopRequest) -> TrainingInterrupted:
    """The stop message: where training stopped and what the run folder still holds."""
    error = TrainingInterrupted(f"stopped by {stop.signal_name} {interruption}; {kept(path, recorder)}",
                                interruption.signal_number)
    error.run_path = path  # for the CLI's "resume with" line
    return error
