"""`fmnist sweep --jobs N`: runs in parallel processes, the same tables as in turn, stopped and continued
without training anything twice, one lock per run folder, and Ctrl-C reaching every job."""

from __future__ import annotations

import csv
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import fmnist_here, write_dataset
from fmnist.cli import main
from fmnist.files import exclusive_lock

NON_TIMING = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


def sweep_args(data: Path, out: Path, *grid: str, jobs: int = 2) -> list[str]:
    """Tiny runs without their reports (two seconds of drawing each; what these tests check is the sweep)."""
    return [
        "sweep", *grid, "--model", "lenet", "--batch-size", "50", "--limit-batches", "1", "--val-size", "100",
        "--data-dir", str(data), "--allow-unverified-data", "--device", "cpu", "--seed", "5", "--no-report",
        "--out", str(out), "--name", "s", "--jobs", str(jobs), "--threads-per-job", "1",
    ]


def environment(kill_at: str | None = None) -> dict:
    child = {key: value for key, value in os.environ.items() if key != "FMNIST_KILL_AT"}
    if kill_at:
        child["FMNIST_KILL_AT"] = kill_at
    return child


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def files_of(run: Path) -> dict[str, tuple[int, bytes]]:
    return {path.name: (path.stat().st_mtime_ns, path.read_bytes()) for path in sorted(run.iterdir()) if path.is_file()}


def test_parallel_sweep_stops_continues_and_gives_the_tables_of_one_in_turn(tmp_path, monkeypatch, capsys):
    data = write_dataset(tmp_path / "data")
    args = sweep_args(data, tmp_path / "parallel", "--set", "epochs=1,3")
    short, long = tmp_path / "parallel" / "s" / "epochs=1,seed=5", tmp_path / "parallel" / "s" / "epochs=3,seed=5"

    # Each job presses Ctrl-C on itself at its 3rd step: the 1-epoch run (1 step) finishes, the
    # 3-epoch run stops in epoch 3 with epoch 2 saved, and the sweep stops with the continue line.
    monkeypatch.setattr(sys, "argv", ["fmnist", *args])  # the command as typed, for the continue line
    monkeypatch.setenv("FMNIST_KILL_AT", "train-step:3:SIGINT")  # the jobs inherit it; the sweep trains nothing
    assert main(args) == 130
    *_, stop_line, continue_line = capsys.readouterr().err.strip().splitlines()
    monkeypatch.delenv("FMNIST_KILL_AT")
    assert stop_line.endswith("sweep stopped: a job was stopped on its own; 1 finished; 1 stopped (epochs=3,seed=5)")
    assert continue_line == "continue with: " + shlex.join(["fmnist", *args])
    assert json.loads((short / "summary.json").read_text())["finished"] is True
    assert not (long / "summary.json").exists() and len(read_csv(long / "metrics.csv")) == 2
    finished_files, first_epochs = files_of(short), read_csv(long / "metrics.csv")

    # Each run folder has its own lock: a job never trains a run that another process holds.
    with exclusive_lock(long, "run folder"):
        assert main(args) == 2
    assert "is using it right now" in capsys.readouterr().err
    assert len(read_csv(long / "metrics.csv")) == 2

    # The printed command continues: the finished run is not touched, the stopped one resumes.
    continued = fmnist_here(shlex.split(continue_line.removeprefix("continue with: "))[1:])
    assert continued.returncode == 0, continued.stderr
    assert "epochs=1,seed=5 (finished earlier)" in continued.stdout
    assert files_of(short) == finished_files
    resumed = read_csv(long / "metrics.csv")
    assert [row["epoch"] for row in resumed] == ["1", "2", "3"]
    assert [{key: row[key] for key in NON_TIMING} for row in resumed[:2]] == \
           [{key: row[key] for key in NON_TIMING} for row in first_epochs]
    assert json.loads((long / "config.json").read_text())["environment"]["threads"] == 1

    # The same sweep in turn, in this process: the same table, but for the times.
    assert main(sweep_args(data, tmp_path / "in-turn", "--set", "epochs=1,3", jobs=1)) == 0
    capsys.readouterr()
    # Times, where the run folder is, and the resume of the parallel sweep's stopped run.
    differ = ("wall_seconds", "images_per_second", "path", "resumes")
    for table in ("comparison.csv", "runs.csv"):
        parallel_rows = read_csv(tmp_path / "parallel" / "s" / table)
        in_turn_rows = read_csv(tmp_path / "in-turn" / "s" / table)
        assert [{key: value for key, value in row.items() if not key.startswith(differ)} for row in parallel_rows] == \
               [{key: value for key, value in row.items() if not key.startswith(differ)} for row in in_turn_rows]
    for name in ("epochs=1,seed=5", "epochs=3,seed=5"):  # the same config, given the same options
        saved = [json.loads((tmp_path / mode / "s" / name / "config.json").read_text())
                 for mode in ("parallel", "in-turn")]
        for key in ("config", "options_given"):
            assert {**saved[0][key], "out": None} == {**saved[1][key], "out": None}


