"""`fmnist sweep`: train every combination of `--set KEY=V1,V2` values, times `--seeds N`, then compare.

  fmnist sweep --recipe affine-steplr --set lr=1e-3,2e-3 --set scheduler=steplr,cosine --seeds 3

Each --set key is a TrainConfig option; its values are parsed by the config itself, and every
combination is built and validated before the first run starts, so a typo (or an option that a
point's settings would ignore) costs nothing. Runs are named after their grid point and seed inside
one sweep folder; the comparison (mean ± std over seeds per grid point) is written there at the end.

A stopped sweep continues when the same command runs again: finished runs are kept, a run that was
stopped is resumed from its last completed epoch, and the rest are started. A different sweep
(another grid, seeds or options) in the same folder is refused.
"""

from __future__ import annotations

import itertools
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from fmnist.errors import CheckpointError, ConfigError
from fmnist.experiment import resume, train
from fmnist.faults import TrainingInterrupted
from fmnist.files import atomic_write_json, exclusive_lock
from fmnist.reports.compare import compare_grid
from fmnist.runs.folder import is_run_folder, read_json
from fmnist.runs.resume import is_finished
from fmnist.training.config import FIELDS, TrainConfig, build_config, parse_text
from fmnist.training.loop import NonFiniteLossError

logger = logging.getLogger(__name__)
SWEEP_OWNS = ("out", "name")  # the sweep names and places its runs itself


@dataclass
class PlannedRun:
    name: str
    config: TrainConfig


def parse_set(argument: str) -> tuple[str, list]:
    """'lr=1e-3,2e-3' -> ('lr', [0.001, 0.002])."""
    key, separator, values = argument.partition("=")
    key = key.strip().replace("-", "_")
    if not separator or not values.strip():
        raise ConfigError(f"--set {argument}: expected KEY=VALUE[,VALUE...], e.g. --set lr=1e-3,2e-3")
    if key not in FIELDS:
        raise ConfigError(f"--set {argument}: unknown key {key!r}; valid keys: {', '.join(FIELDS)}")
    if key in SWEEP_OWNS:
        raise ConfigError(f"--set {argument}: the sweep names its runs itself; give --out and --name instead")
    try:
        return key, [parse_text(key, text.strip()) for text in values.split(",")]
    except ConfigError as error:
        raise ConfigError(f"--set {argument}: {error}", key) from None


def parse_grid(arguments: list[str]) -> dict[str, list]:
    grid: dict[str, list] = {}
    for argument in arguments:
        key, values = parse_set(argument)
        if key in grid:
            raise ConfigError(f"--set {argument}: {key} is set twice; list all its values in one --set")
        grid[key] = values
    return grid


def folder_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=,+-]", "_", text)


def plan_sweep(
    config_file: str | None, overrides: dict, set_arguments: list[str], seeds: int
) -> tuple[Path, dict, list[PlannedRun]]:
    """The sweep folder, the grid, and every run's validated config, before anything runs."""
    grid = parse_grid(set_arguments)
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: must be at least 1")
    if seeds > 1 and "seed" in grid:
        raise ConfigError("--seeds and --set seed=... both choose seeds; use one of them")
    base = build_config(config_file, overrides)
    sweep_dir = Path(base.out) / (base.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    planned = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        for offset in range(seeds):
            seed = point.get("seed", base.seed + offset)
            label = ",".join([*(f"{key}={value}" for key, value in point.items() if key != "seed"), f"seed={seed}"])
            name = folder_safe(label)
            run_overrides = {**overrides, **point, "seed": seed, "out": str(sweep_dir), "name": name}
            try:
                planned.append(PlannedRun(name, build_config(config_file, run_overrides)))
            except ConfigError as error:
                raise ConfigError(f"sweep point {label}: {error}", error.field) from None
    names = [run.name for run in planned]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(f"--set lists a value twice (runs {', '.join(repeated)}); give each value once")
    return sweep_dir, grid, planned


def sweep_record(grid: dict, seeds: int, planned: list[PlannedRun]) -> dict:
    """What identifies a sweep: re-running the same command must plan exactly this again."""
    return {"grid": grid, "seeds": seeds, "runs": {run.name: run.config.to_dict() for run in planned}}


def prepare_folder(sweep_dir: Path, record: dict) -> bool:
    """Create the sweep folder, or check that the one there holds this very sweep; True if continuing."""
    if sweep_dir.exists():
        saved = read_json(sweep_dir / "sweep.json")
        if not saved:
            raise CheckpointError(f"sweep folder {sweep_dir} exists but holds no sweep.json; choose another --name")
        if {key: saved.get(key) for key in record} != record:
            raise CheckpointError(f"sweep folder {sweep_dir} holds a different sweep (another grid, seeds or "
                                  "options); choose another --name, or re-run that sweep's own command")
        return True
    try:
        sweep_dir.mkdir(parents=True)
    except OSError as error:
        raise CheckpointError(f"cannot create the sweep folder {sweep_dir} ({error.strerror})") from None
    return False


def run_sweep(config_file: str | None, overrides: dict, set_arguments: list[str], seeds: int,
              details: dict | None = None, progress: bool = False) -> tuple[Path, str]:
    """Train the planned runs one after another, then write the comparison; returns (folder, table).

    Stopped (Ctrl-C, SIGTERM), it raises TrainingInterrupted; the same call continues it.
    """
    sweep_dir, grid, planned = plan_sweep(config_file, overrides, set_arguments, seeds)
    record = sweep_record(grid, seeds, planned)
    continuing = prepare_folder(sweep_dir, record)
    with exclusive_lock(sweep_dir, "sweep folder"):
        if not continuing:
            atomic_write_json(sweep_dir / "sweep.json", {**record, **(details or {})})
        for index, run in enumerate(planned, start=1):
            run_dir = sweep_dir / run.name
            if is_run_folder(run_dir) and is_finished(run_dir):
                logger.info("sweep run %d/%d: %s (finished earlier)", index, len(planned), run.name)
                continue
            logger.info("sweep run %d/%d: %s", index, len(planned), run.name)
            try:
                if is_run_folder(run_dir):
                    resume(run_dir, progress=progress)
                else:
                    train(run.config, progress=progress, details=details)
            except NonFiniteLossError as error:
                # A diverging learning rate is a result of the study, not a reason to drop the others.
                logger.info("sweep run %s stopped: %s", run.name, error)
            except TrainingInterrupted as interruption:
                stopped = TrainingInterrupted(f"sweep stopped in run {index}/{len(planned)} ({run.name}): "
                                              f"{interruption}", interruption.signal_number)
                stopped.sweep_path = sweep_dir
                raise stopped from None
        table = compare_grid([sweep_dir], [key for key in grid if key != "seed"], sweep_dir)
    return sweep_dir, table
