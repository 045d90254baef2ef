"""The public API as a notebook user meets it: `from fmnist import ...`, nothing printed unless asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

import fmnist
from fmnist import TrainConfig, evaluate, load_model, load_splits, normalize, predict, train

README = Path(__file__).parents[1] / "README.md"


def test_train_load_evaluate_and_predict_from_python_with_nothing_printed(tiny_data, tmp_path, capfd):
    config = TrainConfig(epochs=1, batch_size=50, val_size=100, limit_batches=4, data_dir=str(tiny_data),
                         allow_unverified_data=True, out=str(tmp_path / "runs"), name="api")
    result = train(config)
    assert (result.path, result.best_epoch) == (tmp_path / "runs" / "api", 1)
    assert 0 <= result.test_accuracy <= 1

    model = load_model(result.path)
    assert model.info["model"] == "affine-cnn" and not model.training
    test = load_splits(tiny_data, val_size=100, verify=False).test
    batches = [(normalize(test.images[i:i + 64]), test.labels[i:i + 64]) for i in range(0, len(test), 64)]
    evaluated = evaluate(model, batches)  # a plain list of batches, not a TensorLoader
    assert evaluated.accuracy == pytest.approx(result.test_accuracy)
    assert len(evaluated.labels) == len(test)

    Image.fromarray(test.images[0].numpy()).resize((100, 100)).save(tmp_path / "item.png")
    [prediction] = predict(model, tmp_path / "item.png")
    assert prediction.source.endswith("item.png") and sum(prediction.probabilities) == pytest.approx(1, abs=1e-5)
    assert prediction.class_name in fmnist.CLASS_NAMES

    out, err = capfd.readouterr()
    assert out == "" and err == ""  # the library printed nothing: the caller decides


def test_progress_and_epoch_lines_only_when_asked(tiny_data, tmp_path, capfd, caplog):
    config = TrainConfig(epochs=2, batch_size=50, val_size=100, limit_batches=2, data_dir=str(tiny_data),
                         allow_unverified_data=True, out=str(tmp_path), name="asked")
    with caplog.at_level("INFO", logger="fmnist"):
        train(config, progress=True)
    assert "epoch 2/2" in caplog.text  # the epoch lines went to the logger, which shows them
    assert capfd.readouterr().err == ""  # so progress=True adds no second copy, and no bar off a terminal


def test_an_invalid_config_cannot_be_trained(tmp_path):
    with pytest.raises(fmnist.ConfigError, match=r"^TrainConfig\(lr=-1.0\): must be greater than 0$"):
        train(TrainConfig(lr=-1.0))
    with pytest.raises(TypeError, match=r"^train\(config=.*\): should be a TrainConfig"):
        train({"epochs": 1})


def test_fit_evaluate_and_train_one_epoch_take_any_batches(tiny_data):
    data = load_splits(tiny_data, val_size=100, verify=False)
    model = fmnist.create_model("mlp")
    optimization = fmnist.Optimization(torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1))
    batches = [(normalize(data.train.images[i:i + 50]), data.train.labels[i:i + 50]) for i in range(0, 200, 50)]
    history = fmnist.fit(model, batches, batches, optimization, epochs=2)
    assert [row["epoch"] for row in history] == [1, 2]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(normalize(data.val.images), data.val.labels), batch_size=32)
    assert len(fmnist.evaluate(model, loader).labels) == 100


def test_the_readme_python_quick_start_runs(readme_quick_start):
    """The README's snippet, exactly as written, on the real data (run once for the suite: conftest.py)."""
    printed, run = readme_quick_start
    accuracy = float(printed[0].split()[0])
    assert accuracy >= 0.895  # the quick recipe's two epochs reach 0.90
    assert f"run folder {Path('runs') / run.name}" in printed[0]
    assert printed[1].startswith("validation accuracy per epoch: [") and printed[1].count(",") == 1  # 2 epochs
    assert printed[2].endswith("(3, 10)")
    assert len(printed) == 6 and all(line.split()[0] in " ".join(fmnist.CLASS_NAMES) for line in printed[3:])
