"""PatchWhitening, the first conv that `whiten-vgg` and `whiten-res` fit to the training images, and
those models in every command: train, resume, evaluate, predict, export and serve see the fitted filters."""

from __future__ import annotations

import io
import signal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastapi.testclient import TestClient
from PIL import Image

from conftest import fmnist_here, fmnist_process, tiny_train_args
from fmnist import (
    TrainConfig,
    attribution_maps,
    evaluate_checkpoint,
    load_model,
    load_splits,
    normalize,
    predict,
    resume,
    train,
)
from fmnist.cli import main
from fmnist.errors import ConfigError
from fmnist.models import create_model
from fmnist.models.whitening import EIGENVALUE_FLOOR, PatchWhitening, whitening_layers
from fmnist.runs.checkpoint import load_checkpoint
from fmnist.serve.app import create_app
from fmnist.training.build import WHITENING_IMAGES


def correlated_images(count: int, seed: int) -> torch.Tensor:
    """Noise blurred by a 3x3 box: neighbouring pixels correlated, as in photographs (and unlike white noise)."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(count, 1, 30, 30, generator=generator)
    return F.conv2d(noise, torch.full((1, 1, 3, 3), 1 / 3)) + 0.5


def test_the_fixed_filters_whiten_the_patches_they_were_fitted_to():
    images = correlated_images(64, seed=0)
    layer = PatchWhitening(32)
    layer.fit(images)
    outputs = layer(images).detach()
    whitened = outputs[:, :9].permute(1, 0, 2, 3).reshape(9, -1).double()
    covariance = torch.cov(whitened)
    variances = covariance.diagonal()
    # W C W^T = diag(eigenvalue / (eigenvalue + floor)): uncorrelated, and as strong as one another.
    assert (covariance - torch.diag(variances)).abs().max() < 1e-4
    assert variances.max() <= 1 + 1e-6 and variances.min() > 0.5
    torch.testing.assert_close(outputs[:, 9:18], -outputs[:, :9])  # each filter with both signs
    # The raw patches' variances span a wide range: whitening is what evened them out.
    raw_eigenvalues = torch.linalg.eigvalsh(torch.cov(F.unfold(images, 3, padding=1).transpose(1, 2)
                                                      .reshape(-1, 9).T.double()))
    assert raw_eigenvalues.max() / raw_eigenvalues.min() > 20
    assert EIGENVALUE_FLOOR < raw_eigenvalues.min()


def test_fitting_twice_to_the_same_images_gives_the_same_filters_and_other_images_others():
    first, second, other = PatchWhitening(18), PatchWhitening(18), PatchWhitening(18)
    first.fit(correlated_images(40, seed=1))
    second.fit(correlated_images(40, seed=1))
    other.fit(correlated_images(40, seed=2))
    torch.testing.assert_close(first.whitening, second.whitening)
    assert not torch.allclose(first.whitening.abs().sum(dim=(1, 2, 3)), other.whitening.abs().sum(dim=(1, 2, 3)))


def test_only_the_learned_filters_train_and_the_fixed_ones_are_saved():
    images = correlated_images(16, seed=3)
    layer = PatchWhitening(24)
    layer.fit(images)
    fixed, learned = layer.whitening.clone(), layer.learned.detach().clone()
    assert [name for name, _ in layer.named_parameters()] == ["learned"] and layer.learned.shape == (6, 1, 3, 3)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        layer(images).square().mean().backward()
        optimizer.step()
    assert torch.equal(layer.whitening, fixed)  # no gradient and no weight decay reach them
    assert not torch.equal(layer.learned, learned)
    assert set(layer.state_dict()) == {"whitening", "learned"}
    assert "18 whitening filters fixed, 6 learned" in repr(layer)


def test_unfitted_the_fixed_filters_pass_each_pixel_on():
    layer = PatchWhitening(18)
    images = torch.randn(2, 1, 5, 5)
    outputs = layer(images)
    torch.testing.assert_close(outputs[:, 4], images[:, 0])  # the centre pixel's filter
    torch.testing.assert_close(outputs[:, 13], -images[:, 0])


@pytest.mark.parametrize("arguments, named", [
    ((17,), "out_channels"), ((0,), "out_channels"), (("32",), "out_channels"), ((32.0,), "out_channels"),
    ((50, 2), "kernel_size"), ((50, 0), "kernel_size"), ((50, -3), "kernel_size"), ((50, True), "kernel_size"),
])
def test_a_layer_that_cannot_be_built_is_a_one_line_error(arguments, named):
    with pytest.raises(ConfigError, match=f"^PatchWhitening.*{named}"):
        PatchWhitening(*arguments)


@pytest.mark.parametrize("images", [
    torch.zeros(0, 1, 28, 28), torch.zeros(2, 3, 28, 28), torch.zeros(2, 28, 28), np.zeros((2, 1, 28, 28)), None,
])
def test_fitting_to_what_is_not_a_batch_of_one_channel_images_is_a_one_line_error(images):
    with pytest.raises(ConfigError, match=r"^PatchWhitening.fit\(images=.*\(N, 1, H, W\)"):
        PatchWhitening(18).fit(images)


def test_the_layer_fits_images_of_any_size_and_constant_ones():
    with pytest.raises(ConfigError, match="must be at least 50"):
        PatchWhitening(49, kernel_size=5)  # 2 * 25 fixed filters
    for layer in (PatchWhitening(18), PatchWhitening(60, kernel_size=5)):
        for images in (torch.zeros(3, 1, 9, 11), torch.randn(1, 1, 2, 2), correlated_images(2, seed=4)):
            layer.fit(images)
            outputs = layer(images)
            assert outputs.shape == (len(images), len(layer.whitening) + len(layer.learned), *images.shape[2:])
            assert torch.isfinite(outputs).all()


def whitened_run(data, out, model="whiten-vgg", **options):
    config = TrainConfig(model=model, batch_size=50, limit_batches=3, val_size=100,
                         data_dir=str(data), allow_unverified_data=True, out=str(out), report=False,
                         **{"epochs": 2, "name": "white", **options})
    return train(config)


def filters_fitted_to(images: torch.Tensor) -> torch.Tensor:
    layer = PatchWhitening(32)
    layer.fit(normalize(images))
    return layer.whitening


def test_a_run_fits_it_to_its_training_images_and_every_command_uses_what_it_saved(tiny_data, tmp_path):
    run = whitened_run(tiny_data, tmp_path)
    splits = load_splits(tiny_data, val_size=100, verify=False)
    saved = load_checkpoint(run.path)["model"]["0.whitening"]
    torch.testing.assert_close(saved, filters_fitted_to(splits.train.images[:WHITENING_IMAGES]))
    assert not torch.allclose(saved, filters_fitted_to(splits.val.images), atol=1e-3)

    model = load_model(run.path)
    assert torch.equal(whitening_layers(model.network)[0].whitening, saved)
    images = splits.test.images[:20]
    with torch.inference_mode():
        logits = model(normalize(images))
    predictions = predict(model, images)
    assert [row.label for row in predictions] == logits.argmax(dim=1).tolist()
    evaluation = evaluate_checkpoint(run.path, data_dir=str(tiny_data), allow_unverified_data=True)
    assert evaluation.accuracy == pytest.approx(run.test_accuracy)

    explained = attribution_maps(model, images[:2])  # the served page's and `predict --explain`'s maps
    assert explained.shape == (2, 28, 28) and np.isfinite(explained).all() and explained.max() > 0
    with TestClient(create_app(model)) as client:
        buffer = io.BytesIO()
        Image.fromarray(images[0].numpy()).save(buffer, format="PNG")
        (answer,) = client.post("/predict", files={"file": ("0.png", buffer.getvalue(), "image/png")}).json()
    assert list(answer["probabilities"].values()) == pytest.approx(predictions[0].probabilities, abs=1e-6)

    onnxruntime = pytest.importorskip("onnxruntime")
    assert main(["export", str(run.path), "--format", "onnx", "--no-calibrate"]) == 0
    session = onnxruntime.InferenceSession(str(run.path / "model.onnx"), providers=["CPUExecutionProvider"])
    (exported,) = session.run(["logits"], {"images": normalize(images).numpy()})
    assert np.abs(exported - logits.numpy()).max() < 1e-4


def test_a_run_killed_and_resumed_equals_one_that_was_not(tiny_data, tmp_path):
    args = [*tiny_train_args(tiny_data, tmp_path, "killed"), "--model", "whiten-vgg", "--no-report"]
    killed = fmnist_process(args, kill_at="write-metrics.csv:2")  # epoch 2 trained and saved, then SIGKILL
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    resume(tmp_path / "killed")
    reference = fmnist_here([*tiny_train_args(tiny_data, tmp_path, "reference"), "--model", "whiten-vgg",
                             "--no-report"])
    assert reference.returncode == 0, reference.stderr
    resumed, uninterrupted = (load_checkpoint(tmp_path / name / "last.pt") for name in ("killed", "reference"))
    assert resumed["epoch"] == uninterrupted["epoch"] == 3
    for key, tensor in uninterrupted["model"].items():
        assert torch.equal(resumed["model"][key], tensor), key


def test_whiten_res_is_fitted_where_it_sits_inside_its_first_block(tiny_data, tmp_path):
    run = whitened_run(tiny_data, tmp_path, model="whiten-res", epochs=1)
    splits = load_splits(tiny_data, val_size=100, verify=False)
    saved = load_checkpoint(run.path)["model"]["0.0.whitening"]  # res-cnn's first conv -> BatchNorm -> ReLU
    torch.testing.assert_close(saved, filters_fitted_to(splits.train.images[:WHITENING_IMAGES]))
    (layer,) = whitening_layers(load_model(run.path).network)
    assert torch.equal(layer.whitening, saved)


def layer_kinds(model: torch.nn.Module) -> list[str]:
    return [type(layer).__name__ for layer in model.modules()]


@pytest.mark.parametrize("plain_name, whitened_name", [("fast-vgg", "whiten-vgg"), ("res-cnn", "whiten-res")])
def test_a_whitened_model_is_its_plain_model_with_fewer_weights_to_learn(plain_name, whitened_name):
    plain, whitened = create_model(plain_name), create_model(whitened_name)
    count = sum(parameter.numel() for parameter in plain.parameters())
    assert sum(parameter.numel() for parameter in whitened.parameters()) == count - 18 * 9
    kinds = layer_kinds(whitened)
    assert kinds.count("PatchWhitening") == 1  # in place of the plain model's first conv, all else alike
    assert ["Conv2d" if kind == "PatchWhitening" else kind for kind in kinds] == layer_kinds(plain)
