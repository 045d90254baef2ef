"""`fmnist compare RUN_DIR...`: runs side by side, as a table (printed, markdown, CSV) and one PNG of
validation curves; and the same per grid point with mean ± std over seeds, for `fmnist sweep`.

Everything is read from the run folders' own files, so runs made at different times, by train or
by sweep, compare the same way.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass
from pathlib import Path

from fmnist.errors import CheckpointError
from fmnist.files import atomic_write_text
from fmnist.reports import plots
from fmnist.reports.report import markdown_table
from fmnist.runs.folder import is_run_folder, read_history, read_saved_config, read_summary

MEASURES = {  # column -> (summary key, digits)
    "best val acc": ("best_val_accuracy", 4),
    "test acc": ("test_accuracy", 4),
    "wall s": ("wall_seconds", 1),
    "images/s": ("images_per_second", 0),
}
# Test calibration, raw and after the run's temperature "(T)": report.py's flat summary keys.
CALIBRATION_MEASURES = {f"{label}{after}": (f"test_{key}{suffix}", 4)
                        for label, key in (("ECE", "ece"), ("Brier", "brier"), ("NLL", "nll"))
                        for after, suffix in (("", ""), (" (T)", "_calibrated"))}
MEASURES.update(CALIBRATION_MEASURES)
RUN_COLUMNS = ["run", "model", "recipe", "parameters", "epochs", "best val acc", "test acc", "wall s", "images/s",
               *CALIBRATION_MEASURES]


@dataclass
class RunRecord:
    path: Path
    config: dict  # the resolved TrainConfig as saved in config.json
    summary: dict  # empty when the run did not finish
    history: list[dict]  # metrics.csv rows


def load_run(path: Path) -> RunRecord:
    saved = read_saved_config(path)
    # A run stopped in its first epoch (e.g. a diverging sweep point) has no metrics.csv yet.
    history = read_history(path) if (path / "metrics.csv").is_file() else []
    return RunRecord(path, saved["config"], read_summary(path), history)


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run folders as given; a folder of run folders (a sweep, or runs/) stands for its runs."""
    found = []
    for path in map(Path, paths):
        if is_run_folder(path):
            found.append(path)
            continue
        inner = sorted(child for child in path.iterdir() if is_run_folder(child)) if path.is_dir() else []
        if not inner:
            raise CheckpointError(f"{path}: not a run folder (no config.json) and holds none; check the path")
        found.extend(inner)
    return found


def number(value, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def run_row(record: RunRecord) -> dict:
    summary = record.summary
    best_val = summary.get("best_val_accuracy")
    if best_val is None and record.history:  # an unfinished run still has its validation curve
        best_val = max(row["val_accuracy"] for row in record.history)
    return {
        "run": record.path.name,
        "model": record.config.get("model", "-"),
        "recipe": record.config.get("recipe") or "-",
        "parameters": f"{summary['parameters']:,}" if "parameters" in summary else "-",
        "epochs": len(record.history),
        "best val acc": number(best_val, 4),
        "test acc": number(summary.get("test_accuracy"), 4),
        "wall s": number(summary.get("wall_seconds"), 1),
        "images/s": number(summary.get("images_per_second"), 0),
        **{column: number(summary.get(key), digits) for column, (key, digits) in CALIBRATION_MEASURES.items()},
    }


def write_table(rows: list[dict], columns: list[str], out_dir: Path, stem: str) -> str:
    """Write `stem`.md and `stem`.csv into out_dir; return the markdown table."""
    table = markdown_table(columns, [[row[column] for column in columns] for row in rows])
    atomic_write_text(out_dir / f"{stem}.md", table + "\n")
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_dir / f"{stem}.csv", text.getvalue())
    return table


