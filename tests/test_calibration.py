"""Calibration (issue 28): the measures against an independent computation, the temperature fitted on the
validation split only, runs from before temperatures unchanged, and the run folder's temperature refused
in one line when it is missing or not a positive number."""

from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
import torch

from conftest import idx_bytes, snapshot, write_dataset
from fmnist.cli import main
from fmnist.data.fashion import FILES
from fmnist.data.idx import LABELS_MAGIC
from fmnist.data.images import image_batch
from fmnist.data.loader import TensorLoader
from fmnist.data.splits import load_splits
from fmnist.experiment import train
from fmnist.inference import evaluate_checkpoint, load_model, predict
from fmnist.training.calibration import (
    brier_score,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    logits_of,
    negative_log_likelihood,
    nll_temperature,
    scaled_probabilities,
)
from fmnist.training.config import TrainConfig

# ---------------------------------------------------------------- the measures


def oracle(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """ECE, Brier and NLL written from their definitions (Guo et al. 2017; Brier 1950), with loops."""
    count = len(labels)
    ece = 0.0
    for index in range(bins):
        lower, upper = index / bins, (index + 1) / bins
        members = [row for row in range(count)
                   if (lower < probabilities[row].max() <= upper) or (index == 0 and probabilities[row].max() == 0)]
        if members:
            accuracy = sum(probabilities[row].argmax() == labels[row] for row in members) / len(members)
            confidence = sum(float(probabilities[row].max()) for row in members) / len(members)
            ece += len(members) / count * abs(accuracy - confidence)
    brier = sum(sum((float(probabilities[row, k]) - (k == labels[row])) ** 2 for k in range(10))
                for row in range(count)) / count
    nll = sum(-math.log(max(float(probabilities[row, labels[row]]), 1.1754943508222875e-38))
              for row in range(count)) / count
    return {"ece": ece, "brier": brier, "nll": nll}


def sample(count: int, sharpness: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = np.random.default_rng(seed)
    probabilities = generator.dirichlet(np.full(10, sharpness), size=count).astype(np.float32)
    labels = generator.integers(0, 10, size=count)
    return torch.from_numpy(probabilities), torch.from_numpy(labels)


@pytest.mark.parametrize("sharpness", [0.05, 0.5, 5.0])  # overconfident, middling, flat probabilities
def test_the_measures_equal_an_independent_computation(sharpness):
    probabilities, labels = sample(500, sharpness, seed=int(sharpness * 100))
    # Confidences on the bins' edges and exactly 1.0 (float32 softmax gives 1.0 to confident images).
    probabilities[0] = torch.eye(10)[3]
    probabilities[1] = torch.tensor([2 / 15] + [13 / 135] * 9, dtype=torch.float64).float()
    expected = oracle(probabilities.numpy(), labels.numpy())
    measured = calibration_metrics(probabilities, labels)
    for key in ("ece", "brier", "nll"):
        assert measured[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-9), key
    assert sum(row["count"] for row in measured["bins"]) == 500


def test_the_ece_agrees_with_torchmetrics_where_no_confidence_is_exactly_1():
    """torchmetrics puts a confidence of exactly 1.0 in a bin of its own (a 16th); elsewhere the same."""
    # Imported here: torchmetrics loads torchvision's models (seconds), which every pytest worker would
    # otherwise pay while it collects this file.
    from torchmetrics.functional.classification import multiclass_calibration_error

    probabilities, labels = sample(2000, 0.3, seed=7)
    assert probabilities.max() < 1.0
    theirs = multiclass_calibration_error(probabilities, labels, num_classes=10, n_bins=15, norm="l1").item()
    assert expected_calibration_error(probabilities, labels) == pytest.approx(theirs, abs=1e-6)


def test_perfectly_calibrated_probabilities_have_an_ece_near_0_and_overconfident_ones_do_not():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(20000, 10, generator=generator) * 3
    probabilities = torch.softmax(logits, dim=1)
    labels = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)  # drawn from the probabilities
    assert expected_calibration_error(probabilities, labels) < 0.01
    sharpened = torch.softmax(logits * 3, dim=1)
    assert expected_calibration_error(sharpened, labels) > 0.1
    assert brier_score(sharpened, labels) > brier_score(probabilities, labels)
    assert negative_log_likelihood(sharpened, labels) > negative_log_likelihood(probabilities, labels)


def test_the_fitted_temperature_undoes_a_known_sharpening():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(20000, 10, generator=generator) * 2
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
    assert fit_temperature(logits * 2.5, labels) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(logits / 2, labels) == pytest.approx(0.5, rel=0.05)


def test_the_ece_step_beats_the_nll_fit_on_its_images_and_never_raises_the_nll_above_the_raw():
    """Probabilities mixed with the uniform, as label smoothing teaches (0.9 of the model's, 0.1 spread
    over the classes): no single T undoes that, and the NLL's T and the ECE's differ."""
    generator = torch.Generator().manual_seed(2)
    logits = torch.randn(20000, 10, generator=generator, dtype=torch.float64) * 2
    labels = torch.multinomial(torch.softmax(logits, dim=1), 1, generator=generator).squeeze(1)
    bent = torch.log(0.9 * torch.softmax(logits, dim=1) + 0.1 / 10)
    fitted, by_nll = fit_temperature(bent, labels), nll_temperature(bent, labels)
    assert fitted != by_nll

    def ece(temperature):
        return expected_calibration_error(torch.softmax(bent / temperature, dim=1), labels)

    def nll(temperature):
        return negative_log_likelihood(torch.softmax(bent / temperature, dim=1), labels)

    assert ece(fitted) < ece(by_nll) and nll(fitted) < nll(1.0)
    assert 1 / 1.25 <= fitted / by_nll <= 1.25
    calibrated = fit_temperature(logits, labels)  # already calibrated: T stays near 1
    assert calibrated == pytest.approx(1.0, rel=0.05) and nll(1.0) > 0


def test_scaling_probabilities_equals_scaling_logits():
    logits = torch.randn(50, 10, dtype=torch.float64) * 4
    scaled = scaled_probabilities(torch.softmax(logits, dim=1).float(), 1.7)
    assert torch.allclose(scaled.double(), torch.softmax(logits / 1.7, dim=1), atol=1e-6)
    assert torch.equal(scaled.argmax(1), logits.argmax(1))


# ---------------------------------------------------------------- a run's temperature


def scramble_test_labels(data_dir) -> None:
    """Test labels that have nothing to do with the images: a temperature fitted on them would be huge."""
    labels = np.random.default_rng(3).integers(0, 10, size=200).astype(np.uint8)
    (data_dir / (FILES["test_labels"] + ".gz")).write_bytes(gzip.compress(idx_bytes(labels, LABELS_MAGIC)))


def tiny_config(data_dir, out, name: str, **options) -> TrainConfig:
    options = {"epochs": 2, "batch_size": 50, "val_size": 100, "device": "cpu", "model": "fast-cnn-16", **options}
    return TrainConfig(data_dir=str(data_dir), allow_unverified_data=True, out=str(out), name=name, **options)


@pytest.fixture(scope="module")
def scrambled_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibration")
    data = write_dataset(root / "data")
    scramble_test_labels(data)
    return train(tiny_config(data, root / "runs", "scrambled")).path, data


def test_the_temperature_is_fitted_on_the_validation_split_and_never_the_test_split(scrambled_run):
    run, data = scrambled_run
    record = json.loads((run / "calibration.json").read_text())
    model = load_model(run / "best.pt", calibrate=False)
    config = TrainConfig.from_saved(json.loads((run / "config.json").read_text())["config"])
    splits = load_splits(data, config.val_size, config.split_seed, verify=False)
    on_validation = fit_temperature(*logits_of(model, TensorLoader(splits.val, 100, mean=model.mean, std=model.std)))
    on_test = fit_temperature(*logits_of(model, TensorLoader(splits.test, 100, mean=model.mean, std=model.std)))
    assert record["fitted_on"] == "validation" and record["images"] == 100
    assert record["temperature"] == pytest.approx(on_validation, rel=1e-6)
    assert abs(math.log(on_test / on_validation)) > 0.5  # the scrambled test split asks for a very different one
    summary = json.loads((run / "summary.json").read_text())
    assert summary["calibration"]["temperature"] == record["temperature"]
    assert summary["test_ece_calibrated"] == summary["calibration"]["after"]["ece"]


def test_predict_evaluate_and_the_report_give_the_temperatures_probabilities(scrambled_run):
    run, data = scrambled_run
    temperature = json.loads((run / "calibration.json").read_text())["temperature"]
    images = load_splits(data, 100, verify=False).test.images[:20]
    raw_model = load_model(run, calibrate=False)
    with torch.inference_mode():
        logits = raw_model(image_batch(list(images), raw_model.mean, raw_model.std)).double()
    calibrated = [prediction.probabilities for prediction in predict(load_model(run), images)]
    raw = [prediction.probabilities for prediction in predict(raw_model, images)]
    assert temperature != pytest.approx(1.0, abs=0.01)
    assert torch.allclose(torch.tensor(calibrated).double(), torch.softmax(logits / temperature, dim=1), atol=1e-5)
    assert torch.allclose(torch.tensor(raw).double(), torch.softmax(logits, dim=1), atol=1e-5)
    evaluation = evaluate_checkpoint(run, str(data), "cpu", allow_unverified_data=True)
    assert evaluation.calibration["temperature"] == temperature
    assert evaluation.calibration["after"]["ece"] == pytest.approx(
        expected_calibration_error(evaluation.result.probabilities, evaluation.result.labels))
    report = (run / "report.md").read_text()
    assert "## Calibration (test)" in report and "reliability.png" in report and f"T = {temperature:.3f}" in report


def test_a_run_from_before_temperatures_loads_and_predicts_as_it_did(tmp_path, scrambled_run):
    """An older run: no calibration.json and no `calibrate` in its config.json."""
    run, data = scrambled_run
    old = tmp_path / "old"
    old.mkdir()
    for path in run.iterdir():
        if path.is_file() and path.name != "calibration.json":
            (old / path.name).write_bytes(path.read_bytes())
    saved = json.loads((old / "config.json").read_text())
    del saved["config"]["calibrate"]
    (old / "config.json").write_text(json.dumps(saved))
    images = load_splits(data, 100, verify=False).test.images[:10]
    model = load_model(old)
    assert model.temperature is None
    assert [p.probabilities for p in predict(model, images)] == \
        [p.probabilities for p in predict(load_model(run, calibrate=False), images)]
    assert evaluate_checkpoint(old, str(data), "cpu", allow_unverified_data=True).calibration["after"] is None


def test_a_run_trained_with_no_calibrate_has_no_temperature_and_needs_none(tmp_path):
    data = write_dataset(tmp_path / "data")
    run = train(tiny_config(data, tmp_path / "runs", "raw", calibrate=False, epochs=1)).path
    assert not (run / "calibration.json").exists()
    assert load_model(run).temperature is None
    summary = json.loads((run / "summary.json").read_text())
    assert summary["calibration"]["after"] is None and summary["test_ece_calibrated"] is None


@pytest.mark.parametrize("temperature", [0, -1.5, "NaN", "Infinity", '"hot"', "null", "true", "missing file"])
@pytest.mark.parametrize("command", ["predict", "evaluate", "export", "serve"])
def test_a_bad_temperature_is_one_line_and_exit_2_and_nothing_changes(scrambled_run, tmp_path, temperature,
                                                                      command, capsys):
    run, data = scrambled_run
    copy = tmp_path / "run"
    copy.mkdir()
    for path in run.iterdir():
        if path.is_file():
            (copy / path.name).write_bytes(path.read_bytes())
    file = copy / "calibration.json"
    if temperature == "missing file":
        file.unlink()
    else:
        file.write_text(json.dumps(json.loads(file.read_text())).replace(
            f'"temperature": {json.loads(file.read_text())["temperature"]}', f'"temperature": {temperature}'))
    image = tmp_path / "item.png"
    from PIL import Image

    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    before = snapshot(copy)
    arguments = {"predict": ["predict", str(copy), str(image)],
                 "evaluate": ["evaluate", str(copy), "--data-dir", str(data), "--allow-unverified-data"],
                 "export": ["export", str(copy), "--out", str(tmp_path / "model.onnx")],
                 "serve": ["serve", str(copy), "--port", "0"]}[command]
    capsys.readouterr()
    assert main(arguments) == 2
    printed = capsys.readouterr()
    assert printed.out == "" and printed.err.count("\n") == 1 and printed.err.startswith("fmnist: error: ")
    assert "calibration.json" in printed.err and "--no-calibrate" in printed.err
    if command == "predict":  # and the way out the line names works
        assert main([*arguments, "--no-calibrate"]) == 0
    assert snapshot(copy) == before
    assert not (tmp_path / "model.onnx").exists()


def test_compare_shows_ece_brier_and_nll_before_and_after_the_temperature(scrambled_run, tmp_path, capsys):
    import csv

    run, _ = scrambled_run
    assert main(["compare", str(run), "--out", str(tmp_path / "comparison")]) == 0
    assert "| ECE | ECE (T) | Brier | Brier (T) | NLL | NLL (T) |" in capsys.readouterr().out
    [row] = csv.DictReader((tmp_path / "comparison" / "comparison.csv").open())
    summary = json.loads((run / "summary.json").read_text())
    for key in ("ece", "brier", "nll"):  # the CSV: snake_case columns, plain numbers
        assert float(row[f"test_{key}"]) == pytest.approx(summary["calibration"]["before"][key])
        assert float(row[f"test_{key}_calibrated"]) == pytest.approx(summary["calibration"]["after"][key])


def test_evaluate_prints_and_answers_the_calibration(scrambled_run, capsys):
    run, data = scrambled_run
    arguments = ["evaluate", str(run), "--data-dir", str(data), "--allow-unverified-data", "--device", "cpu"]
    assert main([*arguments, "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert answer["calibration"]["temperature"] == summary["calibration"]["temperature"]
    assert answer["calibration"]["after"]["ece"] == pytest.approx(summary["test_ece_calibrated"])
    assert answer["test_loss"] == pytest.approx(summary["test_loss"])  # the raw logits' cross-entropy, as trained
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert f"ECE {summary['test_ece']:.4f}" in printed and f"ECE {summary['test_ece_calibrated']:.4f}" in printed
    assert main([*arguments, "--json", "--no-calibrate"]) == 0
    raw = json.loads(capsys.readouterr().out)["calibration"]
    assert raw["temperature"] is None and raw["after"] is None
    assert raw["before"]["ece"] == pytest.approx(summary["test_ece"])
