"""A run on disk: every file of a run folder is written and read here.

runs/<name>/
  config.json    resolved config, versions, git commit, device, data set, the command (if any)
  metrics.csv    one row per epoch
  lr_steps.csv   the learning rate at every training step
  last.pt        everything needed to resume (checkpoint.py)
  best.pt        the same, from the epoch with the best validation accuracy
  summary.json   test loss/accuracy of best.pt, best epoch, wall time, per-class precision/recall/F1
  report.md      the written report, with *.png figures beside it (reports/report.py)
  tensorboard/   event files, with --tensorboard
"""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

from fmnist.arguments import argument, named, setting
from fmnist.errors import CheckpointError
from fmnist.files import atomic_write_json, atomic_write_text
from fmnist.training.config import TrainConfig
from fmnist.training.runtime import accelerator_record
from fmnist.version import __version__

METRIC_FIELDS = [
    "epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
    "lr", "seconds", "images_per_second", "eval_seconds",
    "wall_seconds",  # since the run started, every part of a resumed run counted; empty in older runs
]
REQUIRED_METRICS = METRIC_FIELDS[:5]  # what every version of fmnist wrote


def git_commit() -> str | None:
    """The commit of the fmnist checkout in use, if it is one."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def environment(device: torch.device) -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": metadata.version("torchvision"),  # importing it would cost 1.5 s
        "fmnist": __version__,
        "git_commit": git_commit(),
        "device": str(device),
        # The GPU's name, compute capability and CUDA/cuDNN versions: a run's timings belong to its card.
        "accelerator": accelerator_record(device),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
    }


def default_run_name(model: str) -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{model}"


def check_run_folder_free(config: TrainConfig) -> None:
    """Refuse, before any work, a run folder that create_run_folder could not make: a taken name, or
    an `out` that is a file."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"{argument('out', out)}: a file, not a folder; choose a folder for the runs")
    if config.name is not None and (out / config.name).exists():
        raise CheckpointError(f"run folder {out / config.name} already exists; choose another {named('name')} "
                              "or delete it")


def create_run_folder(config: TrainConfig) -> Path:
    """A new, empty folder for the run: `out/name`, or `out/<time>-<model>` without a name."""
    out = Path(config.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"{argument('out', out)}: cannot create the folder ({error.strerror}); "
                              "choose another") from None
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
        raise CheckpointError(f"run folder {path} already exists; choose another {named('name')} "
                              "or delete it") from None
    except OSError as error:
        raise CheckpointError(f"{argument('out', out)}: cannot create {path} ({error.strerror})") from None
    return path


def write_config(path: Path, config: TrainConfig, details: dict) -> None:
    """config.json: the resolved config and what else describes the run (environment, data, command)."""
    atomic_write_json(path / "config.json", {"config": config.to_dict(), "seed": config.seed, **details})


def write_csv(path: Path, fieldnames: list[str], rows: list[dict]) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, text.getvalue())


def write_metrics(path: Path, history: list[dict], learning_rates: list[float]) -> None:
    """metrics.csv (one row per epoch) and lr_steps.csv (one row per step)."""
    write_csv(path / "metrics.csv", METRIC_FIELDS, history)
    write_csv(path / "lr_steps.csv", ["step", "lr"],
              [{"step": step + 1, "lr": lr} for step, lr in enumerate(learning_rates)])


def write_summary(path: Path, summary: dict) -> None:
    atomic_write_json(path / "summary.json", summary)


def read_json(path: Path) -> dict:
    """A JSON object from the run folder; {} when the file is absent."""
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read it as JSON ({error}); the run folder may be damaged") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(value).__name__}, not an object; the run folder is damaged")
    return value


def read_saved_config(path: Path) -> dict:
    """config.json's contents: {'config': {...}, 'environment': ..., 'command': ...}."""
    saved = read_json(path / "config.json")
    if not isinstance(saved.get("config"), dict):
        raise CheckpointError(f"{path}: no readable config.json; is it a run folder of fmnist?")
    return saved


def read_summary(path: Path) -> dict:
    return read_json(path / "summary.json")


def recorded_test_accuracy(checkpoint: Path, model_name: str, epoch: int) -> float | None:
    """The test accuracy summary.json records for this checkpoint's weights, or None.

    summary.json describes best.pt, so it counts only when the checkpoint is of the same model and
    epoch (a last.pt of a later epoch, or a checkpoint copied out of its run folder, has none).
    """
    summary = read_summary(checkpoint.parent)
    accuracy = summary.get("test_accuracy")
    if summary.get("model") != model_name or summary.get("best_epoch") != epoch:
        return None
    return float(accuracy) if isinstance(accuracy, (int, float)) and not isinstance(accuracy, bool) else None


