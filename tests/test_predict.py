"""`fmnist predict` on real Fashion-MNIST test images saved as files, with a model trained here.

One model is trained for all tests in this module: affine-cnn, 120 batches of 64 of one epoch,
about 81% validation accuracy (measured with `fmnist train --epochs 1 --limit-batches 120
--val-size 1000 --device cpu`). The test images are the first test images of three different
classes that this model classifies correctly with probability above 0.9, picked through the plain
tensor path (loader.normalize), so that what is tested is the file path: saving, reading,
preprocessing. A model this short-trained is unsure of many images; those are not chosen.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from fmnist.cli import main
from fmnist.data.loader import normalize
from fmnist.data.locate import find_data_dir
from fmnist.data.splits import read_split
from fmnist.experiment import train
from fmnist.inference import TrainedModel, load_model, predict
from fmnist.models import create_model
from fmnist.runs.checkpoint import load_checkpoint, model_from_checkpoint
from fmnist.training.config import TrainConfig


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    try:
        data_dir = find_data_dir()
    except Exception:
        pytest.fail("the real Fashion-MNIST is needed: run `make test`, or `fmnist data ensure` first")
    config = TrainConfig(
        epochs=1, limit_batches=120, val_size=1000, data_dir=str(data_dir), out=str(tmp_path_factory.mktemp("runs")),
        name="predict", device="cpu",
    )
    return train(config).path


@pytest.fixture(scope="module")
def confident_images(trained_run) -> list[tuple[torch.Tensor, int, float]]:
    """(uint8 image, true label, probability of it) for three confidently right test images."""
    state = load_checkpoint(trained_run)
    model = model_from_checkpoint(state).eval()
    test = read_split(find_data_dir(state["config"]["data_dir"]), "test")
    images, labels = test.images[:300], test.labels[:300]
    temperature = load_model(trained_run).temperature  # the run's, fitted on validation: predict applies it
    assert temperature is not None
    with torch.inference_mode():
        logits = model(normalize(images, state["config"]["mean"], state["config"]["std"]))
        probabilities = torch.softmax(logits / temperature, 1)
    chosen, classes = [], set()
    for image, label, row in zip(images, labels.tolist(), probabilities, strict=True):
        if row.argmax().item() == label and row[label] > 0.9 and label not in classes:
            chosen.append((image, label, row[label].item()))
            classes.add(label)
        if len(chosen) == 3:
            break
    assert len(chosen) == 3, "the quickly trained model should be sure of three classes among 300 images"
    return chosen


def predictions_of(capsys, *args: str) -> tuple[int, dict]:
    code = main(["predict", *args, "--json"])
    document = json.loads(capsys.readouterr().out)
    return code, {Path(entry["file"]).name: entry for entry in document if "file" in entry}


def test_saved_inverted_and_upscaled_images_are_predicted_as_their_class(trained_run, confident_images, tmp_path,
                                                                         capsys):
    for index, (image, _, _) in enumerate(confident_images):
        Image.fromarray(image.numpy()).save(tmp_path / f"{index}.png")
        Image.fromarray(255 - image.numpy()).save(tmp_path / f"{index}-on-white.png")
        Image.fromarray(image.numpy()).resize((200, 200), Image.Resampling.BICUBIC).save(tmp_path / f"{index}-200.png")
    code, entries = predictions_of(capsys, str(trained_run), str(tmp_path))
    assert code == 0 and len(entries) == 9
    for index, (_, label, probability) in enumerate(confident_images):
        for name in (f"{index}.png", f"{index}-on-white.png", f"{index}-200.png"):
            assert entries[name]["predictions"][0]["label"] == label, name
        # The 28x28 PNG goes through preprocessing unchanged: the same probability as the tensor.
        assert entries[f"{index}.png"]["predictions"][0]["probability"] == pytest.approx(probability, abs=1e-5)


def test_without_inversion_an_image_on_white_is_not_recognised_the_same(trained_run, confident_images, tmp_path,
                                                                        capsys):
    image, label, _ = confident_images[0]
    Image.fromarray(255 - image.numpy()).save(tmp_path / "on-white.png")
    _, inverted = predictions_of(capsys, str(trained_run), str(tmp_path / "on-white.png"))
    _, as_is = predictions_of(capsys, str(trained_run), str(tmp_path / "on-white.png"), "--no-invert")
    assert inverted["on-white.png"]["predictions"] != as_is["on-white.png"]["predictions"]


def test_a_bad_file_is_reported_and_the_others_still_predicted(trained_run, confident_images, tmp_path, capsys):
    image, label, _ = confident_images[0]
    Image.fromarray(image.numpy()).save(tmp_path / "good.png")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["predict", str(trained_run / "best.pt"), str(tmp_path / "good.png"), str(tmp_path / "broken.jpg"),
                 "--top-k", "2"]) == 1
    captured = capsys.readouterr()
    assert captured.out.count("\n") == 1 and captured.out.startswith(f"{tmp_path / 'good.png'}: ")
    assert captured.err.count("\n") == 1 and "broken.jpg" in captured.err and "Traceback" not in captured.err


@pytest.mark.parametrize("top_k", ["0", "11"])
def test_top_k_is_range_checked(trained_run, tmp_path, capsys, top_k):
    assert main(["predict", str(trained_run), str(tmp_path), "--top-k", top_k]) == 2
    assert "--top-k" in capsys.readouterr().err


def test_flip_tta_predictions_average_each_image_and_its_mirror():
    torch.manual_seed(0)
    network = create_model("affine-cnn").eval()
    model = TrainedModel(network, mean=0.3, std=0.3, flip_tta=True, info={})
    images = torch.randint(0, 256, (4, 28, 28), dtype=torch.uint8)
    mirrored = predict(model, images)
    batch = normalize(images, 0.3, 0.3)
    with torch.inference_mode():
        expected = torch.softmax((network(batch) + network(batch.flip(3))) / 2, dim=1)
    for prediction, row in zip(mirrored, expected, strict=True):
        assert prediction.probabilities == pytest.approx(row.tolist(), abs=1e-5)
