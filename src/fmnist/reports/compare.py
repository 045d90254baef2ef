"""`fmnist compare RUN_DIR...`: runs side by side, as a table (printed, markdown, CSV) and one PNG of
validation curves; and the same per grid point with mean ± std over seeds, for `fmnist sweep`.
The table itself is fmnist.results.run_table, the one load_runs() gives as a DataFrame.

Everything is read from the run folders' own files, so runs made at different times, by train or
by sweep, compare the same way.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from fmnist.arguments import argument, check_bool, check_path, check_type, for_command_line, invalid, named, setting
from fmnist.errors import CheckpointError
from fmnist.files import atomic_write_text, check_writable
from fmnist.reports import plots
from fmnist.reports.report import markdown_table
from fmnist.results import CALIBRATION_COLUMNS, FIXED_COLUMNS, Run, find_runs, number, run_table
from fmnist.runs.folder import is_run_folder
from fmnist.training.config import TrainConfig

OWNER = "compare_runs"  # how errors name the arguments in Python (the CLI: --out, --sort, --descending)
# comparison.csv: snake_case names, plain numbers, empty cells where a run has no value (pandas reads
# it as numbers). The printed and markdown table: the same runs formatted for reading.
SHOWN = {  # CSV column -> (printed header, digits; None: as it is)
    "parameters": ("parameters", 0), "epochs_done": ("epochs", None), "best_val_accuracy": ("best val acc", 4),
    "test_accuracy": ("test acc", 4), "wall_seconds": ("wall s", 1), "images_per_second": ("images/s", 0),
}
# Test calibration, raw and after the run's temperature "(T)" (summary.json's flat keys).
CALIBRATION_SHOWN = {
    "test_ece": ("ECE", 4), "test_ece_calibrated": ("ECE (T)", 4), "test_brier": ("Brier", 4),
    "test_brier_calibrated": ("Brier (T)", 4), "test_nll": ("NLL", 4), "test_nll_calibrated": ("NLL (T)", 4),
}
assert list(CALIBRATION_SHOWN) == CALIBRATION_COLUMNS  # the CSV's columns, each with its printed header
SHOWN.update(CALIBRATION_SHOWN)
MEASURES = {  # grid column -> (Run attribute or summary key, digits)
    "best val acc": ("best_val_accuracy", 4),
    "test acc": ("test_accuracy", 4),
    "wall s": ("wall_seconds", 1),
    "images/s": ("images_per_second", 0),
}
MEASURES.update({header: (column, digits) for column, (header, digits) in CALIBRATION_SHOWN.items()})


def expand_run_dirs(paths: list[str | Path]) -> list[tuple[str, Run]]:
    """(label, run) for every run folder given or beneath a folder given (runs/, sweeps inside it too)."""
    return find_runs(paths, said_as="compare {}" if for_command_line() else f"{OWNER}(paths={{}})")


def formatted(value, digits: int | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if digits is None or isinstance(value, (bool, str)):
        return str(value)
    return f"{value:,.{digits}f}"


def notes(row: dict) -> str:
    """What makes a run not like the others: cut short by --limit-batches, stopped, diverged, resumed."""
    said = []
    if row["limit_batches"] is not None:
        said.append(f"cut to {row['limit_batches']} batches/epoch")
    if row["status"] != "finished":
        said.append(f"{row['status']} after epoch {row['epochs_done']}")
    if row["resumes"]:
        said.append(f"resumed {row['resumes']}x")
    return "; ".join(said) or "-"


def printed_rows(columns: list[str], rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    settings = [column for column in columns if column not in FIXED_COLUMNS]
    keys = ["run", "model", "recipe", *settings, *SHOWN]
    header = [SHOWN[key][0] if key in SHOWN else key for key in keys] + ["notes"]
    table = [[formatted(row[key], SHOWN[key][1] if key in SHOWN else None) for key in keys] + [notes(row)]
             for row in rows]
    return header, table


def csv_text(columns: list[str], rows: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows([{key: "" if value is None else value for key, value in row.items()} for row in rows])
    return text.getvalue()


def sort_rows(columns: list[str], rows: list[dict], sort_by: str | None, descending: bool) -> list[dict]:
    """Rows ordered by a column (runs without a value last), or as found."""
    if sort_by is None:
        return rows
    if sort_by not in columns:
        raise invalid("sort_by", sort_by, f"no such column; choose one of: {', '.join(columns)}", OWNER, as_typed=True)
    present = [row for row in rows if row[sort_by] is not None]
    missing = [row for row in rows if row[sort_by] is None]
    return sorted(present, key=lambda row: sort_key(row[sort_by]), reverse=descending) + missing


def sort_key(value) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def make_out_dir(out_dir: Path) -> Path:
    """The output folder, created if need be; never a run or sweep folder, whose own tables no
    command could regenerate."""
    given = argument("out_dir", out_dir, OWNER)
    if is_run_folder(out_dir) or (out_dir / "sweep.json").is_file():
        kind = "a run folder" if is_run_folder(out_dir) else "a sweep folder"
        raise CheckpointError(f"{given}: {kind}; comparisons are written elsewhere so that its own "
                              f"files stay as they are (e.g. {setting('out_dir', 'comparison', OWNER)})")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"{given}: cannot create the folder ({error.strerror}); choose another") from None
    check_writable(out_dir, named("out_dir", OWNER))
    return out_dir


def compare_runs(paths: str | Path | list[str | Path], out_dir: str | Path, sort_by: str | None = None,
                 descending: bool = False) -> str:
    """comparison.md, comparison.csv and comparison.png in out_dir; returns the table (markdown).

    The runs are every run folder given or beneath a folder given (one path or a list); the table has a
    column for each setting that differs between them, and notes on runs cut by --limit-batches, stopped
    or resumed. `sort_by` orders the rows by one of comparison.csv's columns (`descending` reverses it).
    """
    out_dir = check_path(out_dir, "out_dir", OWNER)
    if sort_by is not None:
        check_type(sort_by, str, "sort_by", OWNER, "a column name (str) or None")
    if check_bool(descending, "descending", OWNER) and sort_by is None:
        raise invalid("descending", descending, f"orders the rows by {named('sort_by', OWNER)}'s column; give "
                      f"{named('sort_by', OWNER)} too", OWNER)
    found = expand_run_dirs(paths)
    columns, rows = run_table(found)
    rows = sort_rows(columns, rows, sort_by, descending)
    out_dir = make_out_dir(out_dir)
    table = write_tables(columns, rows, out_dir, "comparison")
    runs = dict(found)
    plots.overlaid_curves({row["run"]: runs[row["run"]].history for row in rows}, out_dir / "comparison.png")
    return table


def write_tables(columns: list[str], rows: list[dict], out_dir: Path, stem: str) -> str:
    """`stem`.csv (numbers) and `stem`.md (formatted) of runs; returns the markdown table."""
    header, printed = printed_rows(columns, rows)
    table = markdown_table(header, printed)
    atomic_write_text(out_dir / f"{stem}.md", table + "\n")
    atomic_write_text(out_dir / f"{stem}.csv", csv_text(columns, rows))
    return table


# ---------------------------------------------------------------- mean ± std over seeds

def mean_std(values: list[float], digits: int) -> str:
    """'mean ± std' with the sample standard deviation (n - 1); a single value has no spread to show."""
    mean, std = mean_and_std(values)
    if mean is None:
        return "-"
    if std is None:
        return f"{mean:,.{digits}f}"
    return f"{mean:,.{digits}f} ± {std:,.{digits}f}"


def mean_and_std(values: list) -> tuple[float | None, float | None]:
    """The mean and sample standard deviation of the values present (std None for fewer than two)."""
    values = [value for value in values if value is not None]
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def grid_label(config: TrainConfig, keys: list[str]) -> str:
    return ", ".join(f"{key}={getattr(config, key)}" for key in keys) if keys else "all runs"


def group_by_grid_point(runs: list[Run], keys: list[str]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(grid_label(run.config, keys), []).append(run)
    return groups


def measure(run: Run, key: str) -> float | None:
    return getattr(run, key) if hasattr(run, key) else number(run.summary.get(key))


def grid_rows(label: str, runs: list[Run]) -> tuple[dict, dict]:
    """One grid point's printed row (mean ± std) and its CSV row (mean and std as numbers)."""
    finished = sum(1 for run in runs if run.test_accuracy is not None)
    printed = {"grid point": label, "runs": len(runs), "finished": finished}
    numbers = {"grid_point": label, "runs": len(runs), "finished": finished}
    for column, (key, digits) in MEASURES.items():
        values = [measure(run, key) for run in runs]
        printed[column] = mean_std(values, digits)
        numbers[f"{key}_mean"], numbers[f"{key}_std"] = mean_and_std(values)
    return printed, numbers


