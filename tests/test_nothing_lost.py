"""No command loses work: runs, checkpoints and files a command reads are never overwritten, a second
writer is refused, and a signal (Ctrl-C, SIGTERM) stops cleanly with the command that continues.

The signals are real: FMNIST_KILL_AT=POINT:N:SIGNAL makes the child process send the signal to itself
at an exact point (see fmnist.faults), so every test stops at the same place every time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import fmnist_here, fmnist_process, one_line, snapshot, tiny_train_args, write_dataset
from fmnist.files import exclusive_lock


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    assert fmnist_here(tiny_train_args(data, out, "done", epochs=2)).returncode == 0
    return out / "done"


@pytest.fixture(scope="module")
def stopped_run_template(data, tmp_path_factory) -> Path:
    """Stopped by Ctrl-C in epoch 2 of 3 (4 batches an epoch): epoch 1 is saved."""
    out = tmp_path_factory.mktemp("stopped")
    result = fmnist_process(tiny_train_args(data, out, "stopped"), kill_at="train-step:6:SIGINT")
    assert result.returncode == 130, result.stderr
    return out / "stopped"


@pytest.fixture
def stopped_run(stopped_run_template, tmp_path) -> Path:
    return Path(shutil.copytree(stopped_run_template, tmp_path / "stopped"))


def test_resume_without_last_pt_refuses_and_changes_nothing(stopped_run):
    (stopped_run / "last.pt").unlink()
    before = snapshot(stopped_run)
    error = one_line(fmnist_here(["train", "--resume", str(stopped_run)]))
    assert "last.pt is missing" in error and "nothing was changed" in error
    assert snapshot(stopped_run) == before


def test_resume_of_a_run_stopped_in_its_first_epoch_starts_again(data, tmp_path):
    result = fmnist_process(tiny_train_args(data, tmp_path, "early"), kill_at="train-step:2:SIGINT")
    assert result.returncode == 130 and "no epoch was completed yet" in result.stderr
    assert fmnist_here(["train", "--resume", str(tmp_path / "early")]).returncode == 0


@pytest.mark.parametrize("signal_name, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_stops_after_the_step_and_prints_the_resume_command(data, tmp_path, signal_name, code):
    result = fmnist_process(tiny_train_args(data, tmp_path, "run"), kill_at=f"train-step:6:{signal_name}")
    assert result.returncode == code and "Traceback" not in result.stderr
    assert ("Ctrl-C" if signal_name == "SIGINT" else "SIGTERM") in result.stderr
    assert "epoch 1 is saved" in result.stderr
    assert f"resume with: fmnist train --resume {tmp_path / 'run'}" in result.stderr
    assert fmnist_here(["train", "--resume", str(tmp_path / "run")]).returncode == 0


def test_ctrl_c_during_the_final_test_evaluation_prints_the_resume_command(data, tmp_path):
    # 1 epoch: validation is evaluate-batches 1-3 (100 images by 40), the test set 4-8 (200 by 40).
    result = fmnist_process(tiny_train_args(data, tmp_path, "run", epochs=1), kill_at="evaluate-batch:5:SIGINT")
    assert result.returncode == 130, result.stderr
    assert "during the final test evaluation" in result.stderr and "resume with:" in result.stderr
    finished = fmnist_here(["train", "--resume", str(tmp_path / "run")])
    assert finished.returncode == 0 and "test accuracy" in finished.stdout


def test_a_second_writer_is_refused_and_the_first_ones_files_are_kept(stopped_run):
    (stopped_run / ".last.pt.abc.tmp").write_bytes(b"the other process is writing this")
    with exclusive_lock(stopped_run, "test"):  # stands in for a run being resumed right now
        error = one_line(fmnist_process(["train", "--resume", str(stopped_run)]))
    assert "is using it right now" in error
    assert (stopped_run / ".last.pt.abc.tmp").exists()  # not cleaned away under the other writer


def test_report_of_a_stopped_run_keeps_it_resumable(stopped_run, data):
    assert fmnist_here(["report", str(stopped_run), "--allow-unverified-data"]).returncode == 0
    assert (stopped_run / "report.md").exists()
    resumed = fmnist_here(["train", "--resume", str(stopped_run)])
    assert resumed.returncode == 0, resumed.stderr


def test_report_on_other_data_is_refused_unless_allowed_and_then_recorded(finished_run, tmp_path):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    other = write_dataset(tmp_path / "other", 300, 100)
    before = snapshot(run)
    assert "not the official Fashion-MNIST" in one_line(fmnist_here(["report", str(run), "--data-dir", str(other)]))
    assert snapshot(run) == before
    assert fmnist_here(["report", str(run), "--data-dir", str(other), "--allow-unverified-data"]).returncode == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["test_data"] == {"directory": str(other), "verified": False}
    assert "NOT verified" in (run / "report.md").read_text()


def test_export_never_overwrites_a_checkpoint_or_a_runs_files(finished_run, tmp_path):
    pytest.importorskip("onnxscript", reason="the onnx extra: pip install -e '.[onnx]'")
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    before = snapshot(run)
    for target in ("best.pt", "last.pt", "metrics.csv", "config.json", "loss.png"):
        error = one_line(fmnist_here(["export", str(run), "--out", str(run / target), "--force"]))
        assert "would overwrite" in error or "the file this command reads" in error
    copy = tmp_path / "model.pt"
    shutil.copy(run / "best.pt", copy)
    assert "the file this command reads" in one_line(fmnist_here(["export", str(copy), "--out", str(copy)]))
    assert snapshot(run) == before
    existing = tmp_path / "model.onnx"
    existing.write_text("someone's file")
    assert "pass --force" in one_line(fmnist_here(["export", str(run), "--out", str(existing)]))
    assert existing.read_text() == "someone's file"
    assert fmnist_here(["export", str(run), "--out", str(existing), "--force"]).returncode == 0
    assert existing.read_bytes() != b"someone's file"


def test_compare_refuses_to_write_into_a_run_or_a_sweep_folder(finished_run, tmp_path):
    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text("{}")
    (sweep / "comparison.md").write_text("the sweep's own table")
    for folder in (run, sweep):
        before = snapshot(folder)
        assert "comparisons are written elsewhere" in one_line(
            fmnist_here(["compare", str(run), "--out", str(folder)]))
        assert snapshot(folder) == before


def test_ctrl_c_in_a_sweep_prints_the_command_that_continues_it(data, tmp_path):
    sweep = ["sweep", "--set", "lr=1e-3,2e-3", "--scheduler", "cosine", "--epochs", "2", "--limit-batches", "2",
             "--batch-size", "50", "--val-size", "100", "--data-dir", str(data), "--allow-unverified-data",
             "--out", str(tmp_path), "--name", "s", "--device", "cpu"]
    # Run 1 has 2 epochs of 2 steps; the 6th step is run 2's second step.
    stopped = fmnist_process(sweep, kill_at="train-step:6:SIGINT")
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr
    assert "sweep stopped in run 2/2" in stopped.stderr and "continue with: " in stopped.stderr
    first = tmp_path / "s" / "lr=0.001,seed=42"
    finished_before = snapshot(first)
    continued = fmnist_here(sweep)
    assert continued.returncode == 0, continued.stderr
    assert "finished earlier" in continued.stdout
    assert snapshot(first) == finished_before  # the finished run was not trained again
    assert (tmp_path / "s" / "comparison.md").exists()
    other_grid = [*sweep[:2], "lr=1e-3,5e-3", *sweep[3:]]
    assert "holds a different sweep" in one_line(fmnist_here(other_grid))
