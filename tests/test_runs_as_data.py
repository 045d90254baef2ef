"""Runs as data: load_run's Run (config, history, summary, model, evaluate, predict), what train() and
resume() return, load_runs' table, and run folders written by older versions of fmnist."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

import fmnist
from conftest import fmnist_process, snapshot, tiny_train_args, write_dataset
from fmnist import TrainConfig, load_run, load_runs, train
from fmnist.reports.compare import compare_runs
from fmnist.reports.report import observations, smoothing_floor
from fmnist.runs.folder import METRIC_FIELDS
from fmnist.training.metrics import classification_metrics, confusion_matrix


def tiny_config(root, name, **options) -> TrainConfig:
    values = {"epochs": 2, "batch_size": 50, "limit_batches": 3, "val_size": 100, "device": "cpu",
              "data_dir": str(root / "data"), "allow_unverified_data": True, "out": str(root / "runs"), "name": name}
    return TrainConfig(**{**values, **options})


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    """runs/ with one run, a 'sweep' folder of two runs inside it, and a run stopped after epoch 1."""
    root = tmp_path_factory.mktemp("runs-as-data")
    write_dataset(root / "data")
    first = train(tiny_config(root, "first"))
    for lr in (0.01, 0.03):
        train(tiny_config(root, f"lr={lr}", out=str(root / "runs" / "study"), scheduler="cosine", lr=lr, epochs=1))
    stopped = fmnist_process(tiny_train_args(root / "data", root / "runs", "stopped", epochs=3),
                             kill_at="write-metrics.csv:2")
    assert stopped.returncode != 0
    return root, first


def test_train_returns_the_run_with_its_history_and_the_old_result_fields(runs_root):
    root, run = runs_root
    assert isinstance(run, fmnist.Run) and isinstance(run.config, TrainConfig) and run.status == "finished"
    summary = json.loads((run.path / "summary.json").read_text())
    assert (run.test_accuracy, run.test_loss, run.best_epoch) == (summary["test_accuracy"], summary["test_loss"],
                                                                  summary["best_epoch"])
    assert run.best_val_accuracy == summary["best_val_accuracy"] and run.wall_seconds == summary["wall_seconds"]
    assert run.history.columns == METRIC_FIELDS and run.history["epoch"] == [1, 2]
    assert all(isinstance(value, float) for value in run.history["val_accuracy"])
    assert run.history[-1]["wall_seconds"] <= run.wall_seconds  # the final test comes after the last epoch
    assert len(repr(run)) < 200 and len(repr(run.history)) < 200


def test_load_run_reads_the_same_run_and_its_models_evaluate_and_predict(runs_root):
    root, trained = runs_root
    before = snapshot(trained.path)
    run = load_run(trained.path)
    assert run.history == trained.history and run.config == trained.config
    assert run.model("last").info["epoch"] == 2 and run.model().info["epoch"] == run.best_epoch
    evaluation = run.evaluate()  # the run's own data folder and allow_unverified_data
    assert evaluation.accuracy == pytest.approx(run.test_accuracy)
    assert evaluation.probabilities.shape == (200, 10) and len(repr(evaluation)) < 200
    assert len(repr(evaluation.result)) < 120
    test = fmnist.load_splits(root / "data", val_size=100, verify=False).test
    predictions = run.predict(test.images)
    assert (predictions.labels == evaluation.labels).mean() == pytest.approx(evaluation.accuracy)
    np.testing.assert_allclose(predictions.probabilities, evaluation.probabilities, atol=1e-5)
    assert snapshot(trained.path) == before  # reading a run writes nothing


def test_load_runs_finds_nested_runs_with_the_settings_that_differ(runs_root):
    root, _ = runs_root
    before = snapshot(root / "runs")
    table = load_runs(root / "runs")
    assert sorted(table["run"]) == ["first", "stopped", "study/lr=0.01", "study/lr=0.03"]
    assert {"epochs", "lr", "scheduler", "seed"} <= set(table.columns)  # what differs between these runs
    assert "name" not in table.columns and "out" not in table.columns
    for column in ("test_accuracy", "best_val_accuracy", "wall_seconds", "lr"):
        assert table[column].dtype == np.float64, column
    assert table["epochs_done"].dtype == np.int64 and table["limit_batches"].dtype.kind in "if"
    stopped = table.set_index("run").loc["stopped"]
    assert stopped["status"] == "stopped" and stopped["epochs_done"] == 1 and math.isnan(stopped["test_accuracy"])
    assert snapshot(root / "runs") == before


def test_a_stopped_run_resumed_sums_the_wall_time_of_both_parts(runs_root, tmp_path):
    import shutil

    root, _ = runs_root
    stopped = shutil.copytree(root / "runs" / "stopped", tmp_path / "stopped")
    first_part = load_run(stopped).history[-1]["wall_seconds"]
    run = fmnist.resume(stopped)
    assert run.resumes == 1 and run.status == "finished" and [row["epoch"] for row in run.history] == [1, 2, 3]
    later_epochs = sum(row["seconds"] + row["eval_seconds"] for row in run.history[1:])
    assert run.wall_seconds >= first_part + later_epochs  # not the last part alone
    assert run.history[0]["wall_seconds"] == first_part
    assert "resumed 1x" in compare_runs([stopped], tmp_path / "cmp")


def test_a_run_folder_of_an_older_fmnist_still_loads(runs_root, tmp_path):
    import shutil

    root, trained = runs_root
    old = shutil.copytree(trained.path, tmp_path / "old")
    with open(old / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    older_fields = METRIC_FIELDS[:8]  # before eval_seconds and wall_seconds
    with open(old / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, older_fields, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    saved = json.loads((old / "config.json").read_text())
    del saved["model_origin"]
    (old / "config.json").write_text(json.dumps(saved))
    run = load_run(old)
    assert run.history["wall_seconds"] == [None, None] and run.history["val_loss"] == trained.history["val_loss"]
    assert run.test_accuracy == trained.test_accuracy and len(load_runs(tmp_path)) == 1


@pytest.mark.parametrize(("call", "fragment"), [
    (lambda run: run.history["accuracy"], "history['accuracy']: no such column"),
    (lambda run: run.model("middle"), "which='middle'"),
    (lambda run: run.evaluate(batch_size=0), "evaluate_checkpoint(batch_size=0)"),
    (lambda run: run.evaluate(allow_unverified_data="yes"), "allow_unverified_data='yes'"),
    (lambda run: run.predict(np.zeros((2, 28, 28), dtype=np.int16)), "NumPy dtype int16"),
    (lambda run: run.predict(np.zeros((2, 28, 28), dtype=np.uint8), batch_size=-1), "batch_size=-1"),
])
def test_bad_arguments_to_a_run_are_one_line_naming_them(runs_root, call, fragment):
    _, run = runs_root
    with pytest.raises(fmnist.FmnistError) as raised:
        call(run)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_the_gap_note_blames_only_what_the_run_used():
    history = [{"epoch": 1, "train_loss": 0.62, "train_accuracy": 0.90, "val_loss": 0.30, "val_accuracy": 0.90,
                "lr": 0.1, "seconds": 1.0, "images_per_second": 1.0}]
    matrix = confusion_matrix(torch.arange(10).repeat(2), torch.arange(10).repeat(2))
    metrics = classification_metrics(matrix)

    def gap_line(config, dropout=False):
        return observations(history, matrix, metrics, config, dropout)[1]

    smoothed = gap_line({"label_smoothing": 0.1, "hflip": True})
    assert "label smoothing 0.1" in smoothed and f"{smoothing_floor(0.1):.3f}" in smoothed
    assert "flips" in smoothed and "dropout" not in smoothed and "mixup" not in smoothed
    assert smoothing_floor(0.1) == pytest.approx(0.5003, abs=1e-3)
    mixed = gap_line({"mixup": 0.2, "cutmix": 1.0}, dropout=True)
    assert "mixup and cutmix" in mixed and "dropout" in mixed and "label smoothing" not in mixed
    assert "augmentation" not in gap_line({})


def test_every_public_result_has_a_one_line_repr(runs_root):
    root, run = runs_root
    data = fmnist.load_splits(root / "data", val_size=100, verify=False)
    training = fmnist.build_training(tiny_config(root, "unused"), data.train, data.val, data.test)
    evaluation = run.evaluate()
    predictions = run.predict(data.test.images[:5])
    stats = fmnist.train_one_epoch(training.model, training.train_loader, training.optimization, max_batches=2)
    for result in (run, run.history, evaluation, evaluation.result, predictions, predictions[0], data, data.test,
                   training, stats):
        text = repr(result)
        assert len(text) < 240 and "\n" not in text, (type(result).__name__, text[:300])
