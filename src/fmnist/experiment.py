"""From a config to a finished run folder: `train(config)` and `resume(run_dir)`.

This is the wiring between data, model, loop and run folder; the loop itself is training/loop.py.
Nothing is printed: progress goes to the `fmnist` loggers (the CLI shows them), and a progress bar
and the epochs' lines are shown only with `progress=True` (training/progress.py).
"""

from __future__ import annotations

import json
import logging
import shlex
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from fmnist.arguments import (
    argument,
    check_bool,
    check_callable,
    check_names,
    check_path,
    check_type,
    invalid,
    named,
    setting,
)
from fmnist.data.splits import DataSplits, load_splits
from fmnist.errors import ConfigError, FmnistError, one_line_reason
from fmnist.faults import StopRequest, TrainingInterrupted, stop_after_step
from fmnist.files import atomic_write_json, check_writable, exclusive_lock
from fmnist.models import count_parameters, create_model
from fmnist.models.registry import model_origin
from fmnist.reports.mlflow_log import MlflowLog, MlflowTarget, connect, ends_with_the_run, require_mlflow
from fmnist.reports.report import write_report, write_test_summary
from fmnist.reports.tensorboard_log import TensorBoardLog, require_tensorboard
from fmnist.results import Run, read_run
from fmnist.runs.calibration import fit_run_temperature
from fmnist.runs.checkpoint import load_checkpoint, load_weights
from fmnist.runs.folder import (
    check_run_folder_free,
    create_run_folder,
    environment,
    read_saved_config,
    write_config,
    write_summary,
)
from fmnist.runs.recorder import RunRecorder
from fmnist.runs.resume import ResumePoint, config_to_resume, remove_leftovers, restore_run
from fmnist.training.budget import TimePlan, overrun_line, plan_time_budget
from fmnist.training.build import Training, build_training
from fmnist.training.calibration import calibration_record, scaled_probabilities
from fmnist.training.config import FIELDS, TrainConfig
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
from fmnist.training.early_stopping import EarlyStopping
from fmnist.training.loop import EpochRecorder, EvalResult, NonFiniteLossError, evaluate, fit
from fmnist.training.progress import TrainingProgress
from fmnist.training.replan import BudgetPlanner, planner_for
from fmnist.training.runtime import (
    Precision,
    check_precision,
    choose_precision,
    emulated_bf16_line,
    resolve_device,
    seed_everything,
    speed_settings_line,
    use_tf32,
)

logger = logging.getLogger(__name__)


RunResult = Run  # the name train() and resume() returned before they returned the whole Run


@dataclass
class Asked:
    """What the caller of train() or resume() asked for besides the config."""

    progress: bool = False
    after_epoch: Callable[[dict], None] | None = None
    mlflow: MlflowTarget | None = None  # the store, reached before anything was trained


def train(config: TrainConfig, *, progress: bool = False, details: dict | None = None,
          after_epoch: Callable[[dict], None] | None = None) -> Run:
    """Train `config` in a new run folder, validate every epoch, then test the best epoch's weights once.

    Returns the finished Run (fmnist.results): its config, history, summary, model, and test figures.

    `progress` draws a bar within each epoch (on a terminal or in a notebook) and shows each epoch's
    line. `details` (e.g. the command that started the run) are recorded in config.json.
    `after_epoch(row)` is called once each epoch is saved: raising fmnist.StopTraining ends training
    there and the run finishes (tested, reported); any other exception leaves it stopped. Stops with
    TrainingInterrupted on Ctrl-C or SIGTERM (the folder can be resumed) and NonFiniteLossError when
    the loss turns NaN. Under torchrun every process calls this; rank 0 alone writes the folder, and
    every process returns the same result.
    """
    started = time.perf_counter()
    check_train_arguments(config, progress, details, after_epoch)
    check_run_folder_free(config)  # a taken --name is said now, not after the data are loaded
    config.check_files()
    if config.tensorboard:
        require_tensorboard()  # fail now, not after training
    if config.mlflow:
        require_mlflow()
    with join_processes(config) as group:  # None in one process, see training/distributed.py
        device = group.device if group else resolve_device(config.device)
        check_device_options(config, device)
        data = together(group, lambda: load_data(config))
        check_batch_statistics(config, len(data.train), group.world_size if group else 1)
        resolved = resolve_run(config, data, device, group)
        mlflow = on_main(group, lambda: connect(config)) if config.mlflow else None  # before the folder exists
        path = on_main(group, lambda: create_run_folder(config))
        with main_holds_lock(path, "run folder", group):
            try:
                on_main(group, lambda: write_config(path, config, {
                    **(details or {}), "data": data_record(data), "environment": environment(device),
                    "options_given": {name: getattr(config, name) for name in sorted(config.given)},
                    "resolved": resolved, **({"processes": group.world_size} if group else {}),
                    "model_origin": model_origin(config.model),  # what a new process imports to rebuild it
                }))
                return run(path, config, data, device, None, Asked(progress, after_epoch, mlflow), started,
                           group)
            except Exception as error:
                # Kept: a diverged run (a result worth keeping, a sweep's too-high rate) and a stopped one
                # (`--resume` starts it again); anything else that recorded nothing leaves nothing behind.
                kept = isinstance(error, (NonFiniteLossError, TrainingInterrupted))
                if is_main(group) and not kept and not (path / "metrics.csv").exists():
                    shutil.rmtree(path, ignore_errors=True)  # nothing recorded: leave nothing behind
                    if isinstance(error, FmnistError):
                        error.args = (f"{error}; {path} was removed, as it recorded nothing",)
                raise


