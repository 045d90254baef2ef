"""`torchrun -m fmnist train`: two gloo processes on the CPU train the weights of one process with the same
global batch, rank 0 alone writes the run folder, a stop from torchrun stops both after the same step,
and the checkpoints resume under torchrun or in one process."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import write_dataset
from fmnist.cli import main
from fmnist.data.loader import TensorLoader
from fmnist.data.splits import Split
from fmnist.models import create_model
from fmnist.training.distributed import ShardedBatches


def train_args(data: Path, out: Path, name: str, epochs: int = 2, limit_batches: int = 3) -> list[str]:
    # lenet has neither dropout nor BatchNorm: with the same global batch, two processes compute the
    # gradient of one, so the weights match up to float rounding (fp32: bf16's rounding is coarser).
    # SGD's step is linear in it.
    return [
        "train", "--amp", "none", "--model", "lenet", "--optimizer", "sgd", "--max-lr", "0.1", "--epochs", str(epochs),
        "--batch-size", "50", "--limit-batches", str(limit_batches), "--val-size", "100", "--seed", "5",
        "--device", "cpu", "--data-dir", str(data), "--allow-unverified-data", "--out", str(out), "--name", name,
    ]


RANK = Path(__file__).with_name("torchrun_rank.py")  # `fmnist`, then how each process ended


def torchrun(args: list[str], kill_at: str | None = None, last_rank: str | None = None) -> subprocess.Popen:
    """`torchrun --nproc-per-node 2 -m fmnist ARGS`; each process reports how it ended (see `finished`)."""
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("FMNIST_KILL_AT", "FMNIST_LAST_RANK", "FMNIST_RANK_REPORTS")}
    if kill_at:
        environment["FMNIST_KILL_AT"] = kill_at
    if last_rank:
        environment["FMNIST_LAST_RANK"] = last_rank
    environment["FMNIST_RANK_REPORTS"] = tempfile.mkdtemp(prefix="ranks-")
    environment["OMP_NUM_THREADS"] = "1"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(RANK), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    process.reports = Path(environment["FMNIST_RANK_REPORTS"])
    return process


def finished(process: subprocess.Popen) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of a torchrun run, after checking how its processes ended: no
    abort, and no gloo thread left once fmnist was done (it would run into the interpreter's shutdown).

    A run that succeeded has a report from every process. When a process fails, torchrun stops the
    others with SIGTERM, which may end one before it reports: then only the reports there are count.
    """
    out, err = process.communicate(timeout=300)
    assert "terminate called" not in err and "SIGABRT" not in err, err
    reports = {rank: json.loads((process.reports / f"{rank}.json").read_text())
               for rank in ("0", "1") if (process.reports / f"{rank}.json").exists()}
    shutil.rmtree(process.reports)
    for rank, report in reports.items():
        assert not [name for name in report["threads"] if "gloo" in name], (rank, report["threads"])
    if process.returncode == 0:
        assert sorted(reports) == ["0", "1"] and all(report["code"] == 0 for report in reports.values()), reports
    return process.returncode, out, err


def metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.fixture
def data(tmp_path) -> Path:
    return write_dataset(tmp_path / "data")


