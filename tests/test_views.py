"""Test-time views (training/views.py): one-pixel shifts, and the averages that predict_logits takes over them."""

import json

import pytest
import torch
from torch import nn

from fmnist import evaluate_checkpoint, load_model
from fmnist.data.loader import TensorLoader
from fmnist.data.splits import load_splits
from fmnist.experiment import train
from fmnist.runs.checkpoint import load_checkpoint, model_from_checkpoint
from fmnist.training.calibration import fit_temperature, logits_of
from fmnist.training.config import TrainConfig
from fmnist.training.loop import evaluate, predict_logits
from fmnist.training.views import ONE_PIXEL_SHIFTS, shifted, view_logits


def grid(height: int = 4, width: int = 5) -> torch.Tensor:
    return torch.arange(1.0, height * width + 1).reshape(1, 1, height, width)


@pytest.mark.parametrize(("rows", "columns"), [(0, 0), *ONE_PIXEL_SHIFTS])
def test_a_shift_moves_every_pixel_by_one_and_repeats_the_uncovered_edge(rows, columns):
    images = grid()
    moved = shifted(images, rows, columns)
    assert moved.shape == images.shape
    height, width = images.shape[-2:]
    for row in range(height):
        for column in range(width):
            # the pixel that lands here came from (row - rows, column - columns), clamped onto the image
            source_row = min(max(row - rows, 0), height - 1)
            source_column = min(max(column - columns, 0), width - 1)
            assert moved[0, 0, row, column] == images[0, 0, source_row, source_column]


def test_down_and_right_are_positive():
    moved = shifted(grid(), 1, 1)
    assert moved[0, 0, 1, 1] == grid()[0, 0, 0, 0] and moved[0, 0, 3, 4] == grid()[0, 0, 2, 3]


def test_the_eight_shifts_are_the_eight_neighbours():
    assert sorted(ONE_PIXEL_SHIFTS) == sorted((r, c) for r in (-1, 0, 1) for c in (-1, 0, 1) if (r, c) != (0, 0))


@pytest.mark.parametrize("move", [(2, 0), (0, -2)])
def test_moves_of_more_than_one_pixel_are_refused(move):
    with pytest.raises(ValueError, match="one pixel at most"):
        shifted(grid(), *move)


class Recorder(nn.Module):
    """A 'network' whose logits are a fixed linear function of the pixels, recording each view it is shown."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.weights = nn.Parameter(torch.randn(28 * 28, 10))
        self.shown: list[torch.Tensor] = []

    def forward(self, images):
        self.shown.append(images.detach().clone())
        return images.flatten(1) @ self.weights


@pytest.mark.parametrize(("flip", "shifts", "views"), [(False, False, 1), (True, False, 2), (False, True, 9),
                                                       (True, True, 18)])
def test_the_logits_are_the_mean_over_exactly_the_views_asked_for(flip, shifts, views):
    model = Recorder()
    images = torch.rand(3, 1, 28, 28)
    logits = view_logits(model, images, flip, shifts)
    assert len(model.shown) == views
    expected_views = [images] + ([shifted(images, *move) for move in ONE_PIXEL_SHIFTS] if shifts else [])
    if flip:
        expected_views += [view.flip(3) for view in expected_views]
    for shown, expected in zip(model.shown, expected_views, strict=True):
        assert torch.equal(shown, expected)
    expected_logits = torch.stack([view.flatten(1) @ model.weights for view in expected_views]).mean(dim=0)
    torch.testing.assert_close(logits, expected_logits)


def test_flip_alone_is_the_mean_of_the_image_and_its_mirror_to_the_bit():
    """Runs trained before --tta-shift keep their figures: the two-view average is computed as it was."""
    torch.manual_seed(0)
    network = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.LazyLinear(10))
    images = torch.rand(5, 1, 28, 28)
    with torch.inference_mode():
        network(images)
        assert torch.equal(predict_logits(network, images, True), (network(images) + network(images.flip(3))) / 2)
        assert torch.equal(predict_logits(network, images), network(images))


def test_a_shift_invariant_model_scores_the_same_with_or_without_shifts():
    """A model that only sums the pixels barely notices a one-pixel move of an image whose edge is empty."""
    class PixelSum(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.arange(10.0))

        def forward(self, images):
            return images.sum(dim=(1, 2, 3)).unsqueeze(1) * self.scale

    images = torch.zeros(2, 1, 28, 28)
    images[:, :, 5:20, 6:22] = torch.rand(2, 1, 15, 16)
    model = PixelSum()
    torch.testing.assert_close(predict_logits(model, images, True, True), predict_logits(model, images))


def test_evaluate_scores_with_the_shifted_views_and_checks_the_switch():
    model = Recorder()
    images, labels = torch.rand(6, 1, 28, 28), torch.arange(6)
    plain = evaluate(model, [(images, labels)])
    model.shown.clear()
    viewed = evaluate(model, [(images, labels)], flip_tta=True, shift_tta=True)
    assert len(model.shown) == 18
    expected = view_logits(model, images, True, True)
    assert torch.equal(viewed.predictions, expected.argmax(dim=1))
    assert viewed.loss != plain.loss
    with pytest.raises(TypeError, match="shift_tta"):
        evaluate(model, [(images, labels)], shift_tta="yes")


def test_a_tta_shift_run_tests_calibrates_and_answers_with_the_views_but_validates_without(tiny_data, tmp_path):
    """--tta-shift is the trained model's way of answering (test, temperature, load_model and what uses
    it), while each epoch's validation, which chooses best.pt, keeps the flip alone."""
    config = TrainConfig(epochs=2, batch_size=50, limit_batches=4, val_size=100, data_dir=str(tiny_data),
                         allow_unverified_data=True, out=str(tmp_path), name="shifted", report=False,
                         tta_flip=True, tta_shift=True, device="cpu")
    run = train(config)
    splits = load_splits(str(tiny_data), 100, config.split_seed, verify=False)
    state = load_checkpoint(run.path / "best.pt")
    network = model_from_checkpoint(state).eval()
    mean, std = config.mean, config.std
    val = TensorLoader(splits.val, 100, mean=mean, std=std)
    test = TensorLoader(splits.test, 100, mean=mean, std=std)

    best_row = next(row for row in run.history if row["epoch"] == state["epoch"])
    assert best_row["val_accuracy"] == pytest.approx(evaluate(network, val, flip_tta=True).accuracy)
    shifted_test = evaluate(network, test, flip_tta=True, shift_tta=True)
    assert run.summary["test_accuracy"] == pytest.approx(shifted_test.accuracy)
    temperature = json.loads((run.path / "calibration.json").read_text())["temperature"]
    assert temperature == pytest.approx(fit_temperature(*logits_of(network, val, True, True)))
    assert temperature != pytest.approx(fit_temperature(*logits_of(network, val, True, False)))

    model = load_model(run.path, calibrate=False)
    assert model.flip_tta and model.shift_tta
    images = next(iter(test))[0]
    with torch.inference_mode():
        torch.testing.assert_close(model(images), predict_logits(network, images, True, True))
    assert evaluate_checkpoint(run.path, data_dir=str(tiny_data), allow_unverified_data=True,
                               calibrate=False).accuracy == pytest.approx(shifted_test.accuracy)
