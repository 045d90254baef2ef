"""Bad input to the Python API is fmnist's own one-line error, never a TypeError or RuntimeError from deep inside."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

import fmnist
from fmnist import TrainConfig, create_model, load_model, predict


@pytest.mark.parametrize(("options", "fragment"), [
    ({"epoch": 3}, "TrainConfig(epoch=...): unknown option; did you mean epochs?"),
    ({"learning_rate": 0.1}, "TrainConfig(learning_rate=...): unknown option"),
    ({"given": frozenset()}, "TrainConfig(given=...): unknown option"),
    ({"epochs": "3"}, "TrainConfig(epochs='3'): should be of type int, not str"),
    ({"lr": True, "scheduler": "cosine"}, "TrainConfig(lr=True): should be of type float, not bool"),
    ({"ema": np.float32(0.9)}, "TrainConfig(ema="),
    ({"recipe": "nope"}, "TrainConfig(recipe='nope'): unknown recipe; choose one of"),
])
def test_a_bad_option_is_a_config_error_naming_it(options, fragment):
    with pytest.raises(fmnist.ConfigError) as raised:
        TrainConfig(**options)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_unknown_options_are_refused_by_replace_and_from_recipe_too():
    with pytest.raises(fmnist.ConfigError, match="did you mean epochs"):
        TrainConfig().replace(epoch=3)
    with pytest.raises(fmnist.ConfigError, match="did you mean batch_size"):
        TrainConfig.from_recipe("quick", batchsize=3)
    with pytest.raises(fmnist.ConfigError, match="unknown recipe"):
        TrainConfig.from_recipe("nope")


def test_positional_options_are_refused_by_name():
    with pytest.raises(fmnist.ConfigError, match="give options by name"):
        TrainConfig("fast")


def test_a_config_still_copies_pickles_and_replaces():
    import copy
    import dataclasses
    import pickle

    config = TrainConfig(epochs=2)
    assert pickle.loads(pickle.dumps(config)) == config == copy.deepcopy(config)
    assert dataclasses.replace(config, epochs=3).epochs == 3


@pytest.fixture(scope="module")
def network() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model("mlp").eval()


@pytest.mark.parametrize(("images", "fragment"), [
    (torch.zeros(2, 3, 28, 28, dtype=torch.uint8), "shape (2, 3, 28, 28)"),
    (torch.zeros(2, 28, 28, 3, dtype=torch.uint8), "shape (2, 28, 28, 3)"),
    (torch.zeros(5, 784, dtype=torch.uint8), "shape (5, 784)"),
    (torch.zeros(28, dtype=torch.uint8), "shape (28,)"),
    (torch.zeros(0, 0, dtype=torch.uint8), "shape (0, 0)"),
    (torch.full((2, 28, 28), 255.0), "float images range from 255 to 255; give floats in [0, 1]"),
    (torch.full((2, 28, 28), -0.5), "range from -0.5 to -0.5"),
    (torch.zeros(2, 28, 28, dtype=torch.int64), "dtype torch.int64"),
    (torch.zeros(2, 28, 28, dtype=torch.bool), "dtype torch.bool"),
    (torch.full((2, 28, 28), float("nan")), "NaN or infinite"),
    (torch.zeros(0, 28, 28, dtype=torch.uint8), "no images given"),
    (np.zeros((2, 28, 28), dtype=np.int32), "NumPy dtype int32"),
    (np.zeros((2, 28, 28, 3), dtype=np.uint8), "shape (2, 28, 28, 3)"),
    ([Image.new("L", (0, 0))], "item 0 is an image of 0x0 pixels"),
    ([], "no images given (an empty list)"),
    ([[0] * 28] * 28, "item 0 is a list"),
    ([torch.zeros(28, 28, dtype=torch.uint8), "boot.png"], "predict files and in-memory images in separate calls"),
    ([torch.zeros(2, 28, 28, dtype=torch.uint8)], "shape (2, 28, 28); give (28, 28)"),
    (None, "cannot read images from NoneType"),
    (7, "cannot read images from int"),
])
def test_predict_refuses_bad_images_saying_what_it_takes(network, images, fragment):
    with pytest.raises(fmnist.DataError) as raised:
        predict(network, images)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_predict_takes_numpy_arrays_and_lists_of_images_like_a_tensor(network):
    batch = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    expected = [prediction.probabilities for prediction in predict(network, batch)]
    assert [p.probabilities for p in predict(network, batch.numpy())] == expected
    assert [p.probabilities for p in predict(network, list(batch))] == expected
    assert [p.probabilities for p in predict(network, [image.numpy() for image in batch])] == expected
    assert [p.source for p in predict(network, list(batch))] == ["image 0", "image 1", "image 2"]


@pytest.mark.parametrize("layout", ["N,28,28", "N,1,28,28", "N,28,28,1", "list of 28,28,1", "float 0..1",
                                    "numpy float32 N,28,28,1", "float64 N,1,28,28"])
def test_predict_takes_every_layout_and_floats_in_0_1_with_the_same_answer(network, layout):
    batch = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    expected = predict(network, batch)
    given = {
        "N,28,28": batch, "N,1,28,28": batch[:, None], "N,28,28,1": batch[..., None],
        "list of 28,28,1": [image[..., None] for image in batch], "float 0..1": batch.float() / 255,
        "numpy float32 N,28,28,1": batch.numpy()[..., None].astype(np.float32) / 255,
        "float64 N,1,28,28": batch[:, None].double() / 255,
    }[layout]
    result = predict(network, given)
    assert isinstance(result.probabilities, np.ndarray) and result.probabilities.shape == (3, 10)
    assert result.labels.shape == (3,) and result.labels.dtype == np.int64
    np.testing.assert_allclose(result.probabilities, expected.probabilities, atol=1e-5)
    assert (result.labels == expected.labels).all()
    assert [p.label for p in result] == result.labels.tolist()


def test_predict_marks_unreadable_files_in_its_arrays(network, tmp_path):
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    result = predict(network, [tmp_path / "bad.png", tmp_path / "good.png"], skip_unreadable=True)
    assert result[0].error is not None and result.labels[0] == -1 and np.isnan(result.probabilities[0]).all()
    assert result.labels[1] == result[1].label and result.class_names[0] is None


def test_predict_refuses_a_missing_file_a_missing_run_a_bad_model_and_batch_size(network, tmp_path):
    image = torch.zeros(28, 28, dtype=torch.uint8)
    with pytest.raises(fmnist.DataError, match="no such file"):
        predict(network, tmp_path / "missing.png")
    with pytest.raises(fmnist.CheckpointError, match="no such run folder or checkpoint file"):
        predict(tmp_path / "no-run", image)
    with pytest.raises(fmnist.CheckpointError, match="the model is a NoneType"):
        predict(None, image)
    for batch_size in (0, -1, 2.5, "8", True):
        with pytest.raises(fmnist.ConfigError, match="batch_size"):
            predict(network, image, batch_size=batch_size)


def damaged_checkpoints(folder) -> dict:
    """Files that are not usable checkpoints: garbage, a truncated torch file, a dict without the format marker."""
    buffer = io.BytesIO()
    torch.save({"format": "fmnist-checkpoint-1", "model": create_model("mlp").state_dict()}, buffer)
    made = {"garbage": b"not a checkpoint" * 10, "truncated": buffer.getvalue()[:2000], "empty": b""}
    plain = io.BytesIO()
    torch.save({"weights": torch.zeros(3)}, plain)
    made["foreign"] = plain.getvalue()
    return made


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "foreign"])
def test_load_model_refuses_a_damaged_best_pt_in_one_line(tmp_path, damage):
    (tmp_path / "best.pt").write_bytes(damaged_checkpoints(tmp_path)[damage])
    with pytest.raises(fmnist.CheckpointError) as raised:
        load_model(tmp_path)
    assert "best.pt" in str(raised.value) and "\n" not in str(raised.value)


def test_load_model_refuses_what_is_not_a_run_or_a_checkpoint(tmp_path):
    with pytest.raises(fmnist.CheckpointError, match="no best.pt or last.pt in this folder"):
        load_model(tmp_path)
    with pytest.raises(fmnist.CheckpointError, match="no such run folder or checkpoint file"):
        load_model(tmp_path / "missing")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(fmnist.CheckpointError, match="not a readable checkpoint"):
        load_model(text)
    Image.new("L", (28, 28)).save(tmp_path / "image.png")
    with pytest.raises(fmnist.CheckpointError, match="not a readable checkpoint"):
        load_model(tmp_path / "image.png")
    for source in (None, 3, ["runs/fast"]):
        with pytest.raises(fmnist.CheckpointError, match="not a path"):
            load_model(source)


@pytest.mark.parametrize("device", ["tpu", "", "cuda:x", 0])
def test_an_unknown_device_is_a_config_error(device):
    from fmnist.training.runtime import resolve_device

    with pytest.raises(fmnist.ConfigError, match="not a device fmnist can use"):
        resolve_device(device)