@pytest.mark.parametrize(("stop", "code", "said"), [(signal.SIGINT, 130, "Ctrl-C"), (signal.SIGTERM, 143, "SIGTERM")])
def test_a_signal_stops_every_job_cleanly_and_prints_the_continue_command(stop, code, said, tmp_path):
    data = write_dataset(tmp_path / "data")
    args = sweep_args(data, tmp_path, "--set", "max-lr=0.01,0.02", "--epochs", "500")
    runs = [tmp_path / "s" / "max_lr=0.01,seed=5", tmp_path / "s" / "max_lr=0.02,seed=5"]
    sweep = subprocess.Popen([sys.executable, "-m", "fmnist", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=environment())
    deadline = time.monotonic() + 240
    while not all((run / "metrics.csv").exists() for run in runs):  # both jobs are training
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    sweep.send_signal(stop)
    _, err = sweep.communicate(timeout=240)
    assert sweep.returncode == code and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "continue with: " + shlex.join(["fmnist", *args])
    for run in runs:
        assert not (run / "summary.json").exists() and (run / "last.pt").is_file()
        assert len(read_csv(run / "metrics.csv")) < 500
        log = (tmp_path / "s" / "logs" / f"{run.name}.log").read_text()
        # One stop each, after a step, with the run saved: no second signal, no traceback.
        assert f"stopped by {said}" in log and "is saved in" in log and "Traceback" not in log


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--jobs", "0"], "--jobs 0: must be at least 1"),
        (["--jobs", "-4"], "--jobs -4: must be at least 1"),
        (["--jobs", "1000", "--threads-per-job", "1"], "--jobs 1000: the sweep has 2 runs; use --jobs 2 or fewer"),
        (["--jobs", "2", "--threads-per-job", "-1"], "--threads-per-job -1: must be at least 1"),
        (["--jobs", "1", "--threads-per-job", "0"], "--threads-per-job 0: must be at least 1"),
        (["--jobs", "3"], "--jobs 3: the sweep has 2 runs; use --jobs 2 or fewer"),
        (["--jobs", "2", "--threads-per-job", "0"], "--threads-per-job 0: must be at least 1"),
        (["--jobs", "2"], "--jobs 2: more jobs than the 1 core here"),
    ],
)
def test_jobs_that_make_no_sense_are_one_line_before_anything_runs(options, fragment, tmp_path, monkeypatch,
                                                                    capsys):
    monkeypatch.setattr("fmnist.tools.sweep.available_cores", lambda: 1)
    status = main(["sweep", "--set", "max-lr=0.01,0.02", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path),
                   *options])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "out").exists()


def test_a_different_grid_in_the_folder_is_refused_with_jobs_too(tmp_path, capsys):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"grid": {"max_lr": [0.01]}, "seeds": 1, "runs": {}}))
    status = main(sweep_args(tmp_path, tmp_path, "--set", "max-lr=0.01,0.02"))
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "holds a different sweep" in err
    assert sorted(path.name for path in folder.iterdir()) == ["sweep.json"]


def test_a_sweep_stopped_before_it_wrote_sweep_json_starts_again_and_a_run_folder_is_refused(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    args = sweep_args(data, tmp_path, "--set", "max-lr=0.01,0.02", "--epochs", "1")
    (tmp_path / "s").mkdir()  # what a signal right after the folder was made leaves
    (tmp_path / "s" / ".lock").write_text("fmnist process 1")
    assert main(args) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["grid"] == {"max_lr": [0.01, 0.02]}

    run = tmp_path / "run"  # a run folder, not a sweep: refused, and not a file is added to it
    (run / "x").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    capsys.readouterr()
    assert main([*args[:-8], "--out", str(tmp_path), "--name", "run", *args[-4:]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no sweep.json; choose another --name" in err, err
    assert sorted(path.name for path in run.iterdir()) == ["config.json", "x"]


@pytest.mark.parametrize("threads_before", [1, 2])
def test_runs_in_turn_keep_this_process_threads_unless_threads_per_job_is_given(threads_before, tmp_path, capsys):
    """A sweep in turn trains as `fmnist train` would, with the threads this process has (what
    OMP_NUM_THREADS or torch.set_num_threads chose); --threads-per-job sets them for the sweep only."""
    data = write_dataset(tmp_path / "data")
    in_turn = sweep_args(data, tmp_path, jobs=1)[:-2]  # without its --threads-per-job 1
    threads_here = torch.get_num_threads()
    try:
        torch.set_num_threads(threads_before)
        for name, options, threads in [("kept", [], threads_before),
                                       ("given", ["--threads-per-job", str(3 - threads_before)], 3 - threads_before)]:
            assert main([*in_turn, "--name", name, *options]) == 0, capsys.readouterr().err
            run = tmp_path / name / "seed=5"
            assert json.loads((run / "config.json").read_text())["environment"]["threads"] == threads
            assert torch.get_num_threads() == threads_before  # the process's own again after the sweep
    finally:
        torch.set_num_threads(threads_here)
