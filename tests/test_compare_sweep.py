"""`fmnist sweep` runs a grid times seeds and compares it with mean ± std; `fmnist compare` tabulates runs."""

from __future__ import annotations

import csv
import json
import statistics

import pytest

from conftest import write_dataset
from fmnist.cli import main
from fmnist.reports.compare import mean_std
from fmnist.tools.sweep import parse_set, plan_sweep

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A 2-point grid (two learning rates) x 2 seeds on generated data: 4 very short runs."""
    root = tmp_path_factory.mktemp("sweep")
    data_dir = write_dataset(root / "data")
    status = main([
        "sweep", "--set", "lr=1e-3,3e-3", "--seeds", "2", "--scheduler", "steplr", "--epochs", "2",
        "--limit-batches", "2", "--batch-size", "50", "--val-size", "100", "--data-dir", str(data_dir),
        "--allow-unverified-data",
        "--out", str(root / "sweeps"), "--name", "lr-study",
    ])
    assert status == 0
    return root / "sweeps" / "lr-study", data_dir


def read_csv(path):
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_sweep_runs_every_grid_point_and_seed(sweep):
    sweep_dir, _ = sweep
    names = sorted(path.name for path in sweep_dir.iterdir() if path.is_dir())
    assert names == ["lr=0.001,seed=42", "lr=0.001,seed=43", "lr=0.003,seed=42", "lr=0.003,seed=43"]
    config = json.loads((sweep_dir / "lr=0.003,seed=43" / "config.json").read_text())["config"]
    assert (config["lr"], config["seed"], config["scheduler"], config["epochs"]) == (0.003, 43, "steplr", 2)
    assert (sweep_dir / "lr=0.003,seed=43" / "report.md").is_file()
    assert len(read_csv(sweep_dir / "runs.csv")) == 4


def test_sweep_table_has_mean_and_std_over_seeds(sweep):
    sweep_dir, _ = sweep
    rows = {row["grid_point"]: row for row in read_csv(sweep_dir / "comparison.csv")}
    assert set(rows) == {"lr=0.001", "lr=0.003"}
    table = (sweep_dir / "comparison.md").read_text()
    for lr in ("0.001", "0.003"):
        accuracies = [
            json.loads((sweep_dir / f"lr={lr},seed={seed}" / "summary.json").read_text())["test_accuracy"]
            for seed in (42, 43)
        ]
        row = rows[f"lr={lr}"]  # numbers in the CSV, formatted in the markdown table
        assert float(row["test_accuracy_mean"]) == pytest.approx(statistics.mean(accuracies))
        assert float(row["test_accuracy_std"]) == pytest.approx(statistics.stdev(accuracies))
        assert row["runs"] == "2" and float(row["best_val_accuracy_std"]) >= 0
        assert f"{statistics.mean(accuracies):.4f} ± {statistics.stdev(accuracies):.4f}" in table
    assert table.startswith("| grid point | runs | finished | best val acc | test acc | wall s | images/s |")
    assert (sweep_dir / "comparison.png").read_bytes().startswith(PNG_SIGNATURE)


def test_compare_tabulates_runs_and_draws_their_curves(sweep, tmp_path, capsys):
    sweep_dir, _ = sweep
    runs = [sweep_dir / "lr=0.001,seed=42", sweep_dir / "lr=0.003,seed=43"]
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    printed = capsys.readouterr().out
    # The settings that differ (lr and seed here) are columns; runs cut by --limit-batches say so.
    assert ("| run | model | recipe | lr | seed | parameters | epochs | best val acc | test acc | wall s | images/s "
            "| ECE | ECE (T) | Brier | Brier (T) | NLL | NLL (T) | notes |") in printed
    assert "cut to 2 batches/epoch" in printed
    rows = read_csv(tmp_path / "cmp" / "comparison.csv")
    assert [row["run"] for row in rows] == [run.name for run in runs]
    summary = json.loads((runs[1] / "summary.json").read_text())
    assert float(rows[1]["test_accuracy"]) == summary["test_accuracy"]  # numbers, as recorded
    assert rows[1]["parameters"] == str(summary["parameters"]) and rows[1]["epochs_done"] == "2"
    assert (rows[1]["lr"], rows[1]["seed"], rows[1]["limit_batches"], rows[1]["status"]) == ("0.003", "43", "2",
                                                                                             "finished")
    assert rows[1]["recipe"] == ""  # missing values are empty cells
    assert (tmp_path / "cmp" / "comparison.png").read_bytes().startswith(PNG_SIGNATURE)
    # A folder of runs stands for all of them, at any depth: the sweep inside its parent folder too.
    assert main(["compare", str(sweep_dir.parent), "--out", str(tmp_path / "all"), "--sort", "test_accuracy",
                 "--descending"]) == 0
    rows = read_csv(tmp_path / "all" / "comparison.csv")
    assert len(rows) == 4 and all(row["run"].startswith("lr-study/") for row in rows)
    accuracies = [float(row["test_accuracy"]) for row in rows]
    assert accuracies == sorted(accuracies, reverse=True)


def test_compare_refuses_an_unknown_sort_column_before_writing(sweep, tmp_path, capsys):
    sweep_dir, _ = sweep
    assert main(["compare", str(sweep_dir), "--out", str(tmp_path / "cmp"), "--sort", "accuracy"]) == 2
    err = capsys.readouterr().err
    assert "--sort accuracy: no such column; choose one of: run, model" in err and err.count("\n") == 1
    assert not (tmp_path / "cmp").exists()
    assert main(["compare", str(sweep_dir), "--out", str(tmp_path / "cmp"), "--descending"]) == 2
    assert "--descending" in capsys.readouterr().err and not (tmp_path / "cmp").exists()


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--set", "lrr=1e-3"], "unknown key 'lrr'"),
        (["--set", "lr=fast"], "--set lr=fast: --lr 'fast': not a valid float"),
        (["--set", "epochs=1.5"], "--set epochs=1.5: --epochs '1.5': not a valid int"),
        (["--set", "model=affine-cnn,nope"], "unknown model"),
        (["--set", "lr=1e-3", "--set", "lr=2e-3"], "lr is set twice"),
        (["--set", "lr"], "expected KEY=VALUE"),
        (["--set", "name=a,b"], "names its runs itself"),
        (["--seeds", "0"], "--seeds 0"),
    ],
)
def test_bad_sweep_input_is_one_line_before_anything_runs(arguments, fragment, tmp_path, capsys):
    assert main(["sweep", *arguments, "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err
    assert not (tmp_path / "out").exists()


def test_set_values_take_the_field_type():
    assert parse_set("lr=1e-3,2e-3") == ("lr", [0.001, 0.002])
    assert parse_set("nesterov=true,no") == ("nesterov", [True, False])
    assert parse_set("limit-batches=none,5") == ("limit_batches", [None, 5])
    assert parse_set("scheduler=steplr,cosine") == ("scheduler", ["steplr", "cosine"])


def test_mean_std_uses_the_sample_standard_deviation():
    assert mean_std([0.8, 0.9, 1.0], 3) == "0.900 ± 0.100"
    assert mean_std([0.85], 2) == "0.85"
    assert mean_std([None], 2) == "-"


def test_set_recipe_compares_whole_recipes_and_is_planned_before_running(tmp_path):
    sweep_dir, grid, planned = plan_sweep(
        None, {"out": str(tmp_path), "name": "recipes"}, ["recipe=affine-onecycle,affine-steplr"], seeds=2,
    )
    assert sweep_dir == tmp_path / "recipes" and not sweep_dir.exists()
    assert grid == {"recipe": ["affine-onecycle", "affine-steplr"]}
    assert [run.name for run in planned] == [
        "recipe=affine-onecycle,seed=42", "recipe=affine-onecycle,seed=43",
        "recipe=affine-steplr,seed=42", "recipe=affine-steplr,seed=43",
    ]
    assert [run.config.scheduler for run in planned] == ["onecycle", "onecycle", "steplr", "steplr"]
    assert {run.config.out for run in planned} == {str(sweep_dir)}


def test_a_diverging_run_is_recorded_and_the_sweep_finishes(tiny_data, tmp_path):
    status = main([
        "sweep", "--set", "lr=1e12", "--optimizer", "sgd", "--scheduler", "none", "--epochs", "1",
        "--limit-batches", "3", "--batch-size", "50", "--val-size", "100",
        "--data-dir", str(tiny_data), "--allow-unverified-data",
        "--out", str(tmp_path), "--name", "diverge",
    ])
    assert status == 0
    [row] = read_csv(tmp_path / "diverge" / "comparison.csv")
    assert (row["runs"], row["finished"], row["test_accuracy_mean"]) == ("1", "0", "")
    [run] = read_csv(tmp_path / "diverge" / "runs.csv")
    assert (run["status"], run["epochs_done"], run["test_accuracy"]) == ("diverged", "0", "")
