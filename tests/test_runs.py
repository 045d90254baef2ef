"""Run folders on disk: what they hold, that checkpoints load safely, that writes are atomic."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from fmnist.errors import CheckpointError
from fmnist.experiment import train
from fmnist.files import atomic_write_bytes
from fmnist.runs.checkpoint import load_checkpoint, model_from_checkpoint
from fmnist.training.config import TrainConfig


@pytest.fixture
def tiny_run(tiny_data, tmp_path):
    config = TrainConfig(
        epochs=2, batch_size=50, val_size=100, eval_batch_size=64, data_dir=str(tiny_data), allow_unverified_data=True,
        out=str(tmp_path / "runs"), name="tiny",
    )
    return train(config, details={"command": ["fmnist", "train", "--name", "tiny"]})


def test_run_folder_holds_everything(tiny_run):
    path = tiny_run.path
    assert sorted(p.name for p in path.iterdir() if p.suffix != ".png" and not p.name.startswith(".")) == [
        "best.pt", "calibration.json", "config.json", "last.pt", "lr_steps.csv", "metrics.csv", "report.md",
        "summary.json",
    ]  # the figures are checked in test_report.py
    saved = json.loads((path / "config.json").read_text())
    assert saved["config"]["model"] == "affine-cnn" and saved["seed"] == 42
    assert {"python", "torch", "fmnist", "git_commit", "device"} <= set(saved["environment"])
    with open(path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert {"train_loss", "val_accuracy", "lr", "seconds", "images_per_second"} <= set(rows[0])
    with open(path / "lr_steps.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2 * 10  # 500 images / 50 per batch, 2 epochs
    summary = json.loads((path / "summary.json").read_text())
    assert summary["test_accuracy"] == tiny_run.test_accuracy
    assert 1 <= summary["best_epoch"] <= 2 and len(summary["test_per_class_accuracy"]) == 10
    assert oct(os.stat(path / "summary.json").st_mode)[-3:] != "600"


def test_checkpoints_load_with_weights_only_and_rebuild_the_model(tiny_run):
    state = torch.load(tiny_run.path / "last.pt", weights_only=True)
    assert state["epoch"] == 2
    assert {"model", "optimizer", "scheduler", "config", "rng", "loader_rng"} <= set(state)
    model = model_from_checkpoint(load_checkpoint(tiny_run.path))
    assert isinstance(model, torch.nn.Module)


def test_corrupt_and_foreign_checkpoints_are_clear_errors(tiny_run, tmp_path):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tiny_run.path / "last.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="no fmnist checkpoint format marker"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no such run folder"):
        load_checkpoint(tmp_path / "missing")


def test_checkpoint_of_another_shape_names_the_mismatch(tiny_run):
    state = load_checkpoint(tiny_run.path / "best.pt")
    state["model"]["8.weight"] = torch.zeros(64, 3136)
    with pytest.raises(CheckpointError, match=r"8.weight has shape \(64, 3136\)"):
        model_from_checkpoint(state)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, object())  # the write itself fails
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]
    atomic_write_bytes(target, b"new")
    assert target.read_text() == "new"


def test_existing_run_name_is_refused(tiny_run, tiny_data):
    config = TrainConfig(data_dir=str(tiny_data), allow_unverified_data=True, out=str(tiny_run.path.parent),
                         name="tiny", val_size=100)
    with pytest.raises(CheckpointError, match="already exists"):
        train(config)