def resume(run_dir: str | Path, *, progress: bool = False, **changes) -> Run:
    """Continue the stopped run in `run_dir` after its last completed epoch, with its saved config.

    Only `device` and `data_dir` may change (`changes`); anything else is refused. Under torchrun,
    with any number of processes.
    """
    started = time.perf_counter()
    path = check_path(run_dir, "run_dir", "resume")
    check_bool(progress, "progress", "resume")
    check_names(changes, FIELDS, "resume", "option")
    config = config_to_resume(path, changes)
    if config.tensorboard:
        require_tensorboard()
    if config.mlflow:
        require_mlflow()
    with join_processes(config) as group:
        # A read-only folder fails now, not after an epoch of training.
        on_main(group, lambda: check_writable(path, argument("run_dir", path, "resume")))
        device = group.device if group else resolve_device(config.device)
        check_device_options(config, device)
        with main_holds_lock(path, argument("run_dir", path, "resume"), group):
            on_main(group, lambda: remove_leftovers(path, checkpoints_too=False))
            data = together(group, lambda: load_data(config))
            mlflow = on_main(group, lambda: connect(config, path)) if config.mlflow else None
            return run(path, config, data, device, path, Asked(progress, mlflow=mlflow), started, group)


# config.json's keys that train() writes itself: `details` may not replace them.
RECORDED_KEYS = ("config", "seed", "data", "environment", "options_given", "resolved", "processes", "resumes")


def check_train_arguments(config, progress, details, after_epoch) -> None:
    """train()'s arguments, checked before anything is loaded or written."""
    check_type(config, TrainConfig, "config", "train", "a TrainConfig, e.g. TrainConfig.from_recipe('quick')")
    check_bool(progress, "progress", "train")
    if after_epoch is not None:
        check_callable(after_epoch, "after_epoch", "train")
    if details is None:
        return
    check_type(details, dict, "details", "train", "a dict (recorded in config.json)")
    for key in details:
        if not isinstance(key, str):
            raise invalid("details", details, f"its keys must be str, not {type(key).__name__}", "train")
        if key in RECORDED_KEYS:
            raise invalid("details", details, f"{key!r} is a key train() records itself; choose another", "train")
    try:
        json.dumps(details)
    except (TypeError, ValueError, RecursionError) as error:
        raise invalid("details", details, f"cannot be written as JSON ({one_line_reason(error)})", "train") from None


@contextmanager
def main_holds_lock(path: Path, what: str, group: Processes | None) -> Iterator[None]:
    """The run folder's lock, held by the process that writes the folder (rank 0 under torchrun)."""
    with ExitStack() as held:
        on_main(group, lambda: held.enter_context(exclusive_lock(path, what)))
        yield


def check_device_options(config: TrainConfig, device: torch.device) -> None:
    """Refuse what the device cannot do (fp16 off CUDA, bf16 on an old macOS), then set its speed settings:
    TF32 on CUDA, as --tf32 says (process-wide, as torch keeps it)."""
    check_precision(config.amp, device)
    if device.type == "cuda":
        use_tf32(bool(config.tf32))


