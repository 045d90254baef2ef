"""A run on disk: its config, per-epoch metrics, checkpoints and summary, all written atomically.

runs/<name>/
  config.json    resolved config, versions, git commit, device, the command
  metrics.csv    one row per epoch
  lr_steps.csv   the learning rate at every training step
  last.pt        everything needed to resume (model, optimizer, scheduler, epoch, random states)
  best.pt        the same, from the epoch with the best validation accuracy
  summary.json   test loss/accuracy of best.pt, best epoch, wall time, per-class precision/recall/F1
  report.md      the written report, with *.png figures beside it (report.py)
  tensorboard/   event files, with --tensorboard
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import fmnist
from fmnist.config import TrainConfig
from fmnist.errors import CheckpointError, one_line_reason
from fmnist.faults import kill_point
from fmnist.models import create_model
from fmnist.runtime import rng_state

METRIC_FIELDS = [
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "lr", "seconds", "images_per_second", "eval_seconds",
]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over `path`.

    A crash at any moment leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file 0600; give it the permissions a plain open() would.
        os.chmod(temp_name, 0o666 & ~current_umask())
        with os.fdopen(handle, "wb") as temp_file:
            temp_file.write(data)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        kill_point(f"write-{path.name}")  # test-only: a SIGKILL with the new file written, not yet in place
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def atomic_torch_save(value, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def git_commit() -> str | None:
    """The commit of the fmnist checkout in use, if it is one."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(fmnist.__file__).parent,
            capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def environment(device: torch.device) -> dict:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "fmnist": fmnist.__version__,
        "git_commit": git_commit(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def default_run_name(model: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"


class Run:
    """The folder of one training run; fit() calls `end_epoch` after every epoch."""

    def __init__(self, path: Path, config: TrainConfig, history: list[dict] | None = None):
        self.path = Path(path)
        self.config = config
        self.history = history or []
        self.learning_rates: list[float] = []
        self.tensorboard = None  # a tensorboard_log.TensorBoardLog when --tensorboard is on

    @classmethod
    def create(cls, config: TrainConfig, device: torch.device, command: list[str]) -> Run:
        out = Path(config.out)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CheckpointError(f"--out {out}: cannot create the folder ({error.strerror}); choose another") from None
        name = config.name or default_run_name(config.model)
        path = out / name
        if config.name is None:  # an automatic name may collide within one second
            suffix = 2
            while path.exists():
                path = out / f"{name}-{suffix}"
                suffix += 1
        try:
            path.mkdir()
        except FileExistsError:
            raise CheckpointError(
                f"run folder {path} already exists; choose another --name or delete it"
            ) from None
        except OSError as error:
            raise CheckpointError(f"--out {out}: cannot create {path} ({error.strerror})") from None
        run = cls(path, config)
        atomic_write_json(path / "config.json", {
            "config": config.to_dict(),
            "seed": config.seed,
            "command": command,
            "environment": environment(device),
        })
        return run

    def end_epoch(
        self,
        row: dict,
        learning_rates: list[float],
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler,
        train_loader,
        is_best: bool,
    ) -> None:
        """Record the epoch's metrics, then checkpoint: best.pt when it improved, then last.pt.

        best.pt goes first: a crash between the two leaves last.pt at the previous epoch, and
        resuming redoes this epoch and writes best.pt again. The other order could leave a last.pt
        whose epoch was the best but a best.pt that never got it.
        """
        self.history.append(row)
        self.learning_rates.extend(learning_rates)
        self.write_csv("metrics.csv", METRIC_FIELDS, self.history)
        self.write_csv("lr_steps.csv", ["step", "lr"], [
            {"step": step + 1, "lr": lr} for step, lr in enumerate(self.learning_rates)
        ])
        if self.tensorboard is not None:
            self.tensorboard.log_epoch(row, learning_rates)
        state = checkpoint_state(self.config, model, optimizer, scheduler, train_loader, self.history)
        state["learning_rates"] = list(self.learning_rates)  # lets a resumed run rewrite lr_steps.csv
        state["step"] = len(self.learning_rates)  # optimizer steps so far
        if is_best:
            atomic_torch_save(state, self.path / "best.pt")
        atomic_torch_save(state, self.path / "last.pt")

    def write_csv(self, name: str, fieldnames: list[str], rows: list[dict]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fieldnames, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path / name, text.getvalue())

    def write_summary(self, summary: dict) -> None:
        atomic_write_json(self.path / "summary.json", summary)


def checkpoint_state(config, model, optimizer, scheduler, train_loader, history) -> dict:
    """Plain types and tensors only, so the file loads with torch.load(weights_only=True)."""
    return {
        "format": "fmnist-checkpoint-1",
        "fmnist_version": fmnist.__version__,
        "config": config.to_dict(),
        "model_name": config.model,
        "epoch": history[-1]["epoch"],
        "history": history,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": rng_state(),
        "loader_rng": train_loader.generator.get_state(),
    }


def checkpoint_path(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's best.pt (else last.pt)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no best.pt or last.pt in this folder; is it a run folder of fmnist?")
    if not path.exists():
        raise CheckpointError(f"{path}: no such run folder or checkpoint file; check the path")
    return path


def load_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint safely (weights_only) and check it is one of ours."""
    path = checkpoint_path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a truncated or foreign file
        reason = one_line_reason(error)
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason}); it may be truncated or corrupt") from None
    if not isinstance(state, dict) or state.get("format") != "fmnist-checkpoint-1":
        raise CheckpointError(f"{path}: not an fmnist checkpoint (no fmnist format marker)")
    return state


def trained_with_flip_tta(state: dict) -> bool:
    """Whether the checkpoint's run was evaluated with --tta-flip (checkpoints of older fmnist lack the key)."""
    return state["config"].get("tta_flip", False)


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


def main_script() -> list[str]:
    return [Path(sys.argv[0]).name, *sys.argv[1:]]