def recorded_test_summary(checkpoint: Path, model_name: str, epoch: int) -> dict:
    """summary.json when it describes this checkpoint's weights (see recorded_test_accuracy), else {}."""
    summary = read_summary(checkpoint.parent)
    if summary.get("model") != model_name or summary.get("best_epoch") != epoch:
        return {}
    return summary


def read_history(path: Path) -> list[dict]:
    """metrics.csv as rows of numbers: every column it has (epoch as int), and every column fmnist
    writes now, None where the file has no value (an older run, or a column added since)."""
    csv_path = path / "metrics.csv"
    if not csv_path.is_file():
        raise CheckpointError(f"{path}: no metrics.csv; is it a run folder of fmnist?")
    try:
        with csv_path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
        missing = [name for name in REQUIRED_METRICS if name not in columns]
        if missing:
            raise KeyError(f"no column {missing[0]}")
        columns += [name for name in METRIC_FIELDS if name not in columns]
        return [{key: metric_value(key, row.get(key)) for key in columns} for row in rows]
    except (OSError, ValueError, KeyError, TypeError, csv.Error) as error:
        raise CheckpointError(f"{csv_path}: damaged ({type(error).__name__}: {error}); "
                              "it is rewritten by resuming the run") from None


def metric_value(key: str, text: str | None) -> int | float | None:
    """A metrics.csv cell as a number; None for an empty cell (a value that row does not have)."""
    if key in REQUIRED_METRICS and not text:
        raise ValueError(f"{key} is empty")
    if text is None or text == "":
        return None
    return int(text) if key == "epoch" else float(text)


def read_learning_rates(path: Path) -> list[float]:
    csv_path = path / "lr_steps.csv"
    if not csv_path.is_file():
        return []
    try:
        with csv_path.open(newline="") as handle:
            return [float(row["lr"]) for row in csv.DictReader(handle)]
    except (OSError, ValueError, KeyError, TypeError, csv.Error):
        return []  # only the learning-rate figure needs it; a damaged file leaves that figure empty


def is_run_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def find_run_folders(root: Path, seen: set[Path] | None = None) -> list[Path]:
    """Every run folder at or beneath `root` (a runs/ folder with sweeps and studies inside), sorted;
    a run folder's own subfolders (tensorboard/) and hidden folders are not searched."""
    seen = set() if seen is None else seen
    real = root.resolve()
    if real in seen:  # a symbolic link back up the tree
        return []
    seen.add(real)
    if is_run_folder(root):
        return [root]
    try:
        children = sorted(child for child in root.iterdir() if child.is_dir() and not child.name.startswith("."))
    except OSError:
        return []
    return [run for child in children for run in find_run_folders(child, seen)]


RUN_FILES = ("config.json", "metrics.csv", "lr_steps.csv", "summary.json", "report.md", "best.pt", "last.pt", ".lock")


def check_output_file(out: Path, *, reads: list[Path], force: bool, owner: str, name: str = "out",
                      example: str = "model.onnx") -> None:
    """Refuse an output path that would destroy something: a file this command reads, a checkpoint
    or any file of a run folder (never, even with force), or an existing file (only with force).
    `owner` and `name` name the argument as its front door does: `--out x` or `export_onnx(out='x')`."""
    out = Path(out)
    given = argument(name, out, owner)
    if out.is_dir():
        raise CheckpointError(f"{given}: a folder; give a file name such as {out / example}")
    resolved = out.resolve()
    if any(resolved == Path(path).resolve() for path in reads):
        raise CheckpointError(f"{given}: that is the file this command reads; choose another name")
    if out.suffix == ".pt" or (is_run_folder(out.parent) and (out.name in RUN_FILES or out.suffix == ".png")):
        raise CheckpointError(f"{given}: would overwrite a checkpoint or a run's own file; choose another name")
    if out.exists() and not force:
        raise CheckpointError(f"{given}: already exists; pass {setting('force', True, owner)} to replace it, "
                              "or choose another name")
    if not out.parent.is_dir():
        raise CheckpointError(f"{given}: the folder {out.parent} does not exist; create it or choose another")
