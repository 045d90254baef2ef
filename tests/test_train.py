"""The training loop on the real data: it learns, it reproduces, it records the run."""

from __future__ import annotations

import csv

import pytest
import torch

from fmnist.data.loader import TensorLoader, normalize
from fmnist.data.splits import read_split
from fmnist.experiment import train
from fmnist.models import create_model
from fmnist.training.config import TrainConfig
from fmnist.training.loop import NonFiniteLossError, Optimization, evaluate, train_one_epoch

NON_TIMING = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"]


def metric_rows(run_path):
    with open(run_path / "metrics.csv") as handle:
        return [{key: row[key] for key in NON_TIMING} for row in csv.DictReader(handle)]


def test_normalize_uses_the_given_statistics():
    images = torch.tensor([[[0, 255]]], dtype=torch.uint8).expand(1, 28, 2).contiguous()
    out = normalize(images, mean=0.5, std=0.5)
    assert out.shape == (1, 1, 28, 2)
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([-1.0, 1.0]))


def test_loader_covers_every_image_once_per_epoch(tiny_data):
    split = read_split(tiny_data, "train")
    loader = TensorLoader(split, batch_size=64, shuffle=True, seed=3)
    labels = torch.cat([batch_labels for _, batch_labels in loader])
    assert len(loader) == 10 and len(labels) == 600
    assert torch.equal(labels.sort().values, split.labels.sort().values)
    second = torch.cat([batch_labels for _, batch_labels in loader])
    assert not torch.equal(labels, second)  # a fresh permutation each epoch


def test_a_last_training_batch_of_one_image_is_left_out(tiny_data):
    """BatchNorm cannot train on a single image; evaluation still sees every image."""
    split = read_split(tiny_data, "train").subset(torch.arange(5))
    training = TensorLoader(split, batch_size=4, shuffle=True)
    assert len(training) == 1 and [len(labels) for _, labels in training] == [4]
    assert [len(labels) for _, labels in TensorLoader(split, batch_size=4)] == [4, 1]
    model = create_model("v1-5-5-bn")
    optimization = Optimization(torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01))
    train_one_epoch(model, training, optimization)


@pytest.mark.slow
def test_one_epoch_of_affine_cnn_learns_on_the_real_data(real_data, tmp_path):
    config = TrainConfig(epochs=1, data_dir=str(real_data), out=str(tmp_path), name="learns")
    result = train(config)
    rows = metric_rows(result.path)
    assert float(rows[0]["val_accuracy"]) > 0.80
    assert result.test_accuracy > 0.80


def test_same_seed_same_metrics_other_seed_other_metrics(tiny_data, tmp_path):
    """Reproducing is not about the data: generated data shows it in a fraction of the time."""

    def short_run(name: str, seed: int):
        config = TrainConfig(
            epochs=2, batch_size=50, limit_batches=4, val_size=100, seed=seed, data_dir=str(tiny_data),
            allow_unverified_data=True, out=str(tmp_path), name=name
        )
        return train(config)

    first, again, other = short_run("a", 7), short_run("b", 7), short_run("c", 8)
    assert metric_rows(first.path) == metric_rows(again.path)
    assert first.test_accuracy == again.test_accuracy
    assert metric_rows(first.path) != metric_rows(other.path)
    weights_first = torch.load(first.path / "last.pt", weights_only=True)["model"]
    weights_again = torch.load(again.path / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(weights_first[key], weights_again[key]) for key in weights_first)


def test_train_mode_and_eval_mode_are_used(tiny_data):
    """train_one_epoch must switch dropout on; evaluate must switch it off and keep no graph."""
    split = read_split(tiny_data, "train")
    model = create_model("affine-cnn")
    seen_modes = []
    model.register_forward_hook(
        lambda module, inputs, output: seen_modes.append((module.training, output.requires_grad))
    )
    loader = TensorLoader(split, batch_size=100, limit_batches=1)
    optimization = Optimization(torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01))
    train_one_epoch(model, loader, optimization)
    evaluate(model, TensorLoader(split, batch_size=300))
    assert seen_modes[0] == (True, True)
    assert seen_modes[1:] == [(False, False), (False, False)]


def test_non_finite_loss_stops_with_its_batch(tiny_data):
    split = read_split(tiny_data, "train")
    model = create_model("affine-cnn")
    with torch.no_grad():
        model[-1].weight.fill_(float("nan"))
    loader = TensorLoader(split, batch_size=100)
    optimization = Optimization(torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01))
    with pytest.raises(NonFiniteLossError, match="at batch 1"):
        train_one_epoch(model, loader, optimization)


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror(tiny_data):
    split = read_split(tiny_data, "test")
    torch.manual_seed(0)
    model = create_model("affine-cnn").eval()
    loader = TensorLoader(split, batch_size=64)
    images = normalize(split.images)
    with torch.no_grad():
        averaged = (model(images) + model(images.flip(3))) / 2
    plain, mirrored = evaluate(model, loader), evaluate(model, loader, flip_tta=True)
    assert torch.equal(plain.predictions, model(images).argmax(dim=1))
    assert torch.equal(mirrored.predictions, averaged.argmax(dim=1))
    assert not torch.equal(plain.predictions, mirrored.predictions)  # the mirror views really count
    expected_loss = torch.nn.functional.cross_entropy(averaged, split.labels).item()
    assert mirrored.loss == pytest.approx(expected_loss, rel=1e-4)
