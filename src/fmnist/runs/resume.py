"""Continuing a stopped run from its folder: `fmnist train --resume RUN_DIR`.

Resume restarts the interrupted epoch: it loads last.pt, written at the end of the last completed
epoch, and replays everything after it. That checkpoint holds the model, optimizer and scheduler
states, the epoch, the step count, the metrics history (hence the best validation accuracy so far),
and the state of every random generator (Python, NumPy, torch's CPU generator and the run device's own,
each torchrun rank's its own, and the loader's permutation generator). Nothing random happens between
saving last.pt and the next epoch's first batch, so a resumed run repeats the uninterrupted run exactly:
same metrics, same weights (on a GPU too, with --deterministic: docs/gpu.md).

Nothing is ever overwritten on a guess: a folder whose last.pt is gone while it recorded epochs, a
config.json that no longer matches last.pt, or a finished run is refused with one line. Only a
folder stopped before its first epoch ended (nothing recorded yet) starts again from epoch 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fmnist.arguments import argument, as_argument_of, for_command_line, invalid, named, setting
from fmnist.errors import CheckpointError, ConfigError, one_line_reason
from fmnist.runs.checkpoint import load_checkpoint, load_weights
from fmnist.runs.edited import MAY_CHANGE_ON_RESUME, checked_config
from fmnist.runs.folder import read_history, read_saved_config, read_summary
from fmnist.training.build import Training
from fmnist.training.config import TrainConfig
from fmnist.training.replan import BudgetPlanner
from fmnist.training.runtime import set_rng_state

RESUME = "resume"


def is_finished(run_dir: Path) -> bool:
    """A run is finished when training wrote its final summary (a report of a stopped run does not)."""
    return read_summary(run_dir).get("finished") is True


def config_to_resume(run_dir: str | Path, overrides: dict) -> TrainConfig:
    """The saved config of the run in `run_dir`, checked against any options given with --resume."""
    path = Path(run_dir)
    where = argument("run_dir", path, RESUME)  # `--resume runs/x` or `resume(run_dir='runs/x')`
    if not path.exists():
        raise CheckpointError(f"{where}: no such run folder; check the path (runs/<name>)")
    if not path.is_dir():
        raise CheckpointError(f"{where}: not a folder; give the run folder, not a file in it")
    saved = read_saved_config(path)
    if is_finished(path):
        diverged = read_summary(path).get("diverged")
        if diverged:
            raise CheckpointError(f"{where}: this run stopped because its loss diverged ({diverged}); "
                                  f"start a new run, with a lower {named('lr')}")
        raise CheckpointError(f"{where}: this run already finished; start a new run instead")
    last = path / "last.pt"
    # config.json edited by hand must still describe the run last.pt continues: see edited.py.
    last_state = load_checkpoint(last, for_resume=True) if last.exists() else None
    config = checked_config(path, saved, last_state)
    changes = {}
    for name, value in overrides.items():
        if value is None or value == getattr(config, name):
            continue
        if name not in MAY_CHANGE_ON_RESUME:
            raise invalid(name, value, f"the run in {path} was started with {setting(name, getattr(config, name))}; "
                                       f"{'--resume' if for_command_line() else 'resume()'} continues a run with its "
                                       "own config: drop the option or start a new run", RESUME)
        changes[name] = value
    try:
        return config.replace(**changes) if changes else config
    except ConfigError as error:  # a device or data folder of the wrong kind: name it as resume's argument
        raise as_argument_of(RESUME, error) from None


def remove_leftovers(run_dir: Path, checkpoints_too: bool = True) -> None:
    """Delete temporary files that a write cut short by a crash left behind (the real file is intact).

    Call it while holding the run folder's lock: the files are then nobody else's. A checkpoint's
    leftover is evidence that the run was stopped while saving an epoch (see restore_run), so resume
    keeps those until every process has restored the run (`checkpoints_too=False`), then removes them.
    """
    for leftover in Path(run_dir).glob(".*.tmp"):
        if checkpoints_too or not leftover.name.startswith(CHECKPOINT_TEMP_PREFIXES):
            leftover.unlink(missing_ok=True)


CHECKPOINT_TEMP_PREFIXES = (".best.pt.", ".last.pt.")


def stopped_while_saving_epoch_1(path: Path) -> bool:
    """True when the run was stopped while writing epoch 1's checkpoints: its metrics record one epoch,
    there is no last.pt, and a checkpoint's temporary file shows the write that was cut short.

    Each epoch writes metrics.csv, then best.pt (always, for epoch 1), then last.pt, from one and the
    same state. After epoch 1 there is no earlier last.pt to fall back on, but nothing is lost either:
    best.pt, if it was written, is that epoch's whole state, and without it the epoch is redone. Without
    that evidence (last.pt deleted by hand), resume refuses, as for any run whose last.pt is gone.
    """
    cut_short = any(leftover.name.startswith(CHECKPOINT_TEMP_PREFIXES) for leftover in path.glob(".*.tmp"))
    if not cut_short or not (path / "metrics.csv").is_file() or len(read_history(path)) != 1:
        return False
    best = path / "best.pt"
    return not best.exists() or load_checkpoint(best, for_resume=True)["epoch"] == 1


def rank_generators(state: dict, rank: int) -> dict:
    """The generator states that process `rank` saved; a rank the saving run did not have (resumed with more
    processes, or a checkpoint of one process) takes rank 0's, as all ranks were seeded alike."""
    per_rank = state.get("rank_rng") or []
    return per_rank[rank] if rank < len(per_rank) else state["rng"]