def resolve_run(config: TrainConfig, data: DataSplits, device: torch.device, group: Processes | None) -> dict:
    """What a run settles at its start and keeps when resumed elsewhere: the precision `--amp auto` chose
    on this machine, and a time budget's plan (measured here: see training/budget.py)."""
    plan = None
    if config.time_budget is not None:
        if group is not None:
            raise invalid("time_budget", config.time_budget, "not under torchrun yet (each process would measure "
                          f"its own plan); give {named('epochs')}")
        plan = plan_time_budget(config, data.train.to(device), data.val.to(device), data.test.to(device))
        if config.patience is not None and config.patience > plan.epochs - 2:
            raise invalid("patience", config.patience, f"{setting('time_budget', config.time_budget)} plans "
                          f"{plan.epochs} epochs on this machine, so early stopping could never stop before the "
                          f"last; give a smaller {named('patience')} or a longer budget")
    precision = choose_precision(config.amp, device)
    return {"amp": precision.amp, "amp_reason": precision.reason, "time_plan": plan.to_dict() if plan else None}


def resolved_at_start(path: Path, config: TrainConfig, device: torch.device) -> dict:
    """The run's resolved settings from config.json (runs of older versions: resolved now, as they were)."""
    resolved = read_saved_config(path).get("resolved")  # checked by config_to_resume when resuming
    if not isinstance(resolved, dict):
        precision = choose_precision(config.amp, device)
        return {"amp": precision.amp, "amp_reason": precision.reason, "time_plan": None}
    return resolved


def record_resume(path: Path, data: DataSplits, device: torch.device, resolved: dict) -> None:
    """config.json keeps the first process's environment; each resume adds where it ran and on which data.
    A run of an older fmnist gets the settings it resolved now, which its checkpoints record from here on."""
    saved = read_saved_config(path)
    saved.setdefault("resolved", resolved)
    saved.setdefault("resumes", []).append({"data": data_record(data), "environment": environment(device)})
    atomic_write_json(path / "config.json", saved)


