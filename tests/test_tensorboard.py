"""--tensorboard writes event files with the epoch scalars, the learning rate per step and the confusion
matrix; without the package it is a one-line error before anything runs."""

from __future__ import annotations

import sys

import pytest

from fmnist.cli import main


def test_tensorboard_event_files_hold_the_run(tiny_data, tmp_path):
    pytest.importorskip("tensorboard", reason="the optional extra: pip install 'fmnist[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    status = main([
        "train", "--tensorboard", "--epochs", "2", "--limit-batches", "3", "--batch-size", "50",
        "--val-size", "100", "--data-dir", str(tiny_data), "--allow-unverified-data", "--out",
            str(tmp_path / "runs"), "--name", "tb",
    ])
    assert status == 0
    log_dir = tmp_path / "runs" / "tb" / "tensorboard"
    assert list(log_dir.glob("events.out.tfevents.*"))
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "learning_rate"} <= set(tags["scalars"])
    assert [event.step for event in events.Scalars("accuracy/val")] == [1, 2]
    assert len(events.Scalars("learning_rate")) == 2 * 3  # every step of both epochs
    assert "test/confusion_matrix" in tags["images"]


def test_tensorboard_without_the_package_is_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    status = main(["train", "--tensorboard", "--data-dir", str(tiny_data), "--allow-unverified-data",
                   "--out", str(tmp_path / "runs")])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e '.[tensorboard]'" in err
    assert not (tmp_path / "runs").exists()
