"""The checkpoint format: what best.pt and last.pt hold, how they are written, loaded and checked.

A checkpoint is a dict of plain types and tensors, so it loads with torch.load(weights_only=True):
a file that holds any other Python object is refused, because unpickling it could run code.
After loading, every key the caller needs is checked (types, shapes, a finite normalization), so a
damaged or hand-made file is one clear error, never a traceback three modules later.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from fmnist.errors import CheckpointError, one_line_reason
from fmnist.files import atomic_torch_save
from fmnist.models import create_model, list_models
from fmnist.models.registry import how_to_make_known, model_origin
from fmnist.training.build import Training
from fmnist.training.config import TrainConfig
from fmnist.training.loop import weights_to_use
from fmnist.training.runtime import rng_state
from fmnist.version import __version__

FORMAT = "fmnist-checkpoint-1"
# What resuming needs on top of what using the model needs.
RESUME_KEYS = ("optimizer", "history", "learning_rates", "rng", "loader_rng")


def checkpoint_state(config: TrainConfig, training: Training, history: list[dict], learning_rates: list[float],
                     rank_rng: list[dict] | None = None, resolved: dict | None = None,
                     time_plan_state: dict | None = None) -> dict:
    """Everything needed to use the model and to resume the run, as plain types and tensors.

    "model" holds the weights to use: the moving average with --ema, whose raw weights (what
    training continues from) are in "raw_model". "rng" holds this process's generators, its device's
    included; under torchrun, `rank_rng` (saved as "rank_rng") holds every rank's, each restored by its own.
    "resolved" is what the run settled at its start (precision, time plan), as config.json records it:
    resume checks an edited config.json against it. "time_plan_state" holds a time budget's plan as it
    stands after this epoch (training/replan.py), which a resumed run goes on from.
    """
    optimization = training.optimization
    state = {
        "format": FORMAT,
        "fmnist_version": __version__,
        "config": config.to_dict(),
        "model_name": config.model,
        "model_origin": model_origin(config.model),  # what another process imports to rebuild it
        "epoch": history[-1]["epoch"],
        "history": history,
        "learning_rates": list(learning_rates),  # lets a resumed run rewrite lr_steps.csv
        "step": len(learning_rates),  # optimizer steps so far
        "model": weights_to_use(training.model, optimization).state_dict(),
        "optimizer": optimization.optimizer.state_dict(),
        "scheduler": optimization.scheduler.state_dict() if optimization.scheduler is not None else None,
        "rng": rng_state(next(training.model.parameters()).device),
        "loader_rng": training.train_loader.generator.get_state(),
    }
    if rank_rng is not None:
        state["rank_rng"] = rank_rng
    if resolved is not None:
        state["resolved"] = resolved
    if time_plan_state is not None:
        state["time_plan_state"] = time_plan_state
    if optimization.ema is not None:
        state["raw_model"] = training.model.state_dict()
        state["ema_updates"] = int(optimization.ema.n_averaged)
    if optimization.grad_scaler is not None:
        state["grad_scaler"] = optimization.grad_scaler.state_dict()
    return state


def save_checkpoint(state: dict, path: Path) -> None:
    atomic_torch_save(state, path)


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's best.pt (else last.pt)."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"{path!r}: not a path; give a run folder or a checkpoint file (a str or a Path)")
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no best.pt or last.pt in this folder; is it a run folder of fmnist?")
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or checkpoint file; check the path")
    return path


def load_checkpoint(path: str | Path, for_resume: bool = False) -> dict:
    """Load a checkpoint safely (weights_only) and check that it is a usable fmnist checkpoint."""
    path = checkpoint_path(path)
    try:
        with warnings.catch_warnings():  # torch warns about legacy (non-zip) files before failing
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if found:
            raise CheckpointError(
                f"{path}: holds Python objects other than tensors and plain values ({found.group(1)}); fmnist did "
                "not load it, because unpickling such objects could run code. Use a checkpoint that fmnist wrote"
            ) from None
        detail = re.search(r"WeightsUnpickler error: \s*(.+)", str(error))
        reason = detail.group(1).strip() if detail else one_line_reason(error)
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason}); it may be truncated or corrupt") from None
    except Exception as error:  # torch raises many types for a truncated or foreign file
        reason = one_line_reason(error)
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason}); it may be truncated or corrupt") from None
    check_checkpoint(state, path, for_resume)
    return state


def check_checkpoint(state, path: Path, for_resume: bool) -> None:
    """Raise CheckpointError naming the first thing missing or malformed."""

    def require(condition: bool, what: str) -> None:
        if not condition:
            raise CheckpointError(f"{path}: {what}; the checkpoint is damaged or was not written by fmnist")

    require(isinstance(state, dict) and state.get("format") == FORMAT, "no fmnist checkpoint format marker")
    require(isinstance(state.get("model_name"), str), "no model name")
    if state["model_name"] not in list_models():  # the file is fine: this process lacks the model's code
        name = state["model_name"]
        origin = state.get("model_origin") if isinstance(state.get("model_origin"), dict) else None
        raise CheckpointError(f"{path}: a checkpoint of the model {name!r}, which is not registered in this "
                              f"process; {how_to_make_known(name, origin)}")
    require(isinstance(state.get("epoch"), int), "no epoch number")
    weights = state.get("model")
    require(isinstance(weights, dict) and all(isinstance(value, torch.Tensor) for value in weights.values()),
            "no model weights")
    config = state.get("config")
    require(isinstance(config, dict), "no config")
    for name, low_ok in (("mean", True), ("std", False)):
        value = config.get(name)
        require(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and (value >= 0 if low_ok else value > 0),
                f"config {name} is {value!r}, not a finite number{' >= 0' if low_ok else ' > 0'}")
    require(isinstance(config.get("tta_flip", False), bool), "config tta_flip is not true or false")
    require(isinstance(config.get("tta_shift", False), bool), "config tta_shift is not true or false")
    if for_resume:
        missing = [key for key in RESUME_KEYS if key not in state]
        require(not missing, f"no {', '.join(missing)} to resume from")


def trained_with_flip_tta(state: dict) -> bool:
    """Whether the checkpoint's run was evaluated with --tta-flip (checkpoints of older fmnist lack the key)."""
    return state["config"].get("tta_flip", False)


def trained_with_shift_tta(state: dict) -> bool:
    """Whether the checkpoint's run was tested with --tta-shift (checkpoints of older fmnist lack the key)."""
    return state["config"].get("tta_shift", False)


def normalization(state: dict) -> tuple[float, float]:
    """The mean and std the model was trained with (checked by load_checkpoint)."""
    return float(state["config"]["mean"]), float(state["config"]["std"])


def model_from_checkpoint(state: dict, path: str | Path = "checkpoint") -> nn.Module:
    """Rebuild the checkpoint's model by name and load its weights, naming any mismatch."""
    model = create_model(state["model_name"])
    load_weights(model, state["model"], f"{path} ({state['model_name']})")
    return model


def load_weights(model: nn.Module, weights: dict, source: str) -> None:
    expected = model.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "is it a checkpoint of another model?"
        )
    for key, tensor in weights.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(tensor.shape)}, the model expects "
                f"{tuple(expected[key].shape)}; is it a checkpoint of another model?"
            )
    model.load_state_dict(weights)
