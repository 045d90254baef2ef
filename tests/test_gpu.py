"""The GPU suite: `pytest -m gpu` on a machine with CUDA (skipped elsewhere, saying why).

It trains, stops and resumes bit for bit on the GPU, runs two NCCL processes under torchrun, serves on the
GPU, checks that a training step never makes the CPU wait for the GPU, and checks the precision choices
(bf16, fp16 with its scaler, TF32) and their accuracy, on small generated data; docs/gpu.md says what
each promise is. Written without a GPU at hand (issue 31): its first run on one is still to come.
tests/test_device_ready.py checks the same on a CPU, with the CUDA calls stood in for.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import fmnist_process, write_dataset
from fmnist.data.splits import load_splits
from fmnist.runs.checkpoint import load_checkpoint
from fmnist.training.build import build_training
from fmnist.training.config import TrainConfig
from fmnist.training.loop import train_one_epoch
from fmnist.training.runtime import choose_precision, seed_everything

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is False here); run `pytest -m gpu` on one"),
]

NON_TIMING = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("gpu-data") / "data", train_count=2000, test_count=500)


def gpu_args(data: Path, out: Path, name: str, *options: str, epochs: int = 3) -> list[str]:
    return ["train", "--data-dir", str(data), "--allow-unverified-data", "--out", str(out), "--name", name,
            "--epochs", str(epochs), "--val-size", "200", "--batch-size", "64", "--eval-batch-size", "100",
            "--seed", "5", "--device", "cuda", "--recipe", "top", "--limit-batches", "8", *options]


def metric_rows(run: Path) -> list[dict]:
    with open(run / "metrics.csv") as handle:
        return [{key: row[key] for key in NON_TIMING} for row in csv.DictReader(handle)]


def same_weights(first: Path, second: Path) -> bool:
    weights = [load_checkpoint(path)["model"] for path in (first, second)]
    return weights[0].keys() == weights[1].keys() and all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_gpu_run_stopped_and_resumed_equals_one_that_never_stopped(data, tmp_path):
    # `top`: crops, erasing, flips and dropout draw on the CPU and on the GPU; --ema averages the weights.
    options = ("--ema", "0.99")
    reference = fmnist_process(gpu_args(data, tmp_path, "reference", *options))
    assert reference.returncode == 0, reference.stderr
    killed = fmnist_process(gpu_args(data, tmp_path, "killed", *options), kill_at="write-metrics.csv:2")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resumed = fmnist_process(["train", "--resume", str(tmp_path / "killed")])
    assert resumed.returncode == 0, resumed.stderr
    assert metric_rows(tmp_path / "killed") == metric_rows(tmp_path / "reference")
    for name in ("best.pt", "last.pt"):
        assert same_weights(tmp_path / "killed" / name, tmp_path / "reference" / name)
    state = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert state["rng"]["device"]["type"] == "cuda" and "cuda" not in state["rng"]  # its own GPU's generator
    environment = json.loads((tmp_path / "reference" / "config.json").read_text())["environment"]
    assert environment["accelerator"]["name"] == torch.cuda.get_device_name(0)
    assert {"compute_capability", "cuda", "cudnn"} <= environment["accelerator"].keys()
    assert "cuDNN autotuning off" in reference.stdout  # the run line says what --deterministic chose


def test_a_training_step_never_waits_for_the_gpu(data):
    # CUDA's sync debug mode warns at every host sync: the count must not grow with the steps.
    config = TrainConfig.from_recipe("top", ema=0.99, amp="fp16", optimizer="sgd", device="cuda",
                                     data_dir=str(data), allow_unverified_data=True, val_size=200, batch_size=64)
    splits = load_splits(data, 200, verify=False)
    device = torch.device("cuda")
    seed_everything(5)
    training = build_training(config, splits.train.to(device), splits.val.to(device), splits.test.to(device))
    assert training.optimization.optimizer.defaults["fused"]  # fp16's verdict stays on the GPU
    batches = list(training.train_loader)
    train_one_epoch(training.model, batches[:3], training.optimization)  # warm-up: pinned blocks, kernels

    def syncs(steps: int) -> int:
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                train_one_epoch(training.model, iter(batches[3:3 + steps]), training.optimization)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(warning.message) for warning in caught)

    assert syncs(2) == syncs(12)  # only the epoch's end reads the GPU (its loss and accuracy)


def torchrun(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "FMNIST_KILL_AT"}
    env.update({"OMP_NUM_THREADS": "1", **({"FMNIST_KILL_AT": kill_at} if kill_at else {})})
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "fmnist", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_two_nccl_processes_train_stop_and_resume_exactly_under_torchrun(data, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 GPUs for two NCCL processes; {torch.cuda.device_count()} here")
    reference = torchrun(gpu_args(data, tmp_path, "reference"))
    assert reference.returncode == 0, reference.stderr
    assert "x 2 processes" in reference.stdout
    killed = torchrun(gpu_args(data, tmp_path, "killed"), kill_at="write-metrics.csv:2")
    assert killed.returncode != 0
    state = load_checkpoint(tmp_path / "killed" / "last.pt")
    assert [rank["device"]["type"] for rank in state["rank_rng"]] == ["cuda", "cuda"]  # each rank's own
    resumed = torchrun(["train", "--resume", str(tmp_path / "killed")])
    assert resumed.returncode == 0, resumed.stderr
    assert metric_rows(tmp_path / "killed") == metric_rows(tmp_path / "reference")
    assert same_weights(tmp_path / "killed" / "last.pt", tmp_path / "reference" / "last.pt")


def test_serve_and_predict_run_on_the_gpu(data, tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    from fmnist.inference import load_model
    from fmnist.serve.app import create_app

    assert fmnist_process(gpu_args(data, tmp_path, "served", epochs=1)).returncode == 0
    model = load_model(tmp_path / "served", "cuda")
    assert next(model.parameters()).device.type == "cuda"
    image = tmp_path / "shirt.png"
    Image.new("L", (28, 28), 200).save(image)
    with TestClient(create_app(model)) as client:
        answer = client.post("/predict", files={"file": (image.name, image.read_bytes(), "image/png")})
        assert answer.status_code == 200, answer.text
    predicted = fmnist_process(["predict", str(tmp_path / "served"), str(image), "--device", "cuda"])
    assert predicted.returncode == 0 and predicted.stdout.startswith(str(image)), predicted.stderr


@pytest.mark.parametrize("amp", ["bf16", "fp16", "none"])
def test_each_precision_trains_to_the_accuracy_of_fp32(data, tmp_path, amp):
    capability = torch.cuda.get_device_capability()
    if amp == "bf16" and capability < (8, 0):
        pytest.skip(f"compute capability {capability}: bf16 is emulated here")
    result = fmnist_process(gpu_args(data, tmp_path, amp, "--amp", amp, "--no-tf32"))
    assert result.returncode == 0, result.stderr
    reference = tmp_path / "fp32-reference"
    if not reference.exists():
        assert fmnist_process(gpu_args(data, tmp_path, reference.name, "--amp", "none", "--no-tf32")).returncode == 0
    accuracy = [json.loads((tmp_path / run / "summary.json").read_text())["test_accuracy"]
                for run in (amp, reference.name)]
    assert abs(accuracy[0] - accuracy[1]) <= 0.03


def test_auto_chooses_bf16_only_where_the_gpu_has_it_and_tf32_is_a_setting(data, tmp_path):
    precision = choose_precision("auto", torch.device("cuda"))
    native = torch.cuda.get_device_capability() >= (8, 0)
    assert precision.amp == ("bf16" if native else "none")
    for option, allowed in (("--tf32", True), ("--no-tf32", False)):
        result = fmnist_process(gpu_args(data, tmp_path, option.strip("-"), option, "--amp", "none", epochs=1))
        assert result.returncode == 0, result.stderr
        if native:
            assert ("TF32 matmuls on" if allowed else "TF32 off") in result.stdout
        saved = json.loads((tmp_path / option.strip("-") / "config.json").read_text())
        assert saved["config"]["tf32"] is allowed


def test_bench_measures_with_tf32_as_training_sets_it(data):
    """`fmnist bench` sets TF32 as a run would (on by default, --no-tf32 for full fp32) and says which."""
    from fmnist.cli import main

    native = torch.cuda.get_device_capability() >= (8, 0)
    for flag, allowed in (("--tf32", True), ("--no-tf32", False)):
        result = subprocess.run(
            [sys.executable, "-m", "fmnist", "bench", "--device", "cuda", "--steps", "2", "--warmup", "0",
             "--no-conventional", "--data-dir", str(data), "--allow-unverified-data", "--val-size", "200", flag,
             "--json"], capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["tf32"] is (allowed if native else None)
        assert main(["bench", "--device", "cuda", "--steps", "1", "--warmup", "0", "--no-conventional",
                     "--data-dir", str(data), "--allow-unverified-data", "--val-size", "200", flag]) == 0
        assert torch.backends.cuda.matmul.allow_tf32 is allowed and torch.backends.cudnn.allow_tf32 is allowed