@dataclass
class ResumePoint:
    """Where a resumed run continues: the epochs and learning rates recorded so far."""

    history: list[dict] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    stop_requested: str | None = None  # a callback's StopTraining ended training after the last epoch


def restore_run(run_dir: str | Path, config: TrainConfig, training: Training, rank: int = 0,
                planner: BudgetPlanner | None = None) -> ResumePoint:
    """Load last.pt into the freshly built training objects; return what the run recorded so far.

    `rank`: this process's rank under torchrun, whose own generator states it restores. `planner`: a
    time budget's, which goes on from the plan as it stood at the checkpoint.
    """
    path = Path(run_dir)
    last = path / "last.pt"
    if not last.exists() and stopped_while_saving_epoch_1(path):
        if not (path / "best.pt").exists():
            return ResumePoint()  # only epoch 1's metrics were written: start again, losing nothing
        last = path / "best.pt"  # best.pt holds epoch 1's whole state, the same last.pt would have held
    if not last.exists():
        recorded = [name for name in ("best.pt", "metrics.csv") if (path / name).exists()]
        if recorded:
            raise CheckpointError(
                f"--resume {path}: last.pt is missing but the run recorded epochs ({', '.join(recorded)}); "
                "nothing was changed. Restore last.pt, or start a new run"
            )
        return ResumePoint()  # stopped before its first epoch ended: nothing to lose, start again
    state = load_checkpoint(last, for_resume=True)
    if state["model_name"] != config.model:
        raise CheckpointError(
            f"{last}: a checkpoint of {state['model_name']}, but the run's config.json says {config.model}"
        )
    optimization = training.optimization
    if optimization.ema is not None:  # "model" holds the average; training continues from the raw weights
        if "raw_model" not in state:
            raise CheckpointError(f"{last}: no raw weights next to the moving average; the checkpoint is damaged")
        load_weights(training.model, state["raw_model"], str(last))
        load_weights(optimization.ema.module, state["model"], str(last))
        optimization.ema.n_averaged.fill_(state["ema_updates"])
    else:
        load_weights(training.model, state["model"], str(last))
    try:
        optimization.optimizer.load_state_dict(state["optimizer"])
        if optimization.scheduler is not None:
            optimization.scheduler.load_state_dict(state["scheduler"])
        if optimization.grad_scaler is not None:
            optimization.grad_scaler.load_state_dict(state["grad_scaler"])
        set_rng_state(rank_generators(state, rank), next(training.model.parameters()).device)
        training.train_loader.generator.set_state(state["loader_rng"])
        training.train_loader.passes = len(state["history"])  # one pass of the data per epoch done
    except (KeyError, ValueError, TypeError, RuntimeError) as error:
        raise CheckpointError(f"{last}: cannot restore the training state ({one_line_reason(error)}); "
                              "the checkpoint is damaged") from None
    if planner is not None:
        restore_plan(planner, state, last)
    stop_requested = state.get("stop_requested")
    if stop_requested is not None and not isinstance(stop_requested, str):
        raise CheckpointError(f"{last}: stop_requested {stop_requested!r} should be the reason, as text; the "
                              "checkpoint is damaged")
    return ResumePoint(list(state["history"]), list(state["learning_rates"]), stop_requested)


def restore_plan(planner: BudgetPlanner, state: dict, last: Path) -> None:
    """The budget's plan as last.pt left it; a run saved before plans were made again keeps its first plan."""
    steps = len(state["learning_rates"])
    try:
        if "time_plan_state" not in state:
            planner.keep_the_first_plan(steps)
            return
        planner.load_state_dict(state["time_plan_state"])
    except ValueError as error:
        raise CheckpointError(f"{last}: {error}; the checkpoint is damaged") from None
    if planner.steps_done != steps:
        raise CheckpointError(f"{last}: time plan state steps_done {planner.steps_done}, but {steps} steps were "
                              "recorded; the checkpoint is damaged")