def test_two_processes_train_the_weights_of_one_and_write_the_run_folder_once(data, tmp_path, capsys):
    # With alternating flips: each process mirrors the images of its share as one process would, and the
    # resume below (in epoch 2) mirrors as epoch 2 does.
    flips = ["--hflip", "--alternate-flips"]
    assert main([*train_args(data, tmp_path, "one"), *flips]) == 0
    capsys.readouterr()
    run = tmp_path / "two"

    # torchrun stops both processes after the same step (the 4th: epoch 2, batch 1) ...
    code, out, err = finished(torchrun([*train_args(data, tmp_path, "two"), *flips], kill_at="train-step:4:SIGTERM"))
    assert code != 0
    assert err.count("stopped by SIGTERM in epoch 2 after batch 1; epoch 1 is saved in") == 1, err
    assert f"resume with: torchrun --nproc-per-node 2 -m fmnist train --resume {run}" in err
    assert len(metrics(run)) == 1

    # ... and resumes under torchrun: the run folder is written once, by rank 0.
    code, out, err = finished(torchrun(["train", "--resume", str(run)]))
    assert code == 0, err
    assert out.count("test accuracy") == 1 and out.count("epoch 2/2  train loss") == 1 and out.count("data: ") == 1
    assert [row["epoch"] for row in metrics(run)] == ["1", "2"]
    assert len((run / "lr_steps.csv").read_text().splitlines()) == 1 + 2 * 3
    assert json.loads((run / "config.json").read_text())["processes"] == 2
    assert not list(run.glob(".*.tmp"))

    torch.manual_seed(5)
    initial = create_model("lenet").state_dict()  # what both runs started from
    for checkpoint in ("best.pt", "last.pt"):
        one, two = weights(tmp_path / "one" / checkpoint), weights(run / checkpoint)
        assert one.keys() == two.keys()  # the unwrapped model's names: no "module." prefix
        moved = max((one[key] - initial[key]).abs().max().item() for key in one)
        assert max((one[key] - two[key]).abs().max().item() for key in one) < 1e-5 < moved / 100
    for row_one, row_two in zip(metrics(tmp_path / "one"), metrics(run), strict=True):
        for key in ("train_loss", "val_loss"):  # the training loss is the whole global batch's
            assert float(row_one[key]) == pytest.approx(float(row_two[key]), abs=1e-5)

    # Its test figure, by rank 0, is what `fmnist evaluate` gets in one process from the same weights.
    assert main(["evaluate", str(run), "--data-dir", str(data), "--allow-unverified-data", "--device", "cpu",
                 "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert (evaluated["test_accuracy"], evaluated["test_loss"]) == pytest.approx(
        (summary["test_accuracy"], summary["test_loss"]))


@pytest.mark.parametrize("last_rank", ["0", "1"])
def test_a_run_that_finishes_ends_both_processes_cleanly_whichever_exits_last(last_rank, data, tmp_path):
    # Before: DDP left the gloo group alive past destroy_process_group, its threads ran into the
    # interpreter's shutdown, and a process that had finished now and then aborted there (SIGABRT,
    # "terminate called without an active exception"): torchrun reported a failed run. `finished`
    # checks every process: exit code 0, no gloo thread left when fmnist is done, no abort.
    code, out, err = finished(torchrun(train_args(data, tmp_path, "done", epochs=1), last_rank=last_rank))
    assert code == 0, err
    assert out.count("test accuracy") == 1
    assert json.loads((tmp_path / "done" / "summary.json").read_text())["finished"] is True


def test_sigterm_to_torchrun_stops_both_processes_cleanly_and_one_process_resumes(data, tmp_path, capsys):
    run = tmp_path / "long"
    process = torchrun(train_args(data, tmp_path, "long", epochs=60, limit_batches=1))
    deadline = time.monotonic() + 240
    while not (run / "metrics.csv").exists():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # torchrun passes it to both processes, at whatever step each is
    code, _, err = finished(process)
    assert code != 0
    assert err.count("fmnist: stopped by SIGTERM") == 1 and "resume with: torchrun" in err, err
    epochs_done = len(metrics(run))
    assert 1 <= epochs_done < 60 and (run / "last.pt").is_file() and not (run / "summary.json").exists()

    # The checkpoint holds the plain model: one process resumes it, as any run.
    assert main(["train", "--resume", str(run)]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert [int(row["epoch"]) for row in metrics(run)] == list(range(1, 61))


@pytest.mark.parametrize("killed", ["1", "0"])
def test_a_killed_process_stops_the_other_with_one_line_and_the_run_resumes(killed, data, tmp_path):
    run = tmp_path / "lost"
    # The 4th step is epoch 2's first: epoch 1 is saved, and the other process is inside a collective.
    code, out, err = finished(torchrun(train_args(data, tmp_path, "lost"), kill_at=f"train-step:4:SIGKILL:{killed}"))
    assert code != 0
    worker_lines = [line for line in err.splitlines() if line.startswith("[rank")]
    assert not worker_lines, err  # before: gloo's "Connection reset by peer" traceback on the survivor
    survivor = "0" if killed == "1" else "1"
    said = [line for line in err.splitlines() if line.startswith(f"fmnist: error: process {survivor} of 2 lost touch")]
    assert len(said) == 1, err  # once, and again in torchrun's own summary
    assert f"traceback : {said[0]}" in err
    assert f"resume with: torchrun --nproc-per-node 2 -m fmnist train --resume {run}" in err
    assert [row["epoch"] for row in metrics(run)] == ["1"]

    code, out, err = finished(torchrun(["train", "--resume", str(run)]))
    assert code == 0, err
    assert [row["epoch"] for row in metrics(run)] == ["1", "2"]


@pytest.mark.parametrize("change, fragment", [
    (("--batch-size", "51"), "--batch-size 51: the global batch must divide evenly among the 2 processes"),
    (("--model", "fast-cnn", "--sync-bn"), "--sync-bn: SyncBatchNorm runs on CUDA only"),
])
def test_bad_options_under_torchrun_are_fmnist_s_line_in_torchrun_s_summary_too(change, fragment, data, tmp_path):
    args = train_args(data, tmp_path, "bad")
    if change[0] in args:
        args[args.index(change[0]) + 1] = change[1]
        change = change[2:]
    code, out, err = finished(torchrun([*args, *change]))
    assert code != 0 and not (tmp_path / "bad").exists()
    assert not [line for line in err.splitlines() if line.startswith("[rank")], err  # no worker traceback
    # Rank 0 says the line, or, when the other process refused first and torchrun stopped rank 0 before
    # it got there, says that it was stopped (before: nothing at all, killed mid-way by that SIGTERM).
    own_line = f"fmnist: error: {fragment}"
    assert err.startswith(own_line) or f"\n{own_line}" in err or err.startswith("fmnist: stopped by SIGTERM\n"), err
    # torchrun's own summary shows the reason, whichever process it stopped first (before: "To enable
    # traceback see ...")
    assert f"traceback : fmnist: error: {fragment}" in err, err


def test_a_global_batch_that_does_not_divide_is_refused_naming_the_option(data, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it; refused before joining any process group
    args = train_args(data, tmp_path, "odd")
    args[args.index("--batch-size") + 1] = "51"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--batch-size 51: the global batch must divide evenly among the 2" in err
    assert not (tmp_path / "odd").exists()


@pytest.mark.parametrize(
    ("model", "world_size", "fragment"),
    [
        ("lenet", "1", "--sync-bn: ignored by these settings: only models with BatchNorm layers"),
        ("fast-cnn", "1", "--sync-bn: synchronizes BatchNorm across the processes of a torchrun run; this is one"),
        ("fast-cnn", "2", "--sync-bn: SyncBatchNorm runs on CUDA only"),
    ],
)
def test_sync_bn_is_refused_where_it_would_do_nothing(model, world_size, fragment, data, tmp_path, monkeypatch,
                                                      capsys):
    monkeypatch.setenv("WORLD_SIZE", world_size)
    args = train_args(data, tmp_path, "bn")
    args[args.index("--model") + 1] = model
    assert main([*args, "--sync-bn"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err, err


def test_each_process_takes_its_share_of_the_same_global_batches():
    split = Split(torch.zeros(10, 28, 28, dtype=torch.uint8), torch.arange(10))
    loader = TensorLoader(split, batch_size=4, shuffle=True, seed=3)
    global_batches = [labels.tolist() for _, labels in TensorLoader(split, batch_size=4, shuffle=True, seed=3)]
    shards = {}
    for rank in (0, 1):
        sharded = ShardedBatches(loader, SimpleNamespace(rank=rank, world_size=2))
        loader.generator.manual_seed(3)  # every process draws the same permutation
        shards[rank] = [labels.tolist() for _, labels in sharded]
        assert len(sharded) == 3 and sharded.images_per_epoch() == 5
    for batch, first, second in zip(global_batches, shards[0], shards[1], strict=True):
        assert sorted(first + second) == sorted(batch) and abs(len(first) - len(second)) <= 1
    # A last global batch smaller than the number of processes would leave one without images: left out.
    assert len(ShardedBatches(loader, SimpleNamespace(rank=0, world_size=3))) == 2
