"""Runs that survive SIGKILL and Ctrl-C: kill a real process at several points, resume, compare.

The kills are real SIGKILLs: the child process sends it to itself at a named point when
FMNIST_KILL_AT=POINT:N is set (see fmnist.faults), so each test kills at the same place every time.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import fmnist_here, fmnist_process, write_dataset
from fmnist.cli import main
from fmnist.data.splits import load_splits
from fmnist.faults import StopRequest, TrainingInterrupted
from fmnist.runs.checkpoint import load_checkpoint, save_checkpoint
from fmnist.runs.folder import create_run_folder
from fmnist.runs.recorder import RunRecorder
from fmnist.training.build import build_training
from fmnist.training.config import TrainConfig
from fmnist.training.loop import fit

NON_TIMING = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


def train_args(data: Path, out: Path, name: str) -> list[str]:
    # 500 training images in batches of 50, cut to 4 batches; validation in 3 batches of <= 40.
    return [
        "train", "--data-dir", str(data), "--out", str(out), "--name", name, "--epochs", "3",
        "--val-size", "100", "--batch-size", "50", "--limit-batches", "4", "--eval-batch-size", "40",
        "--seed", "5", "--device", "cpu",  # bit-for-bit equality is promised on the CPU
        "--allow-unverified-data",  # generated data
        "--no-report",  # two seconds of drawing per run; what these tests compare is the training
    ]


def metric_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as handle:
        return [{key: row[key] for key in NON_TIMING} for row in csv.DictReader(handle)]


def same_tensors(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


@pytest.fixture(scope="module")
def run_killed_in_epoch_3(tmp_path_factory) -> Path:
    """A run SIGKILLed in epoch 3 (after its training and validation, before its metrics.csv)."""
    base = tmp_path_factory.mktemp("killed")
    data = write_dataset(base / "data")
    killed = fmnist_process(train_args(data, base, "run"), kill_at="write-metrics.csv:3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    return base / "run"


@pytest.fixture
def stopped_run(run_killed_in_epoch_3, tmp_path) -> Path:
    """A private copy of that run, for a test to resume or damage."""
    return Path(shutil.copytree(run_killed_in_epoch_3, tmp_path / "run"))


def test_killed_at_every_stage_and_resumed_equals_an_uninterrupted_run(tiny_data, tmp_path):
    runs = tmp_path / "runs"
    reference = fmnist_here(train_args(tiny_data, runs, "reference"))
    assert reference.returncode == 0, reference.stderr

    # One run, killed four times; each resume is killed again further on. Per process, counts start at 0.
    kills = [
        ("train-step:2", "start"),  # epoch 1, batch 2: no checkpoint exists yet
        ("evaluate-batch:5", "resume"),  # epoch 2's validation (epoch 1 is saved)
        ("write-last.pt:1", "resume"),  # epoch 2's last.pt written to a temporary file, not yet renamed
        ("write-summary.json:1", "resume"),  # every epoch done, before the summary
    ]
    killed = runs / "killed"
    for kill_at, how in kills:
        args = train_args(tiny_data, runs, "killed") if how == "start" else ["train", "--resume", str(killed)]
        result = fmnist_process(args, kill_at)
        assert result.returncode == -signal.SIGKILL, f"{kill_at}: {result.returncode} {result.stderr}"
    finished = fmnist_here(["train", "--resume", str(killed)])
    assert finished.returncode == 0, finished.stderr
    assert "resuming" in finished.stdout

    assert metric_rows(killed) == metric_rows(runs / "reference")
    assert (killed / "lr_steps.csv").read_text() == (runs / "reference" / "lr_steps.csv").read_text()
    for name in ("last.pt", "best.pt"):
        resumed, uninterrupted = load_checkpoint(killed / name), load_checkpoint(runs / "reference" / name)
        assert resumed["epoch"] == uninterrupted["epoch"]
        assert same_tensors(resumed["model"], uninterrupted["model"])
    summaries = [json.loads((run / "summary.json").read_text()) for run in (killed, runs / "reference")]
    assert summaries[0]["test_accuracy"] == summaries[1]["test_accuracy"]
    assert summaries[0]["test_loss"] == summaries[1]["test_loss"]
    assert not list(killed.glob(".*.tmp"))  # the leftover of the killed write was cleaned up

    again = fmnist_here(["train", "--resume", str(killed)])
    assert again.returncode == 2 and "already finished" in again.stderr
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr


def test_ctrl_c_finishes_the_step_saves_and_prints_the_resume_command(tiny_data, tmp_path):
    args = train_args(tiny_data, tmp_path, "interrupted")
    args[args.index("--epochs") + 1] = "200"  # long enough to be interrupted in the middle
    args[args.index("--limit-batches") + 1] = "10"
    env = {key: value for key, value in os.environ.items() if key != "FMNIST_KILL_AT"}
    child = subprocess.Popen(
        [sys.executable, "-m", "fmnist", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        first_line = ""
        while not first_line.startswith("epoch 1/"):  # epoch 1 is saved when its line is printed
            first_line = child.stdout.readline()
            assert first_line, child.stderr.read()
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, stderr
    assert "stopped by Ctrl-C" in stderr and "Traceback" not in stderr
    run = tmp_path / "interrupted"
    assert f"resume with: fmnist train --resume {run}" in stderr
    saved = load_checkpoint(run / "last.pt")
    assert saved["epoch"] >= 1 and saved["step"] == 10 * saved["epoch"]
    assert len(metric_rows(run)) == saved["epoch"]
    assert not list(run.glob(".*.tmp"))


def test_resume_errors_are_one_line(stopped_run, tmp_path, capsys):
    def error_of(args: list[str]) -> str:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    assert "no such run folder" in error_of(["train", "--resume", str(tmp_path / "missing")])
    not_a_run = tmp_path / "not-a-run"
    not_a_run.mkdir()
    assert "no readable config.json" in error_of(["train", "--resume", str(not_a_run)])

    run = stopped_run
    assert "started with --model affine-cnn" in error_of(["train", "--resume", str(run), "--model", "resnet18"])
    assert "--epochs 9" in error_of(["train", "--resume", str(run), "--epochs", "9"])
    for switch, started_with in (("--report", "--no-report"), ("--tta-flip", "--no-tta-flip")):  # as typed
        assert error_of(["train", "--resume", str(run), switch]).startswith(
            f"fmnist: error: {switch}: the run in {run} was started with {started_with}; "), switch
    # A last.pt whose weights do not fit the run's model names the mismatch.
    state = load_checkpoint(run / "last.pt")
    state["model"]["8.weight"] = torch.zeros(64, 3136)
    save_checkpoint(state, run / "last.pt")
    assert "8.weight has shape (64, 3136)" in error_of(["train", "--resume", str(run)])
    (run / "last.pt").write_bytes((run / "best.pt").read_bytes()[:500])
    assert "not a readable checkpoint" in error_of(["train", "--resume", str(run)])


def test_non_finite_loss_exits_3_naming_epoch_and_batch_and_keeps_the_checkpoint(stopped_run, capsys):
    run = stopped_run
    good = (run / "last.pt").read_bytes()
    # Poison the optimizer's running averages: epoch 2's first update turns every weight into NaN,
    # so batch 2's loss is NaN while the saved model itself is fine. The run resumes at epoch 3.
    state = load_checkpoint(run / "last.pt")
    for moments in state["optimizer"]["state"].values():
        moments["exp_avg"].fill_(float("nan"))
    save_checkpoint(state, run / "last.pt")
    poisoned = (run / "last.pt").read_bytes()
    assert main(["train", "--resume", str(run)]) == 3
    err = capsys.readouterr().err
    assert "epoch 3: loss became nan at batch 2" in err and err.count("\n") == 1
    assert (run / "last.pt").read_bytes() == poisoned != good  # the last checkpoint is kept as it was
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


def test_ctrl_c_during_evaluation_stops_once_that_epoch_is_saved(tiny_data, tmp_path):
    config = TrainConfig(
        epochs=3, batch_size=50, limit_batches=2, val_size=100, data_dir=str(tiny_data), out=str(tmp_path),
        name="stopped", allow_unverified_data=True,
    )
    data = load_splits(tiny_data, 100, verify=False)
    training = build_training(config, data.train, data.val, data.test)
    stop = StopRequest()
    # Stands in for Ctrl-C arriving while the model runs in eval mode, i.e. during validation.
    training.model.register_forward_hook(
        lambda module, inputs, output: setattr(stop, "requested", not module.training)
    )
    path = create_run_folder(config)
    with pytest.raises(TrainingInterrupted, match="after epoch 1"):
        fit(training.model, training.train_loader, training.val_loader, training.optimization, 3,
            recorder=RunRecorder(path, config, training), stop=stop)
    assert load_checkpoint(path / "last.pt")["epoch"] == 1 and len(metric_rows(path)) == 1


@pytest.mark.parametrize("kill_at", ["write-best.pt:1", "write-last.pt:1"])
def test_killed_while_saving_the_first_epoch_resumes_and_equals_an_uninterrupted_run(tiny_data, tmp_path, kill_at):
    runs = tmp_path / "runs"
    reference = fmnist_here(train_args(tiny_data, runs, "reference"))
    killed = fmnist_process(train_args(tiny_data, runs, "killed"), kill_at)
    assert reference.returncode == 0 and killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(metric_rows(runs / "killed")) == 1 and not (runs / "killed" / "last.pt").exists()
    finished = fmnist_here(["train", "--resume", str(runs / "killed")])
    assert finished.returncode == 0, finished.stderr
    assert metric_rows(runs / "killed") == metric_rows(runs / "reference")
    for name in ("last.pt", "best.pt"):
        assert same_tensors(load_checkpoint(runs / "killed" / name)["model"],
                            load_checkpoint(runs / "reference" / name)["model"])
