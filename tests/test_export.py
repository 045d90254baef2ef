"""ONNX export: onnxruntime gives PyTorch's logits for any batch size; a missing extra is one line.

CI needs the extra installed (`pip install '.[onnx]'`) for the comparison test to run; without
onnxruntime it is skipped, and only that test.
"""

from __future__ import annotations

import builtins
import json

import numpy as np
import pytest
import torch

from fmnist.cli import main
from fmnist.data.loader import normalize
from fmnist.data.splits import read_split
from fmnist.experiment import train
from fmnist.runs.checkpoint import load_checkpoint, model_from_checkpoint
from fmnist.training.config import TrainConfig
from fmnist.training.loop import predict_logits


def train_tiny_run(data_dir, out, **options):
    """A run to export from: its best.pt is what counts (no report)."""
    config = TrainConfig(
        epochs=1, batch_size=50, limit_batches=3, val_size=100, data_dir=str(data_dir), allow_unverified_data=True,
        out=str(out), name="export", report=False, **options,
    )
    return train(config).path


@pytest.fixture
def tiny_run(tiny_data, tmp_path):
    return train_tiny_run(tiny_data, tmp_path / "runs")


def test_onnxruntime_matches_pytorch_on_test_images(tiny_run, tiny_data, capsys):
    onnxruntime = pytest.importorskip("onnxruntime")
    assert main(["export", str(tiny_run), "--format", "onnx"]) == 0
    onnx_file = tiny_run / "model.onnx"
    assert f"wrote {onnx_file}" in capsys.readouterr().out

    state = load_checkpoint(tiny_run)
    model = model_from_checkpoint(state).eval()
    test = read_split(tiny_data, "test")
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map
    assert float(metadata["mean"]) == state["config"]["mean"] and "Ankle boot" in metadata["classes"]
    # The run's temperature is applied in the graph: softmax of the output is what fmnist predict gives.
    temperature = json.loads((tiny_run / "calibration.json").read_text())["temperature"]
    assert float(metadata["temperature"]) == temperature != 1.0
    for batch_size in (1, 37, 200):  # the batch axis is dynamic
        images = normalize(test.images[:batch_size], state["config"]["mean"], state["config"]["std"])
        with torch.inference_mode():
            expected = model(images).numpy() / temperature
        (logits,) = session.run(["logits"], {"images": images.numpy()})
        assert logits.shape == (batch_size, 10)
        assert np.abs(logits - expected).max() < 1e-4
    assert main(["export", str(tiny_run), "--out", str(tiny_run.parent / "raw.onnx"), "--no-calibrate"]) == 0
    raw = onnxruntime.InferenceSession(str(tiny_run.parent / "raw.onnx"), providers=["CPUExecutionProvider"])
    assert raw.get_modelmeta().custom_metadata_map["temperature"] == "1.0"
    (logits,) = raw.run(["logits"], {"images": images.numpy()})
    assert np.abs(logits - expected * temperature).max() < 1e-4


def test_a_tta_flip_run_exports_its_mirror_averaging(tiny_data, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    run = train_tiny_run(tiny_data, tmp_path / "runs", tta_flip=True)
    assert main(["export", str(run), "--format", "onnx"]) == 0
    state = load_checkpoint(run)
    model = model_from_checkpoint(state).eval()
    images = normalize(read_split(tiny_data, "test").images[:50], state["config"]["mean"], state["config"]["std"])
    with torch.inference_mode():
        plain, mirrored = model(images), model(images.flip(3))
    session = onnxruntime.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["tta_flip"] == "True"
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    temperature = json.loads((run / "calibration.json").read_text())["temperature"]
    assert np.abs(logits - ((plain + mirrored) / 2).numpy() / temperature).max() < 1e-4
    assert np.abs(logits - plain.numpy() / temperature).max() > 1e-3  # the mirror really counts


def test_a_tta_shift_run_exports_its_shifted_views(tiny_data, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    run = train_tiny_run(tiny_data, tmp_path / "runs", tta_flip=True, tta_shift=True, calibrate=False)
    assert main(["export", str(run), "--format", "onnx"]) == 0
    state = load_checkpoint(run)
    model = model_from_checkpoint(state).eval()
    images = normalize(read_split(tiny_data, "test").images[:50], state["config"]["mean"], state["config"]["std"])
    with torch.inference_mode():
        viewed, mirrored = predict_logits(model, images, True, True), predict_logits(model, images, True)
    session = onnxruntime.InferenceSession(str(run / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["tta_shift"] == "True"
    (logits,) = session.run(["logits"], {"images": images.numpy()})
    assert np.abs(logits - viewed.numpy()).max() < 1e-4
    assert np.abs(logits - mirrored.numpy()).max() > 1e-3  # the shifts really count


def test_missing_extra_is_a_one_line_error(tiny_run, monkeypatch, capsys):
    real_import = builtins.__import__

    def import_without_onnxscript(name, *args, **kwargs):
        if name == "onnxscript":
            raise ModuleNotFoundError("No module named 'onnxscript'", name="onnxscript")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", import_without_onnxscript)
    assert main(["export", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "onnxscript is not installed" in err and "pip install -e '.[onnx]'" in err


def test_export_paths_are_checked(tiny_run, tmp_path, capsys):
    assert main(["export", str(tmp_path / "missing")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "no" / "such" / "model.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--format", "tflite"]) == 2
    assert "invalid choice" in capsys.readouterr().err
