"""A run's report: every figure written, per-class metrics right, observations taken from the data."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys

import matplotlib.image
import pytest
import torch

from conftest import fmnist_here, write_dataset
from fmnist.cli.main import build_parser, main
from fmnist.cli.options import overrides_from, rerun_command
from fmnist.data.splits import read_split
from fmnist.experiment import train
from fmnist.models import create_model
from fmnist.reports.report import write_report
from fmnist.training.config import TrainConfig, build_config
from fmnist.training.loop import EvalResult
from fmnist.training.metrics import classification_metrics, confusion_matrix, most_confused_pairs

FIGURES = [
    "loss.png", "accuracy.png", "learning_rate.png", "confusion_matrix.png",
    "per_class_accuracy.png", "misclassified.png", "probabilities.png",
]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run on generated data, shared by the tests of this file (they only read it)."""
    root = tmp_path_factory.mktemp("report")
    data_dir = write_dataset(root / "data")
    config = TrainConfig(
        epochs=2, batch_size=50, val_size=100, limit_batches=4, data_dir=str(data_dir), allow_unverified_data=True,
        out=str(root / "runs"), name="tiny",
    )
    result = train(config, details={"command": ["fmnist", "train", "--name", "tiny"]})
    return result.path, data_dir


def assert_valid_png(path):
    content = path.read_bytes()
    assert content.startswith(PNG_SIGNATURE), path
    height, width = matplotlib.image.imread(path).shape[:2]
    assert height > 100 and width > 100, path


def test_training_writes_every_figure_and_the_report(trained):
    run_path, _ = trained
    for name in FIGURES:
        assert_valid_png(run_path / name)
    report = (run_path / "report.md").read_text()
    for name in FIGURES:
        assert f"]({name})" in report
    assert "## Re-run it" in report and "Best epoch:" in report and "Weakest classes:" in report
    summary = json.loads((run_path / "summary.json").read_text())
    scores = summary["test_precision_recall_f1"]
    assert "macro" in scores["averaging"] and "weighted" in scores["averaging"]
    assert len(scores["per_class"]) == 10 and sum(row["support"] for row in scores["per_class"].values()) == 200
    matrix = torch.tensor(summary["test_confusion_matrix"]["counts"])
    assert matrix.trace().item() / matrix.sum().item() == pytest.approx(summary["test_accuracy"])


def test_report_names_the_most_confused_pair_from_the_confusion_matrix(trained, tmp_path):
    run_path, data_dir = trained
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("config.json", "metrics.csv", "lr_steps.csv", "summary.json"):
        shutil.copy(run_path / name, copy / name)
    test_split = read_split(data_dir, "test")
    labels = test_split.labels.clone()
    predictions = labels.clone()
    # Known mistakes: 7 Shirts called T-shirt/top, 3 Coats called Pullover, 1 Bag called Sandal.
    for true_class, predicted_class, count in ((6, 0, 7), (4, 2, 3), (8, 5, 1)):
        predictions[(labels == true_class).nonzero().flatten()[:count]] = predicted_class
    test = EvalResult(loss=0.5, accuracy=(predictions == labels).float().mean().item(),
                      predictions=predictions, labels=labels, seconds=0.0)
    write_report(copy, create_model("affine-cnn"), test_split.images, test, 0.286, 0.353)
    report = (copy / "report.md").read_text()
    assert "Shirt → T-shirt/top: 7 images (35.0% of Shirt); Coat → Pullover: 3 images" in report
    assert "Weakest classes: Shirt (recall 0.650" in report
    assert "(first 11 of 11)" in report
    assert_valid_png(copy / "misclassified.png")


