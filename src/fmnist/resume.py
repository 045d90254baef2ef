"""Continuing a stopped run from its folder: `fmnist train --resume RUN_DIR`.

Resume restarts the interrupted epoch: it loads last.pt, written at the end of the last completed
epoch, and replays everything after it. That checkpoint holds the model, optimizer and scheduler
states, the epoch, the step count, the metrics history (hence the best validation accuracy so far),
and the state of every random generator (Python, NumPy, torch CPU and CUDA, and the loader's
permutation generator). Nothing random happens between saving last.pt and the next epoch's first
batch, so on the CPU a resumed run repeats the uninterrupted run exactly: same metrics, same weights.
Continuing mid-epoch would need the batch position and half-summed epoch metrics too, for at
most one epoch of saved work.

A folder without last.pt (stopped during the first epoch) starts again from epoch 1 with its
saved config and seed, which is the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from fmnist.config import TrainConfig
from fmnist.errors import CheckpointError, ConfigError
from fmnist.loader import TensorLoader
from fmnist.runs import Run, load_checkpoint, load_weights
from fmnist.runtime import set_rng_state

# Options that may differ on resume: they say where the run happens, not what it computes.
MAY_CHANGE_ON_RESUME = ("device", "data_dir")


def config_to_resume(run_dir: str | Path, overrides: dict) -> TrainConfig:
    """The saved config of the run in `run_dir`, checked against any options given with --resume."""
    path = Path(run_dir)
    if not path.exists():
        raise CheckpointError(f"--resume {path}: no such run folder; check the path (runs/<name>)")
    if not path.is_dir():
        raise CheckpointError(f"--resume {path}: not a folder; give the run folder, not a file in it")
    try:
        saved = json.loads((path / "config.json").read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"--resume {path}: no readable config.json; is it a run folder of fmnist?") from None
    if (path / "summary.json").exists():
        raise CheckpointError(
            f"--resume {path}: this run already finished (summary.json is there); start a new run instead"
        )
    try:
        config = TrainConfig(**saved)
    except TypeError as error:
        raise CheckpointError(f"--resume {path}: config.json does not fit this version of fmnist ({error})") from None
    for name, value in overrides.items():
        if value is None or value == getattr(config, name):
            continue
        if name not in MAY_CHANGE_ON_RESUME:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(
                f"{flag} {value!r}: the run in {path} was started with {flag} {getattr(config, name)!r}; "
                "--resume continues a run with its own config: drop the option or start a new run"
            )
        setattr(config, name, value)
    return config.validate()


def restore_run(
    run_dir: str | Path,
    config: TrainConfig,
    model: nn.Module,
    optimizer,
    scheduler,
    train_loader: TensorLoader,
) -> tuple[Run, int]:
    """Load last.pt into the freshly built training objects; return the Run and the epoch to start at."""
    path = Path(run_dir)
    for leftover in path.glob(".*.tmp"):  # a write cut short by a crash; the real file is intact
        leftover.unlink()
    run = Run(path, config)
    last = path / "last.pt"
    if not last.exists():
        return run, 1
    state = load_checkpoint(last)
    if state["model_name"] != config.model:
        raise CheckpointError(
            f"{last}: a checkpoint of {state['model_name']}, but the run's config.json says {config.model}"
        )
    load_weights(model, state["model"], str(last))
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    train_loader.generator.set_state(state["loader_rng"])
    run.history = list(state["history"])
    run.learning_rates = list(state["learning_rates"])
    return run, state["epoch"] + 1
