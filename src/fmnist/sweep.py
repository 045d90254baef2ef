"""`fmnist sweep`: train every combination of `--set KEY=V1,V2` values, times `--seeds N`, then compare.

  fmnist sweep --recipe affine-steplr --set lr=1e-3,2e-3 --set scheduler=steplr,cosine --seeds 3

Each --set key is a TrainConfig field; its values are parsed to the field's type, and every
combination is built and validated before the first run starts, so a typo costs nothing. Runs are
named after their grid point and seed inside one sweep folder; the comparison (mean ± std over
seeds per grid point) is written there at the end.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from pathlib import Path

from fmnist.config import FIELD_TYPES, TrainConfig, build_config
from fmnist.errors import CheckpointError, ConfigError

TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")
SWEEP_OWNS = ("out", "name")  # the sweep names and places its runs itself


@dataclass
class PlannedRun:
    name: str
    config: TrainConfig


def parse_value(key: str, text: str):
    """`text` as a value of the TrainConfig field `key` (int, float, bool, str; 'none' where allowed)."""
    declared = FIELD_TYPES[key]
    if text.lower() == "none" and "None" in declared:
        return None
    try:
        if "bool" in declared:
            if text.lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError
            return text.lower() in TRUE_WORDS
        if "int" in declared:
            return int(text)
        if "float" in declared:
            return float(text)
    except ValueError:
        raise ConfigError(f"--set {key}={text}: {text!r} is not a valid {declared}") from None
    return text


def parse_set(argument: str) -> tuple[str, list]:
    """'lr=1e-3,2e-3' -> ('lr', [0.001, 0.002])."""
    key, separator, values = argument.partition("=")
    key = key.strip().replace("-", "_")
    if not separator or not values.strip():
        raise ConfigError(f"--set {argument}: expected KEY=VALUE[,VALUE...], e.g. --set lr=1e-3,2e-3")
    if key not in FIELD_TYPES:
        raise ConfigError(f"--set {argument}: unknown key {key!r}; valid keys: {', '.join(FIELD_TYPES)}")
    if key in SWEEP_OWNS:
        raise ConfigError(f"--set {argument}: the sweep names its runs itself; give --out and --name instead")
    return key, [parse_value(key, text.strip()) for text in values.split(",")]


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
            planned.append(PlannedRun(name, build_config(config_file, run_overrides)))
    names = [run.name for run in planned]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(f"--set lists a value twice (runs {', '.join(repeated)}); give each value once")
    return sweep_dir, grid, planned


def run_sweep(config_file: str | None, overrides: dict, set_arguments: list[str], seeds: int,
              command: list[str]) -> tuple[Path, str]:
    """Train the planned runs one after another, then write the comparison; returns (folder, table)."""
    from fmnist.compare import compare_grid
    from fmnist.experiment import train_from_config
    from fmnist.runs import atomic_write_json
    from fmnist.train import NonFiniteLossError

    sweep_dir, grid, planned = plan_sweep(config_file, overrides, set_arguments, seeds)
    if sweep_dir.exists():
        raise CheckpointError(f"sweep folder {sweep_dir} already exists; choose another --name or delete it")
    try:
        sweep_dir.mkdir(parents=True)
    except OSError as error:
        raise CheckpointError(f"cannot create the sweep folder {sweep_dir} ({error.strerror})") from None
    atomic_write_json(sweep_dir / "sweep.json", {
        "command": command, "grid": grid, "seeds": seeds, "runs": [run.name for run in planned],
    })
    for index, run in enumerate(planned, start=1):
        print(f"sweep run {index}/{len(planned)}: {run.name}", flush=True)
        try:
            train_from_config(run.config, command)
        except NonFiniteLossError as error:
            # A diverging learning rate is a result of the study, not a reason to drop the others.
            print(f"sweep run {run.name} stopped: {error}", flush=True)
    table = compare_grid([sweep_dir], [key for key in grid if key != "seed"], sweep_dir)
    return sweep_dir, table
