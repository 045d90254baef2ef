"""The practitioner's path, notebook-style, on the real data: train a tiny run, plot its history, read a
folder of runs with a sweep inside as one table, and predict the test split as arrays whose accuracy is
the one evaluate gives."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fmnist  # noqa: E402
from fmnist.cli import main  # noqa: E402

TINY = {"epochs": 1, "limit_batches": 30, "device": "cpu"}  # a few seconds of the quick recipe


@pytest.mark.slow
def test_train_plot_tabulate_and_predict_as_a_practitioner_would(real_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    # 1. Train: the run comes back as data.
    run = fmnist.train(fmnist.TrainConfig.from_recipe("quick", name="first", **TINY))
    assert run.path.resolve() == tmp_path / "runs" / "first" and run.status == "finished"

    # 2. Its history, plotted.
    figure, axis = plt.subplots()
    axis.plot(run.history["epoch"], run.history["val_accuracy"], marker="o", label="validation")
    axis.plot(run.history["epoch"], run.history["train_accuracy"], marker="o", label="train")
    figure.savefig(tmp_path / "curves.png")
    plt.close(figure)
    assert (tmp_path / "curves.png").stat().st_size > 0

    # 3. A sweep inside runs/, then every run as one table with the setting the sweep varied.
    assert main(["sweep", "--recipe", "quick", "--epochs", "1", "--limit-batches", "15", "--device", "cpu",
                 "--set", "max-lr=0.05,0.2", "--name", "peak", "--no-report"]) == 0
    table = fmnist.load_runs("runs")
    assert sorted(table["run"]) == ["first", "peak/max_lr=0.05,seed=42", "peak/max_lr=0.2,seed=42"]
    assert table["test_accuracy"].dtype == np.float64 and table["max_lr"].notna().all()
    best = table.sort_values("test_accuracy", ascending=False).iloc[0]
    assert best["test_accuracy"] == table["test_accuracy"].max()

    # 4. Predict the test split as arrays: the accuracy evaluate gives, image for image.
    test = fmnist.load_splits().test
    predictions = run.predict(test.images)
    evaluation = run.evaluate()
    assert predictions.probabilities.shape == (10_000, 10) and predictions.labels.shape == (10_000,)
    assert (predictions.labels == test.labels.numpy()).mean() == evaluation.accuracy
    assert evaluation.accuracy == pytest.approx(run.test_accuracy, abs=1e-4)
    np.testing.assert_allclose(predictions.probabilities, evaluation.probabilities, atol=1e-5)
