"""Bad, damaged or hostile input: one line on stderr and exit code 2, never a traceback, never a
resource blown up. Each test is one family of the defects an attack on the CLI found."""

from __future__ import annotations

import gzip
import json
import os
import resource
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fmnist_here, fmnist_process, idx_bytes, one_line, snapshot, tiny_train_args, write_dataset
from fmnist.data.fashion import FILES
from fmnist.data.idx import IMAGES_MAGIC, read_images
from fmnist.errors import DataError
from fmnist.inference import predict
from fmnist.runs.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def run(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    assert fmnist_here(tiny_train_args(data, out, "run", epochs=2)).returncode == 0
    return out / "run"


@pytest.fixture
def run_copy(run, tmp_path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def png(path: Path, array: np.ndarray | None = None) -> Path:
    Image.fromarray(array if array is not None else np.zeros((28, 28), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------- read-only and unwritable places

def test_every_writing_command_says_one_line_for_a_read_only_folder(run, data, tmp_path, make_read_only):
    (tmp_path / "read-only").mkdir()
    read_only = make_read_only(tmp_path / "read-only")
    frozen_run = Path(shutil.copytree(run, tmp_path / "frozen"))
    (frozen_run / "summary.json").unlink()  # a stopped-looking run, so that --resume would write into it
    make_read_only(frozen_run)
    frozen_before = snapshot(frozen_run)
    train = tiny_train_args(data, read_only, "x", epochs=1)
    commands = {
        "train": train,
        "train --resume": ["train", "--resume", str(frozen_run)],
        "sweep": ["sweep", *train[1:train.index("--name")], "--name", "s", "--set", "seed=1,2"],
        "report": ["report", str(frozen_run), "--allow-unverified-data"],
        "export": ["export", str(run), "--out", str(read_only / "model.onnx")],
        "compare": ["compare", str(run), "--out", str(read_only / "comparison")],
        "data download": ["data", "download", "--dir", str(read_only / "data"), "--mirror", "http://127.0.0.1:9/"],
    }
    for name, arguments in commands.items():
        error = one_line(fmnist_here(arguments))
        assert str(read_only) in error or str(frozen_run) in error, (name, error)
    assert not any(read_only.iterdir())
    assert snapshot(frozen_run) == frozen_before


def test_every_writing_command_says_one_line_for_an_unwritable_path(run, data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    nowhere = blocker / "sub"  # a folder under a file can never be created
    train = tiny_train_args(data, nowhere, "x", epochs=1)
    commands = [
        train,
        ["sweep", *train[1:train.index("--name")], "--name", "s", "--set", "seed=1,2"],
        ["export", str(run), "--out", str(nowhere / "model.onnx")],
        ["compare", str(run), "--out", str(nowhere)],
        ["data", "download", "--dir", str(nowhere)],
    ]
    for arguments in commands:
        assert str(nowhere) in one_line(fmnist_here(arguments)), arguments


def test_a_full_disk_is_one_line_naming_the_file(data, tmp_path):
    """Writes beyond 64 KB fail in the child (RLIMIT_FSIZE), as on a full disk: the checkpoint write fails."""

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write (EFBIG) instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    environment = {key: value for key, value in os.environ.items() if key != "FMNIST_KILL_AT"}
    result = subprocess.run([sys.executable, "-m", "fmnist", *tiny_train_args(data, tmp_path, "full", epochs=1)],
                            capture_output=True, text=True, env=environment, preexec_fn=small_files, timeout=300)
    error = one_line(result)
    assert "File too large" in error and ".pt" in error


def test_data_info_works_with_a_read_only_cache(real_data, tmp_path, make_read_only, monkeypatch):
    (tmp_path / "cache").mkdir()
    make_read_only(tmp_path / "cache")
    result = fmnist_process(["data", "info", "--data-dir", str(real_data)],
                            env={"XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert result.returncode == 0 and "all four files match" in result.stdout


# ---------------------------------------------------------------- checkpoints

@pytest.mark.parametrize("damage", ["only the marker", "std 0", "mean as text", "no mean", "weights NaN"])
def test_a_damaged_checkpoint_is_one_line_in_evaluate_predict_and_export(run, data, tmp_path, damage):
    state = load_checkpoint(run / "best.pt")
    if damage == "only the marker":
        state = {"format": state["format"]}
    elif damage == "std 0":
        state["config"]["std"] = 0.0
    elif damage == "mean as text":
        state["config"]["mean"] = "0.3"
    elif damage == "no mean":
        del state["config"]["mean"]
    else:
        state["model"] = {key: torch.full_like(value, float("nan")) for key, value in state["model"].items()}
    save_checkpoint(state, tmp_path / "damaged.pt")
    image = png(tmp_path / "item.png")
    commands = [
        ["evaluate", str(tmp_path / "damaged.pt"), "--data-dir", str(data), "--allow-unverified-data"],
        ["predict", str(tmp_path / "damaged.pt"), str(image)],
        ["export", str(tmp_path / "damaged.pt"), "--out", str(tmp_path / "model.onnx")],
    ]
    expected = "not finite" if damage == "weights NaN" else "damaged or was not written by fmnist"
    for arguments in commands[: 2 if damage == "weights NaN" else 3]:
        assert expected in one_line(fmnist_here(arguments)), arguments


def test_a_checkpoint_holding_code_is_refused_saying_why(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this would have run",))

    torch.save({"format": "fmnist-checkpoint-1", "model": Payload()}, tmp_path / "zip.pt")
    with open(tmp_path / "plain.pt", "wb") as handle:  # a legacy (non-zip) pickle: torch warns before it fails
        import pickle

        pickle.dump({"model": Payload()}, handle, protocol=2)
    for name in ("zip.pt", "plain.pt"):
        result = fmnist_here(["evaluate", str(tmp_path / name)])
        error = one_line(result)
        assert "other than tensors" in error and "could run code" in error
        assert "this would have run" not in error + result.stdout


# ---------------------------------------------------------------- run folders edited or damaged

def test_a_hand_edited_config_json_is_one_line_and_trains_nothing(run_copy):
    (run_copy / "summary.json").unlink()  # looks stopped
    saved = json.loads((run_copy / "config.json").read_text())
    for name, value, fragment in (("epochs", "3", "should be of type int"), ("epochs", 9, "last.pt was trained with 2"),
                                  ("model", 7, "should be of type str")):
        edited = {**saved, "config": {**saved["config"], name: value}}
        (run_copy / "config.json").write_text(json.dumps(edited))
        before = snapshot(run_copy)
        assert fragment in one_line(fmnist_here(["train", "--resume", str(run_copy)]))
        assert snapshot(run_copy) == before


@pytest.mark.parametrize("damage", ["metrics.csv", "summary.json"])
def test_damaged_run_files_are_one_line_in_compare_and_report(run_copy, tmp_path, damage):
    if damage == "metrics.csv":
        (run_copy / "metrics.csv").write_text("epoch,train_loss\nnot-a-number,x\n")
    else:
        (run_copy / "summary.json").write_text("[1, 2, 3]")
    assert damage in one_line(fmnist_here(["compare", str(run_copy), "--out", str(tmp_path / "c")]))
    assert damage in one_line(fmnist_here(["report", str(run_copy), "--allow-unverified-data"]))


def test_compare_keeps_both_curves_of_runs_with_the_same_folder_name(run, tmp_path):
    twin = Path(shutil.copytree(run, tmp_path / "elsewhere" / "run"))
    result = fmnist_here(["compare", str(run), str(twin), "--out", str(tmp_path / "c")])
    assert result.returncode == 0, result.stderr
    rows = (tmp_path / "c" / "comparison.csv").read_text().splitlines()[1:]
    assert len({row.split(",")[0] for row in rows}) == 2


# ---------------------------------------------------------------- options

@pytest.mark.parametrize("flag", ["--seed", "--split-seed"])
def test_seeds_beyond_64_bits_are_refused_before_the_data_is_loaded(flag, tmp_path):
    out = tmp_path / "runs"
    error = one_line(fmnist_here(["train", flag, str(2**64), "--out", str(out), "--data-dir", "/nowhere"]))
    assert f"{flag} {2**64}" in error and not out.exists()


def test_batchnorm1d_with_a_batch_of_one_is_refused_leaving_nothing(data, tmp_path):
    arguments = ["train", "--model", "v1-5-5-bn", "--batch-size", "1", "--data-dir", str(data),
                 "--allow-unverified-data", "--val-size", "100", "--out", str(tmp_path / "runs")]
    assert "at least 2 images per batch" in one_line(fmnist_here(arguments))
    one_image = ["train", "--model", "v1-5-5-bn", "--data-dir", str(data), "--allow-unverified-data",
                 "--val-size", "599", "--out", str(tmp_path / "runs")]
    assert "1 training images" in one_line(fmnist_here(one_image))
    assert not (tmp_path / "runs").exists()


def test_a_diverging_first_epoch_says_there_is_no_checkpoint(data, tmp_path):
    arguments = ["train", "--optimizer", "sgd", "--scheduler", "none", "--lr", "1e12", "--data-dir", str(data),
                 "--allow-unverified-data", "--val-size", "100", "--out", str(tmp_path), "--name", "nan"]
    error = one_line(fmnist_here(arguments), code=3)
    assert "no epoch was completed yet, so there is no checkpoint" in error and "last good" not in error
    summary = json.loads((tmp_path / "nan" / "summary.json").read_text())
    assert "loss became" in summary["diverged"] and summary["epochs_completed"] == 0
    assert "diverged" in one_line(fmnist_here(["train", "--resume", str(tmp_path / "nan")]))


def test_bench_without_warm_up_and_with_more_steps_than_an_epoch(data):
    result = fmnist_here(["bench", "--data-dir", str(data), "--allow-unverified-data", "--val-size", "100",
                          "--batch-size", "100", "--warmup", "0", "--steps", "12", "--no-conventional", "--json"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["timed_batches"] == 12  # 5 batches an epoch: the steps ran on into epoch 3


# ---------------------------------------------------------------- image files

def test_predict_survives_odd_file_names_and_modes(run, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    png(folder / "a.png")
    Image.new("LAB", (30, 30)).save(folder / "b.png", format="TIFF")  # LAB: no direct conversion to gray
    png(Path(os.fsdecode(os.fsencode(folder) + b"/c\xff.png")))  # a file name that is not UTF-8
    result = fmnist_process(["predict", str(run), str(folder)], env={"PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert len(result.stdout.splitlines()) == 3


def test_a_lab_image_is_predicted_like_any_other(run, tmp_path):
    lab = Image.new("LAB", (30, 30))
    assert predict(run, [lab])[0].probabilities is not None


def test_a_file_given_twice_is_read_once(run, tmp_path):
    png(tmp_path / "a.png")
    assert len(predict(run, [tmp_path / "a.png", tmp_path, str(tmp_path / "a.png")])) == 1


def test_exif_orientation_is_applied(tmp_path):
    from fmnist.data.images import read_image

    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    Image.new("L", (60, 20), 255).save(tmp_path / "sideways.jpg", exif=exif)
    assert read_image(tmp_path / "sideways.jpg").size == (20, 60)


def test_an_image_bomb_is_refused_before_it_is_decoded(run, tmp_path):
    """A PNG header claiming 12,000 x 12,000 16-bit pixels (4 GB once decoded), with no real data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 12000, 16, 0, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    png(tmp_path / "fine.png")
    result = fmnist_here(["predict", str(run), str(bomb), str(tmp_path / "fine.png")])
    assert result.returncode == 1 and result.stderr.count("\n") == 1  # one line for the refused file
    assert "12000 x 12000 pixels" in result.stderr and "fine.png" in result.stdout


def test_predict_sends_the_images_through_the_model_in_batches(run, tmp_path):
    from fmnist.inference import load_model

    for index in range(70):
        png(tmp_path / f"{index:03}.png")
    model = load_model(run)
    sizes = []
    model.network.register_forward_hook(lambda module, inputs, output: sizes.append(len(inputs[0])))
    predictions = predict(model, tmp_path, batch_size=32)
    assert len(predictions) == 70 and max(sizes) == 32


# ---------------------------------------------------------------- data files

def test_a_gzip_bomb_is_not_inflated_beyond_what_its_header_says(tmp_path, monkeypatch):
    header = idx_bytes(np.zeros((10, 28, 28), dtype=np.uint8), IMAGES_MAGIC)
    path = tmp_path / (FILES["test_images"] + ".gz")
    with gzip.open(path, "wb", compresslevel=9) as handle:
        handle.write(header)
        for _ in range(50):  # 50 MB of zeros after what the header promises: ~50 KB compressed
            handle.write(bytes(1 << 20))
    inflated = []
    original_read = gzip.GzipFile.read
    monkeypatch.setattr(gzip.GzipFile, "read", lambda self, size=-1: inflated.append(
        len(result := original_read(self, size))) or result)
    with pytest.raises(DataError, match="truncated or corrupt|longer"):
        read_images(path)
    assert sum(inflated) < 10_000