def test_precision_recall_f1_on_a_hand_made_matrix():
    labels = torch.tensor([0] * 6 + [1] * 6 + [2] * 4)
    predictions = torch.tensor([0, 0, 0, 0, 0, 1] + [0, 0, 1, 1, 1, 2] + [2, 2, 2, 2])
    matrix = confusion_matrix(labels, predictions, num_classes=3)
    assert matrix.tolist() == [[5, 1, 0], [2, 3, 1], [0, 0, 4]]
    metrics = classification_metrics(matrix, class_names=("a", "b", "c"))
    expected = {  # precision = TP / column sum, recall = TP / row sum, F1 = harmonic mean
        "a": (5 / 7, 5 / 6, 10 / 13),
        "b": (3 / 4, 1 / 2, 0.6),
        "c": (4 / 5, 1.0, 8 / 9),
    }
    for name, (precision, recall, f1) in expected.items():
        row = metrics["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((precision, recall, f1))
    assert metrics["macro"]["precision"] == pytest.approx((5 / 7 + 3 / 4 + 4 / 5) / 3)
    assert metrics["macro"]["f1"] == pytest.approx((10 / 13 + 0.6 + 8 / 9) / 3)
    assert metrics["weighted"]["recall"] == pytest.approx(12 / 16)  # weighted recall is accuracy
    assert metrics["micro"]["f1"] == pytest.approx(12 / 16)
    assert most_confused_pairs(matrix, class_names=("a", "b", "c"))[0] == {
        "true": "b", "predicted": "a", "count": 2, "share_of_true_class": pytest.approx(2 / 6),
    }


def test_a_class_never_predicted_has_precision_zero():
    matrix = torch.tensor([[2, 0], [1, 0]])
    metrics = classification_metrics(matrix, class_names=("a", "b"))
    assert metrics["per_class"]["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_rerun_command_rebuilds_the_config():
    config = build_config(overrides={
        "recipe": "affine-steplr", "device": "auto", "optimizer": "sgd", "nesterov": True, "lr": 0.0123,
        "hflip": True, "momentum": 0.8, "gamma": 0.5,
        "limit_batches": 7, "name": "original",
    })
    command = rerun_command(config)
    assert "--device auto" in command  # the recipe says cpu; the run overrode it back to the default
    assert "--name" not in command
    arguments = build_parser().parse_args(command.split()[1:])
    rebuilt = build_config(arguments.config, overrides_from(arguments))
    assert rebuilt.to_dict() == {**config.to_dict(), "name": None}


def test_fmnist_report_rewrites_an_existing_run(trained, tmp_path, capsys):
    run_path, data_dir = trained
    copy = tmp_path / "run"
    shutil.copytree(run_path, copy)
    for name in [*FIGURES, "report.md"]:
        (copy / name).unlink()
    assert main(["report", str(copy), "--data-dir", str(data_dir), "--allow-unverified-data"]) == 0
    assert f"report: {copy / 'report.md'}" in capsys.readouterr().out
    for name in FIGURES:
        assert_valid_png(copy / name)
    original = json.loads((run_path / "summary.json").read_text())
    again = json.loads((copy / "summary.json").read_text())
    assert again["test_accuracy"] == original["test_accuracy"]
    assert again["test_precision_recall_f1"] == original["test_precision_recall_f1"]


def test_no_report_leaves_report_md_and_the_figures_out_and_fmnist_report_writes_them_later(trained, tmp_path):
    run_path, data_dir = trained
    data = ["--data-dir", str(data_dir), "--allow-unverified-data"]
    trained_again = fmnist_here(["train", "--epochs", "2", "--batch-size", "50", "--val-size", "100",
                                 "--limit-batches", "4", *data, "--out", str(tmp_path), "--name", "quiet",
                                 "--no-report"])
    assert trained_again.returncode == 0, trained_again.stderr
    quiet = tmp_path / "quiet"
    later = ["report", str(quiet), *data]
    assert f"no report (--no-report): `{shlex.join(['fmnist', *later])}` writes it" in trained_again.stdout
    assert not (quiet / "report.md").exists() and not list(quiet.glob("*.png"))
    assert json.loads((quiet / "config.json").read_text())["config"]["report"] is False
    # summary.json's test fields, which serve's model card and compare read, are there all the same.
    summary, reported_run = (json.loads((path / "summary.json").read_text()) for path in (quiet, run_path))
    tested = [key for key in reported_run if key.startswith("test_") or key in ("calibration", "temperature")]
    assert {"test_confusion_matrix", "test_precision_recall_f1", "test_ece", "calibration"} <= set(tested)
    assert summary["finished"] is True and summary["test_data"] == {"directory": str(data_dir), "verified": False}
    assert {key: summary[key] for key in tested} == {key: reported_run[key] for key in tested}

    reported = fmnist_here(later)  # the command it printed
    assert reported.returncode == 0, reported.stderr
    assert sorted(path.name for path in quiet.glob("*.png")) == sorted(path.name for path in run_path.glob("*.png"))
    for name in FIGURES:
        assert_valid_png(quiet / name)
        assert f"]({name})" in (quiet / "report.md").read_text()


def test_fmnist_report_on_a_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run folder" in err


@pytest.mark.parametrize("overrides", [
    {"lr": 3e-4}, {"max_lr": 0.05}, {"recipe": "fast", "lr": 0.05}, {"recipe": "fast"},
    {"recipe": "lenet-aug", "scheduler": "onecycle"}, {"recipe": "lenet-aug", "scheduler": "onecycle", "lr": 1e-3},
    {"recipe": "fast", "scheduler": "cosine", "lr": 0.2},
])
def test_rerun_command_keeps_the_learning_rate(overrides):
    config = build_config(overrides=overrides)
    command = rerun_command(config)
    assert "--max-lr" not in command  # said once, as --lr
    arguments = build_parser().parse_args(command.split()[1:])
    assert build_config(arguments.config, overrides_from(arguments)).to_dict() == config.to_dict()


@pytest.mark.parametrize("figure", ["probability_bars", "per_class_bars"])
def test_every_bar_carries_its_value(figure, monkeypatch, tmp_path):
    from fmnist.reports import plots

    drawn = {}
    monkeypatch.setattr(plots, "save", lambda fig, path: drawn.setdefault("figure", fig) and path)
    values = [0.9531, 0.04, 0.0049, 0.0004, 0.0, 0.001, 0.0006, 0.0, 0.0, 0.0]
    names = [f"class {index}" for index in range(10)]
    if figure == "probability_bars":
        plots.probability_bars(torch.zeros(28, 28, dtype=torch.uint8), values, names, "a shirt", tmp_path / "p.png")
    else:
        plots.per_class_bars(values, names, "accuracy", tmp_path / "p.png")
    bars = drawn["figure"].axes[-1]
    assert [text.get_text() for text in bars.texts] == [
        "0.953", "0.040", "0.005", "<0.001", "<0.001", "0.001", "0.001", "<0.001", "<0.001", "<0.001"]


def test_fmnist_imports_matplotlib_only_to_draw_and_leaves_its_backend_alone(tmp_path):
    """A command that draws nothing skips matplotlib's import (about half a second of every `fmnist
    predict` or refused option), and a notebook that draws a report keeps its own backend, with no
    figure left open in pyplot."""
    code = f"""
import sys
from pathlib import Path
import fmnist.cli.main
print("matplotlib" in sys.modules)
import matplotlib
matplotlib.use("svg")
from fmnist.reports import plots
history = [{{"epoch": 1, "train_loss": 0.5, "val_loss": 0.4}}, {{"epoch": 2, "train_loss": 0.3, "val_loss": 0.35}}]
plots.epoch_curves(history, "loss", "loss", Path({str(tmp_path / "loss.png")!r}))
import matplotlib.pyplot
print(matplotlib.get_backend(), matplotlib.pyplot.get_fignums())
"""
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split("\n")[:2] == ["False", "svg []"], shown.stdout
    assert_valid_png(tmp_path / "loss.png")
