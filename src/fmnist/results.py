"""Runs as data: a run folder as a Python object, and a folder of runs as one table.

    run = load_run("runs/fast")                 # what train() and resume() return, too
    plt.plot(run.history["epoch"], run.history["val_accuracy"])
    run.evaluate().accuracy, run.predict(images).probabilities
    table = load_runs("runs")                   # every run beneath, sweeps included: a pandas DataFrame

Everything is read from the run folder's own files (config.json, metrics.csv, summary.json and the
checkpoints), so a run made by `fmnist train`, a sweep, a search or an older fmnist reads the same way,
and nothing is ever written. `fmnist compare` builds its table here too (reports/compare.py).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fmnist.arguments import shown
from fmnist.errors import CheckpointError, ConfigError
from fmnist.inference import (
    CheckpointEvaluation,
    Predictions,
    TrainedModel,
    check_batch_size,
    evaluate_checkpoint,
    load_model,
    predict,
)
from fmnist.models.registry import how_to_make_known
from fmnist.runs.folder import (
    METRIC_FIELDS,
    find_run_folders,
    is_run_folder,
    read_history,
    read_saved_config,
    read_summary,
)
from fmnist.training.config import EVAL_BATCH_SIZE, FIELDS, TrainConfig

if TYPE_CHECKING:
    import pandas

CHECKPOINTS = ("best", "last")


class History(list):
    """metrics.csv: one dict per epoch, oldest first, every column a number (None where a row has no value).

    `history["val_accuracy"]` is one column as a list, ready to plot against `history["epoch"]`;
    `pandas.DataFrame(history)` is the table.
    """

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.columns:
                raise ConfigError(f"history[{key!r}]: no such column; columns: {', '.join(self.columns)}", "key")
            return [row.get(key) for row in self]
        return super().__getitem__(key)

    @property
    def columns(self) -> list[str]:
        return list(self[0]) if self else list(METRIC_FIELDS)

    def __repr__(self) -> str:
        return f"History({len(self)} epochs; columns {', '.join(self.columns)})"


@dataclass(repr=False, eq=False)
class Run:
    """A run folder as data. `config` is its TrainConfig, `history` its metrics.csv (History), `summary`
    its summary.json ({} while it has not finished) and `details` the rest of config.json (environment,
    data, the command, its resumes). The figures of a finished run are properties: `test_accuracy`,
    `test_loss`, `best_epoch`, `best_val_accuracy`, `wall_seconds` (None where the run has none yet).
    """

    path: Path
    config: TrainConfig
    history: History
    summary: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def status(self) -> str:
        """"finished", "diverged" (its loss became NaN; summary.json says when) or "stopped" (resumable)."""
        if self.summary.get("diverged"):
            return "diverged"
        return "finished" if self.summary.get("finished") is True else "stopped"

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    @property
    def resumes(self) -> int:
        """How many times the run was resumed after a stop."""
        resumes = self.details.get("resumes")
        return len(resumes) if isinstance(resumes, list) else 0

    @property
    def test_accuracy(self) -> float | None:
        return number(self.summary.get("test_accuracy"))

    @property
    def test_loss(self) -> float | None:
        return number(self.summary.get("test_loss"))

    @property
    def best_epoch(self) -> int | None:
        """The epoch whose weights are in best.pt: the first with the highest validation accuracy."""
        recorded = self.summary.get("best_epoch")
        if isinstance(recorded, int) and not isinstance(recorded, bool):
            return recorded
        best = self.best_row()
        return best["epoch"] if best else None

    @property
    def best_val_accuracy(self) -> float | None:
        recorded = number(self.summary.get("best_val_accuracy"))
        if recorded is not None:
            return recorded
        best = self.best_row()
        return best["val_accuracy"] if best else None

    @property
    def wall_seconds(self) -> float | None:
        """Wall time from start to the final test, every part of a resumed run added up; for a run still
        stopped, up to its last recorded epoch."""
        recorded = number(self.summary.get("wall_seconds"))
        if recorded is not None:
            return recorded
        return self.history[-1].get("wall_seconds") if self.history else None

    @property
    def stopped_early(self) -> str | None:
        """Why training ended before its last epoch (early stopping, or a callback's StopTraining); else None."""
        reason = self.summary.get("stopped_early")
        return reason if isinstance(reason, str) else None

    @property
    def parameters(self) -> int | None:
        count = self.summary.get("parameters")
        return count if isinstance(count, int) and not isinstance(count, bool) else None

    def best_row(self) -> dict | None:
        return max(self.history, key=lambda row: row["val_accuracy"]) if self.history else None

    def model(self, which: str = "best") -> TrainedModel:
        """The trained model of best.pt (the best validation epoch) or last.pt, in eval mode on the CPU."""
        return load_model(self.checkpoint(which))

    def evaluate(self, which: str = "best", *, data_dir: str | os.PathLike | None = None, device: str = "auto",
                 batch_size: int = EVAL_BATCH_SIZE,
                 allow_unverified_data: bool | None = None) -> CheckpointEvaluation:
        """The checkpoint's model on the test split (accuracy, loss, per-image probabilities), as the run
        itself tested it. The run's data folder and its `allow_unverified_data` apply unless given."""
        checkpoint = self.checkpoint(which)
        if allow_unverified_data is None:
            allow_unverified_data = bool(self.config.allow_unverified_data)
        elif not isinstance(allow_unverified_data, bool):
            raise ConfigError(f"Run.evaluate(allow_unverified_data={shown(allow_unverified_data)}): give True or False",
                              "allow_unverified_data")
        return evaluate_checkpoint(checkpoint, data_dir, device, batch_size, allow_unverified_data)

    def predict(self, images_or_paths, which: str = "best", *, invert: bool = True, skip_unreadable: bool = False,
                batch_size: int = EVAL_BATCH_SIZE) -> Predictions:
        """Class probabilities from the checkpoint's model: see fmnist.predict for what it takes."""
        check_batch_size(batch_size, "Run.predict")
        return predict(self.model(which), images_or_paths, invert=invert, skip_unreadable=skip_unreadable,
                       batch_size=batch_size)

    def checkpoint(self, which: str) -> Path:
        if not isinstance(which, str) or which not in CHECKPOINTS:
            raise ConfigError(f"Run.checkpoint(which={shown(which)}): "
                              "give 'best' (the best validation epoch) or 'last'", "which")
        path = self.path / f"{which}.pt"
        if not path.is_file():
            state = "it stopped before its first epoch ended" if not self.history else "the file is missing"
            raise CheckpointError(f"{path}: no {which}.pt in this run ({state})")
        return path

    def __repr__(self) -> str:
        epochs = f"{len(self.history)}/{self.config.epochs}" if self.config.epochs else str(len(self.history))
        tested = f", test_accuracy={self.test_accuracy:.4f}" if self.test_accuracy is not None else ""
        return f"Run({str(self.path)!r}, {self.config.model}, {self.status}, epochs {epochs}{tested})"


def number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def as_path(value, function: str, argument: str) -> Path:
    if isinstance(value, bool) or not isinstance(value, (str, os.PathLike)):
        raise CheckpointError(f"{function}({argument}={shown(value)}): not a path; give a folder (a str or a Path)")
    try:
        path = Path(value)
    except TypeError:  # an os.PathLike whose __fspath__ returns something else
        raise CheckpointError(f"{function}({argument}={shown(value)}): not a path; give a str or a Path") from None
    if "\x00" in str(path) or not str(value):
        raise CheckpointError(f"{function}({argument}={shown(value)}): not a usable path; give a run folder")
    return path


def load_run(path: str | os.PathLike) -> Run:
    """The run in the folder `path` (one that `fmnist train` made), read without changing anything."""
    folder = as_path(path, "load_run", "path")
    if not folder.is_dir():
        what = "not a folder (give the run folder, not a file in it)" if folder.exists() else "no such run folder"
        raise CheckpointError(f"load_run(path={str(folder)!r}): {what}; check the path")
    if not is_run_folder(folder):
        inside = find_run_folders(folder)
        hint = f"; it holds {len(inside)} runs: load_runs({str(folder)!r}) reads them all" if inside else ""
        raise CheckpointError(f"load_run(path={str(folder)!r}): not a run folder (no config.json){hint}")
    return read_run(folder)


def read_run(folder: Path) -> Run:
    saved = read_saved_config(folder)
    config = saved_config(folder, saved)
    # A run stopped in its first epoch (a diverging sweep point, say) has no metrics.csv yet.
    history = History(read_history(folder) if (folder / "metrics.csv").is_file() else [])
    details = {key: value for key, value in saved.items() if key != "config"}
    return Run(folder, config, history, read_summary(folder), details)


def saved_config(folder: Path, saved: dict) -> TrainConfig:
    try:
        return TrainConfig.from_saved(saved["config"])
    except ConfigError as error:
        model = saved["config"].get("model")
        if error.field == "model" and isinstance(model, str):
            origin = saved.get("model_origin") if isinstance(saved.get("model_origin"), dict) else None
            raise CheckpointError(f"{folder}: a run of the model {model!r}, which is not registered in this process; "
                                  f"{how_to_make_known(model, origin)}") from None
        raise CheckpointError(f"{folder}/config.json: not a valid config ({error}); "
                              "the run folder is damaged") from None


def find_runs(folders, said_as: str = "load_runs(folder={})") -> list[tuple[str, Run]]:
    """(label, run) for every run at or beneath each folder, labelled by its path below the folder given
    (the whole path where two labels would be the same). `said_as` names the argument in errors."""
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    elif not isinstance(folders, Iterable) or isinstance(folders, (bytes, dict)):
        raise CheckpointError(f"{said_as.format(shown(folders))}: not a path; give a folder of runs "
                              "(a str or a Path), or a list of them")
    found = []
    for given in list(folders):
        if isinstance(given, bool) or not isinstance(given, (str, os.PathLike)) or not str(given) \
                or "\x00" in str(given):
            raise CheckpointError(f"{said_as.format(shown(given))}: not a path; "
                                  "give a folder of runs (a str or a Path)")
        folder = Path(given)
        if not folder.is_dir():
            what = "not a folder" if folder.exists() else "no such folder"
            raise CheckpointError(f"{said_as.format(repr(str(folder)))}: {what}; give a folder of run folders")
        runs = find_run_folders(folder)
        if not runs:
            raise CheckpointError(f"{said_as.format(repr(str(folder)))}: no run folder (one with config.json) "
                                  "at or beneath it; check the path")
        for run_path in runs:
            label = run_path.name if run_path == folder else run_path.relative_to(folder).as_posix()
            found.append((label, read_run(run_path)))
    if not found:
        raise CheckpointError(f"{said_as.format('[]')}: no folders given; give a folder of runs")
    labels = [label for label, _ in found]
    return [(str(run.path) if labels.count(label) > 1 else label, run) for label, run in found]


# ---------------------------------------------------------------- one table of runs

NOT_SETTINGS = ("name", "out")  # differ for every run by construction
# Test calibration (summary.json's flat keys): raw, and after the run's temperature ("_calibrated").
CALIBRATION_COLUMNS = [f"test_{measure}{after}" for measure in ("ece", "brier", "nll") for after in ("", "_calibrated")]
FIXED_COLUMNS = ["run", "model", "recipe", "status", "resumes", "limit_batches", "epochs_done", "best_epoch",
                 "best_val_accuracy", "test_accuracy", "test_loss", "parameters", "wall_seconds", "images_per_second",
                 *CALIBRATION_COLUMNS, "path"]


def differing_settings(runs: list[Run]) -> list[str]:
    """The config options whose values are not the same in every run (what a sweep varied), in
    TrainConfig's order; the run's name and folder are left out, and so are the table's own columns."""
    configs = [run.config.to_dict() for run in runs]
    return [name for name in FIELDS if name not in NOT_SETTINGS and name not in FIXED_COLUMNS
            and len({repr(config.get(name)) for config in configs}) > 1]


def run_table(found: list[tuple[str, Run]]) -> tuple[list[str], list[dict]]:
    """The columns and one row per run: plain numbers (None where missing) and the settings that differ."""
    runs = [run for _, run in found]
    settings = differing_settings(runs)
    columns = [*FIXED_COLUMNS[:3], *settings, *FIXED_COLUMNS[3:]]
    rows = []
    for label, run in found:
        row = {
            "run": label, "model": run.config.model, "recipe": run.config.recipe, "status": run.status,
            "resumes": run.resumes, "limit_batches": run.config.limit_batches, "epochs_done": len(run.history),
            "best_epoch": run.best_epoch, "best_val_accuracy": run.best_val_accuracy,
            "test_accuracy": run.test_accuracy, "test_loss": run.test_loss, "parameters": run.parameters,
            "wall_seconds": run.wall_seconds, "images_per_second": number(run.summary.get("images_per_second")),
            "path": str(run.path),
            **{key: number(run.summary.get(key)) for key in CALIBRATION_COLUMNS},
        }
        row.update({name: getattr(run.config, name) for name in settings})
        rows.append({column: row[column] for column in columns})
    return columns, rows


def load_runs(folder) -> pandas.DataFrame:
    """Every run at or beneath `folder` (or each of a list of folders), sweeps and searches included, as
    one pandas DataFrame: a row per run, numeric columns (NaN where a run has no value yet), and a
    column for each setting that differs between the runs. Needs pandas: pip install 'fmnist[pandas]'.
    """
    found = find_runs(folder)
    try:
        import pandas
    except ImportError:
        raise ConfigError("load_runs needs pandas: pip install 'fmnist[pandas]' (or pandas itself)") from None
    columns, rows = run_table(found)
    table = pandas.DataFrame.from_records(rows, columns=columns)
    for column in ("best_epoch", "epochs_done", "resumes", "parameters", "limit_batches"):
        if table[column].notna().all():
            table[column] = table[column].astype("int64")
        else:
            table[column] = pandas.to_numeric(table[column])  # NaN where missing, as float
    for column in ("best_val_accuracy", "test_accuracy", "test_loss", "wall_seconds", "images_per_second"):
        table[column] = pandas.to_numeric(table[column]).astype("float64")
    return table