def check_batch_statistics(config: TrainConfig, train_images: int, processes: int = 1) -> None:
    """BatchNorm1d cannot train on a batch of one image (it has no batch statistics then): say so now."""
    if config.batch_size // processes >= 2 and train_images >= 2:
        return
    if any(isinstance(module, torch.nn.BatchNorm1d) for module in create_model(config.model).modules()):
        per_process = f" ({config.batch_size // processes} per process)" if processes > 1 else ""
        raise ConfigError(f"{argument('batch_size', config.batch_size)}{per_process} with {train_images:,} training "
                          f"images: {config.model} has BatchNorm1d layers, which need at least 2 images per batch; "
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
        asked: Asked, started: float, group: Processes | None = None) -> Run:
    """Build, restore (when resuming), fit, then test best.pt and write the summary and report."""
    resolved = on_main(group, lambda: resolved_at_start(path, config, device))
    plan = TimePlan.from_dict(resolved["time_plan"]) if resolved["time_plan"] else None
    epochs = plan.epochs if plan else config.epochs
    # Seed after loading (and after a time budget's measuring) so the same seed gives the same run.
    seed_everything(config.seed, config.deterministic)
    training = build_training(config, data.train.to(device), data.val.to(device), data.test.to(device),
                              total_steps=plan.total_steps if plan else None, amp=resolved["amp"])
    if plan is not None and plan.steps_per_epoch != len(training.train_loader):
        raise ConfigError(f"--data-dir {data.directory}: {len(training.train_loader)} batches per epoch, but the run's "
                          f"time plan was made for {plan.steps_per_epoch}; resume it on the data it started on",
                          "data_dir")
    planner = planner_for(plan, training) if plan is not None else None
    rank = group.rank if group else 0
    point = restore_run(resume_from, config, training, rank, planner) if resume_from is not None else ResumePoint()
    if resume_from is not None:
        on_main(group, lambda: remove_leftovers(path))  # after every process restored: see restore_run
        on_main(group, lambda: record_resume(path, data, device, resolved))
        if point.stop_requested:
            logger.info("resuming %s: training ended after epoch %d (%s); the final test is left",
                        path, len(point.history), point.stop_requested)
        else:
            logger.info("resuming %s at epoch %d/%d", path, len(point.history) + 1,
                        planner.epochs if planner else epochs)
    early_stopping = EarlyStopping(config.patience, config.min_delta) if config.patience is not None else None
    network, train_batches = training.model, training.train_loader
    if group is not None:  # one of several processes: see training/distributed.py
        network = wrap_model(training.model, group, config.sync_bn)
        training.model = network.module
        train_batches = ShardedBatches(training.train_loader, group)
    progress = tensorboard = mlflow = recorder = None
    if is_main(group):  # the process that writes the run folder (the only one without torchrun)
        if asked.progress:
            progress = TrainingProgress(epochs, len(train_batches), len(point.history) + 1,
                                        plan.last_epoch_steps if plan else None, plan=planner)
            train_batches = progress.batches(train_batches)
        tensorboard = TensorBoardLog(path, first_step=len(point.learning_rates)) if config.tensorboard else None
        mlflow = MlflowLog(asked.mlflow, path, config, resolved, point.history) if asked.mlflow else None
        recorder = RunRecorder(path, config, training, point.history, point.learning_rates,
                               also=[log for log in (tensorboard, mlflow, progress) if log is not None],
                               after_epoch=asked.after_epoch, resolved=resolved, started=started,
                               earlier_seconds=earlier_seconds(point.history), stop_requested=point.stop_requested,
                               planner=planner)
    run_recorder = recorder
    if group is not None:
        recorder = DistributedRecorder(group, recorder, point.history, train_batches.images_per_epoch())
    logger.info("run: %s  model %s (%s parameters) on %s%s, %s", path, config.model,
                f"{count_parameters(training.model):,}", device, f" x {group.world_size} processes" if group else "",
                run_settings(resolved, config, device))
    emulated = emulated_bf16_line(resolved["amp"], device, resumed=resume_from is not None)
    if emulated:
        logger.warning("%s", emulated)
    if early_stopping is not None and early_stopping_costs(config, training, plan, epochs):
        logger.info("%s", early_stopping_costs(config, training, plan, epochs))
    # A compiled model shares the original's parameters; checkpoints keep saving the original.
    network = torch.compile(network) if config.compile else network
    with stop_after_step() as stop, ends_with_the_run(mlflow):
        try:
            history = point.history if point.stop_requested else fit(
                network, train_batches, training.val_loader, training.optimization, epochs, flip_tta=config.tta_flip,
                recorder=recorder, stop=agreed_stop(stop, group),
                last_epoch_steps=plan.last_epoch_steps if plan else None, early_stopping=early_stopping,
                on_step=progress.step if progress else None, planner=planner)
            budget = budget_record(planner, history)
            epochs = planner.epochs if planner else epochs
            return on_main(group, lambda: finish(path, config, data, device, training, history, stop, tensorboard,
                                                 started - earlier_seconds(point.history),
                                                 {**budget, **stop_record(history, epochs, run_recorder,
                                                                          early_stopping)}, mlflow))
        except TrainingInterrupted as interruption:
            raise interrupted(path, recorder, interruption, stop) from None
        except NonFiniteLossError as error:
            if is_main(group):  # no message between processes here: another one may not have diverged
                write_summary(path, {"finished": True, "diverged": str(error), "model": config.model,
                                     "epochs": epochs, "epochs_completed": len(recorder.history)})
            raise NonFiniteLossError(f"{error}; training stopped: {kept(path, recorder)}, and summary.json records "
                                     f"the divergence (try a lower {named('lr')} or {named('max_lr')})") from None


def run_settings(resolved: dict, config: TrainConfig, device: torch.device) -> str:
    """The run line's account of what was chosen for this device and why: the precision (--amp auto says what
    it found), and on a GPU determinism against speed and TF32."""
    precision = Precision(resolved["amp"], resolved.get("amp_reason") or "as the run chose at its start")
    speed = speed_settings_line(device, config.deterministic, config.tf32)
    return precision.describe() + (f", {speed}" if speed else "")


def earlier_seconds(history: list[dict]) -> float:
    """The wall time of the parts of a run before this one: up to its last recorded epoch. Runs of
    older versions did not record it; their epochs' training and validation time stands in for it."""
    if not history:
        return 0.0
    recorded = history[-1].get("wall_seconds")
    if isinstance(recorded, (int, float)):
        return float(recorded)
    return sum((row.get("seconds") or 0.0) + (row.get("eval_seconds") or 0.0) for row in history)