def mean_curve(runs: list[Run]) -> list[dict]:
    """Validation accuracy and loss per epoch, averaged over the runs that reached that epoch."""
    epochs = max((len(run.history) for run in runs), default=0)
    curve = []
    for index in range(epochs):
        rows = [run.history[index] for run in runs if len(run.history) > index]
        point = {"epoch": rows[0]["epoch"]}
        for metric in ("val_accuracy", "val_loss"):
            values = [row[metric] for row in rows]
            point[metric] = statistics.mean(values)
            point[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        curve.append(point)
    return curve


def compare_grid(paths: list[str | Path], keys: list[str], out_dir: str | Path) -> str:
    """Per run (runs.md/.csv) and per grid point with mean ± std over seeds (comparison.md/.csv, .png)."""
    found = expand_run_dirs(paths)
    out_dir = Path(out_dir)
    write_tables(*run_table(found), out_dir, "runs")
    groups = group_by_grid_point([run for _, run in found], keys)
    printed, numbers = zip(*(grid_rows(label, group) for label, group in groups.items()), strict=True)
    header = ["grid point", "runs", "finished", *MEASURES]
    table = markdown_table(header, [[row[column] for column in header] for row in printed])
    atomic_write_text(out_dir / "comparison.md", table + "\n")
    atomic_write_text(out_dir / "comparison.csv", csv_text(list(numbers[0]), list(numbers)))
    plots.overlaid_curves({label: mean_curve(group) for label, group in groups.items()}, out_dir / "comparison.png")
    return table