def make_out_dir(out_dir: str | Path) -> Path:
    """The output folder, created if need be; never a run or sweep folder, whose own tables no
    command could regenerate."""
    out_dir = Path(out_dir)
    if is_run_folder(out_dir) or (out_dir / "sweep.json").is_file():
        kind = "a run folder" if is_run_folder(out_dir) else "a sweep folder"
        raise CheckpointError(f"--out {out_dir}: {kind}; comparisons are written elsewhere so that its own "
                              "files stay as they are (e.g. --out comparison)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"--out {out_dir}: cannot create the folder ({error.strerror}); choose another") from None
    return out_dir


def compare_runs(paths: list[str | Path], out_dir: str | Path) -> str:
    """comparison.md, comparison.csv and comparison.png in out_dir; returns the table."""
    records = [load_run(path) for path in expand_run_dirs(paths)]
    out_dir = make_out_dir(out_dir)
    rows = [run_row(record) for record in records]
    labels = unique_labels([record.path for record in records])
    for row, label in zip(rows, labels, strict=True):
        row["run"] = label
    table = write_table(rows, RUN_COLUMNS, out_dir, "comparison")
    plots.overlaid_curves(dict(zip(labels, [record.history for record in records], strict=True)),
                          out_dir / "comparison.png")
    return table


def unique_labels(paths: list[Path]) -> list[str]:
    """Each run's folder name, with as much of its parent path as it takes to tell equal names apart."""
    labels = [path.name for path in paths]
    depth = 1
    while len(set(labels)) < len(labels) and depth < 8:
        depth += 1
        labels = ["/".join(path.resolve().parts[-depth:]) for path in paths]
    if len(set(labels)) < len(labels):  # the same folder given twice
        labels = [f"{label} ({index + 1})" for index, label in enumerate(labels)]
    return labels


# ---------------------------------------------------------------- mean ± std over seeds

def mean_std(values: list[float], digits: int) -> str:
    """'mean ± std' with the sample standard deviation (n - 1); a single value has no spread to show."""
    values = [value for value in values if value is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:,.{digits}f}"
    return f"{statistics.mean(values):,.{digits}f} ± {statistics.stdev(values):,.{digits}f}"


def grid_label(config: dict, keys: list[str]) -> str:
    return ", ".join(f"{key}={config.get(key)}" for key in keys) if keys else "all runs"


def group_by_grid_point(records: list[RunRecord], keys: list[str]) -> dict[str, list[RunRecord]]:
    groups: dict[str, list[RunRecord]] = {}
    for record in records:
        groups.setdefault(grid_label(record.config, keys), []).append(record)
    return groups


def grid_row(label: str, records: list[RunRecord]) -> dict:
    finished = sum(1 for record in records if "test_accuracy" in record.summary)
    row = {"grid point": label, "runs": len(records), "finished": finished}
    for column, (key, digits) in MEASURES.items():
        row[column] = mean_std([record.summary.get(key) for record in records], digits)
    return row


def mean_curve(records: list[RunRecord]) -> list[dict]:
    """Validation accuracy and loss per epoch, averaged over the runs that reached that epoch."""
    epochs = max((len(record.history) for record in records), default=0)
    curve = []
    for index in range(epochs):
        rows = [record.history[index] for record in records if len(record.history) > index]
        point = {"epoch": rows[0]["epoch"]}
        for metric in ("val_accuracy", "val_loss"):
            values = [row[metric] for row in rows]
            point[metric] = statistics.mean(values)
            point[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        curve.append(point)
    return curve


def compare_grid(paths: list[str | Path], keys: list[str], out_dir: str | Path) -> str:
    """Per run (runs.md/.csv) and per grid point with mean ± std over seeds (comparison.md/.csv, .png)."""
    records = [load_run(path) for path in expand_run_dirs(paths)]
    out_dir = Path(out_dir)
    write_table([run_row(record) for record in records], RUN_COLUMNS, out_dir, "runs")
    groups = group_by_grid_point(records, keys)
    columns = ["grid point", "runs", "finished", *MEASURES]
    table = write_table([grid_row(label, group) for label, group in groups.items()], columns, out_dir, "comparison")
    plots.overlaid_curves({label: mean_curve(group) for label, group in groups.items()}, out_dir / "comparison.png")
    return table