def early_stopping_costs(config: TrainConfig, training: Training, plan: TimePlan | None, epochs: int) -> str | None:
    """What a stop before the last epoch gives up, when it gives up more than the epochs: a time
    budget's remaining time, or a schedule planned to the last step (it never comes down)."""
    if plan is not None:
        return (f"--patience {config.patience}: a stop before the {epochs} epochs that --time-budget "
                f"{config.time_budget} planned leaves the rest of the budget unused, and the learning-rate schedule "
                "ends where training stops, before its lowest rates; the best epoch is tested as always")
    if training.optimization.scheduler_interval == "batch":
        return (f"--patience {config.patience}: the {config.scheduler} schedule is planned over {epochs} epochs; a "
                "stop before then ends it partway, before its learning rate has come down; the best epoch is "
                "tested as always")
    return None


def stop_record(history: list[dict], epochs: int, recorder: RunRecorder | None,
                early_stopping: EarlyStopping | None) -> dict:
    """summary.json's account of a run that stopped before its last epoch, and why; {} for the others."""
    if len(history) >= epochs:
        return {}
    reason = (recorder.stop_requested if recorder is not None else None) or (
        early_stopping.reason_to_stop(history) if early_stopping is not None else None)
    return {"epochs_planned": epochs,
            "stopped_early": reason or "after_epoch asked to stop (before the run was resumed)"}


def budget_record(planner: BudgetPlanner | None, history: list[dict]) -> dict:
    """summary.json's account of a time budget: the first plan, the steps trained, the budget used
    (measuring included, the time a stopped run waited not: the final test evaluation comes after and
    is not in it) and each epoch's decision. An overrun is also logged, with the step time behind it."""
    if planner is None:
        return {}
    record = planner.record()
    used = record["budget_used_seconds"]
    overrun = None if used is None else overrun_line(
        planner.plan, used, planner.speed_since_last_plan([row["seconds"] for row in history]))
    if overrun:
        logger.warning("%s", overrun)
    return record


def finish(path: Path, config: TrainConfig, data: DataSplits, device: torch.device, training: Training,
           history: list[dict], stop: StopRequest, tensorboard: TensorBoardLog | None, started: float,
           more: dict, mlflow: MlflowLog | None = None) -> Run:
    """After the last epoch: test best.pt once, then write the summary and the report. `more` goes
    into summary.json too (a time budget's account, an early stop).

    `started` is when the run started, earlier parts of a resumed run included, so that wall_seconds
    is the whole run's."""
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
        **more,
    })
    test_data = {"directory": str(data.directory), "verified": data.verified}
    if config.report:
        report_path = write_report(path, training.model, data.test.images, test, config.mean, config.std, test_data,
                                   calibration)
        logger.info("report: %s", report_path)
    else:
        write_test_summary(path, test, test_data, calibration)
        logger.info("no report (%s): `%s` writes it", setting("report", False), report_command(path, config, data))
    if tensorboard is not None:
        tensorboard.log_confusion_matrix(test, best_epoch)
        tensorboard.close()
    if mlflow is not None:
        mlflow.finish(test, best_epoch, more.get("stopped_early"))
    return read_run(path)


def report_command(path: Path, config: TrainConfig, data: DataSplits) -> str:
    """The `fmnist report` command that writes a run's report later, on the data it was tested on."""
    command = ["fmnist", "report", str(path)]
    if config.data_dir is not None:
        command += ["--data-dir", str(data.directory)]
    if not data.verified:
        command.append("--allow-unverified-data")
    return shlex.join(command)


def test_best_weights(path: Path, config: TrainConfig, training: Training):
    """The one test evaluation of a run: best.pt's weights on the test split."""
    best = load_checkpoint(path / "best.pt")
    load_weights(training.model, best["model"], str(path / "best.pt"))
    return evaluate(training.model, training.test_loader, config.tta_flip, config.tta_shift), best["epoch"]


def calibrate_best_weights(path: Path, config: TrainConfig, training: Training, test: EvalResult,
                           best_epoch: int) -> dict:
    """With config.calibrate: fit best.pt's temperature on the validation split (never the test split),
    save it as calibration.json, and measure the test probabilities before and after it; the test
    result's probabilities become the scaled ones, which the report shows."""
    temperature = None
    if config.calibrate:
        record = fit_run_temperature(path, training.model, training.val_loader, config.tta_flip, config.model,
                                     best_epoch, shift_tta=config.tta_shift)
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
