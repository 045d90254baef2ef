"""What a finished run shows: figures, per-class metrics and a written report.md in its folder.

`write_report` is called at the end of `fmnist train` and by `fmnist report RUN_DIR`. It reads the
run's own files (config.json, metrics.csv, lr_steps.csv, summary.json) and one test evaluation of
the best weights; every observation in report.md is computed from those numbers, none is typed in.
"""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

import torch
from torch import nn

from fmnist.data.fashion import CLASS_NAMES
from fmnist.data.loader import normalize
from fmnist.errors import CheckpointError
from fmnist.explain import attribution_maps, captum_available
from fmnist.files import atomic_write_text, check_writable, exclusive_lock
from fmnist.inference import TrainedModel, evaluate_checkpoint, evaluation_arguments, run_folder_argument
from fmnist.models import count_parameters
from fmnist.models.registry import how_to_make_known, is_builtin
from fmnist.reports import plots
from fmnist.runs.folder import read_history, read_learning_rates, read_saved_config, read_summary, write_summary
from fmnist.training.calibration import calibration_record
from fmnist.training.config import EVAL_BATCH_SIZE
from fmnist.training.loop import EvalResult
from fmnist.training.metrics import classification_metrics, confusion_matrix, most_confused_pairs, weakest_classes

MISCLASSIFIED_SHOWN = 32  # a 4 x 8 grid: enough to see a pattern, small enough to read
PAIRS_SHOWN = 3
WEAKEST_SHOWN = 3
OVERFIT_GAP = 0.02  # train accuracy this far above validation is called a sign of overfitting


# ---------------------------------------------------------------- figures and the report

def probabilities_of(model: nn.Module, image: torch.Tensor, mean: float, std: float) -> list[float]:
    """Softmax over the classes for one uint8 (28, 28) image, normalized as in training."""
    parameter = next(model.parameters())
    batch = normalize(image.unsqueeze(0), mean, std).to(parameter.device)
    model.eval()
    with torch.inference_mode():
        return torch.softmax(model(batch.contiguous(memory_format=torch.channels_last)), dim=1)[0].tolist()


def mistake_maps(model: TrainedModel, images: torch.Tensor, predicted: torch.Tensor):
    """Attribution maps of the mistakes (explain.py), or None without captum (the grid is drawn without)."""
    if not captum_available() or len(images) == 0:
        return None
    return attribution_maps(model, images, predicted.tolist())


def write_figures(run_path: Path, history: list[dict], learning_rates: list[float], matrix: torch.Tensor,
                  metrics: dict, test_images: torch.Tensor, test: EvalResult, model: TrainedModel,
                  calibration: dict | None) -> dict[str, str]:
    """Every PNG of the run; returns {caption: file name} in the order report.md shows them."""
    names = list(CLASS_NAMES)
    steps_per_epoch = len(learning_rates) // len(history) if history else None
    wrong = (test.predictions != test.labels).nonzero().flatten()
    shown = wrong[:MISCLASSIFIED_SHOWN]
    probabilities = test.probabilities
    titles = [f"true {names[test.labels[i]]}\npred {names[test.predictions[i]]}"
              + (f" {probabilities[i, test.predictions[i]]:.2f}" if probabilities is not None else "")
              for i in shown.tolist()]
    shown_images = test_images[shown.to(test_images.device)].cpu()
    maps = mistake_maps(model, shown_images, test.predictions[shown])
    grid_caption = (f"Misclassified test images (first {len(shown)} of {len(wrong)}), with the predicted class's "
                    "probability" + (" and its attribution map (bright: the pixels that moved that probability "
                                     "most)" if maps is not None else
                                     "; attribution maps need captum: pip install -e '.[explain]'"))
    # The probability bars show the first mistake (more telling than a confident hit), else image 0.
    example = wrong[0].item() if len(wrong) else 0
    example_title = (f"test image {example}\ntrue {names[test.labels[example]]}, "
                     f"predicted {names[test.predictions[example]]}")
    recalls = [metrics["per_class"][name]["recall"] for name in names]
    figures = {
        "Loss per epoch": plots.epoch_curves(history, "loss", "cross-entropy loss", run_path / "loss.png"),
        "Accuracy per epoch": plots.epoch_curves(history, "accuracy", "accuracy", run_path / "accuracy.png"),
        "Learning rate per step": plots.learning_rate_steps(learning_rates, steps_per_epoch,
                                                            run_path / "learning_rate.png"),
        "Confusion matrix (test)": plots.confusion_matrix(matrix, names, run_path / "confusion_matrix.png"),
        "Per-class accuracy (test recall)": plots.per_class_bars(recalls, names, "accuracy on the class's test images",
                                                                 run_path / "per_class_accuracy.png"),
        grid_caption: plots.image_grid(shown_images, titles, run_path / "misclassified.png", maps=maps),
        "Class probabilities for one test image": plots.probability_bars(
            test_images[example].cpu(),
            probabilities[example].tolist() if probabilities is not None
            else probabilities_of(model.network, test_images[example], model.mean, model.std),
            names, example_title, run_path / "probabilities.png"),
    }
    if calibration is not None:
        figures = {"Reliability diagram (test): accuracy against confidence": plots.reliability_diagram(
            calibration, run_path / "reliability.png"), **figures}
    return {caption: path.name for caption, path in figures.items()}


def has_dropout(model: nn.Module) -> bool:
    return any(isinstance(module, nn.modules.dropout._DropoutNd) for module in model.modules())


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def smoothing_floor(smoothing: float, classes: int = len(CLASS_NAMES)) -> float:
    """The lowest cross-entropy against label-smoothed targets (their entropy): what a perfect fit scores.
    The true class gets 1 - smoothing + smoothing/classes of the target, every other smoothing/classes."""
    true_share, other_share = 1 - smoothing + smoothing / classes, smoothing / classes
    return -true_share * math.log(true_share) - (classes - 1) * other_share * math.log(other_share)


def why_train_differs(config: dict, dropout: bool) -> list[str]:
    """What makes this run's train figures differ from validation's beyond fit: only what it used."""
    reasons = []
    if config.get("loss") == "focal":
        reasons.append("the training loss is focal loss, validation's plain cross-entropy")
    smoothing = config.get("label_smoothing") or 0.0
    if smoothing > 0:
        reasons.append(f"the training loss includes label smoothing {smoothing:g}, which keeps it at "
                       f"{smoothing_floor(smoothing):.3f} or more even for a perfect fit (validation's is plain "
                       "cross-entropy), so a training loss above validation's is expected")
    mixed = [name for name in ("mixup", "cutmix") if (config.get(name) or 0) > 0]
    if mixed:
        reasons.append(f"{' and '.join(mixed)} train on blended images with blended labels (accuracy counts the "
                       "larger share), which raises the training loss and lowers the training accuracy")
    augmented = [name for name, used in (("rotation", config.get("rotate_degrees")), ("flips", config.get("hflip")),
                                         ("crops", config.get("crop_padding")), ("erasing", config.get("erase_prob")))
                 if used]
    if augmented:
        reasons.append(f"augmentation ({', '.join(augmented)}) makes the training images harder than validation's")
    if dropout:
        reasons.append("dropout is on while training and off for validation")
    reasons.append("train figures are running averages over the epoch, taken while the weights still improved")
    return reasons


def observations(history: list[dict], matrix: torch.Tensor, metrics: dict, config: dict | None = None,
                 dropout: bool = False) -> list[str]:
    """Sentences computed from the run's numbers (and, for the train/validation gap, its settings)."""
    best = max(history, key=lambda row: row["val_accuracy"])  # first of equals, as fit() keeps it
    last = history[-1]
    gap = best["train_accuracy"] - best["val_accuracy"]
    verdict = (f"train accuracy is {gap:.1%} above validation: a sign of overfitting" if gap > OVERFIT_GAP
               else "no sign of overfitting")
    lines = [
        f"Best epoch: {best['epoch']} of {len(history)} (validation accuracy {best['val_accuracy']:.4f}); "
        f"its weights are the ones tested.",
        f"Train/validation gap at the best epoch: accuracy {gap:+.4f}, "
        f"loss {best['train_loss'] - best['val_loss']:+.4f} "
        f"(train minus validation): {verdict}. The train figures are not measured like validation's: "
        + "; ".join(why_train_differs(config or {}, dropout)) + ".",
    ]
    if last["val_accuracy"] < best["val_accuracy"]:
        lines.append(f"Validation accuracy fell from {best['val_accuracy']:.4f} (epoch {best['epoch']}) to "
                     f"{last['val_accuracy']:.4f} by the last epoch: more epochs did not help this run.")
    pairs = most_confused_pairs(matrix, PAIRS_SHOWN)
    if pairs:
        described = "; ".join(
            f"{pair['true']} → {pair['predicted']}: {pair['count']} images "
            f"({pair['share_of_true_class']:.1%} of {pair['true']})" for pair in pairs
        )
        lines.append(f"Most-confused pairs (true → predicted, from the test confusion matrix): {described}.")
    else:
        lines.append("No test image was misclassified.")
    weakest = "; ".join(f"{name} (recall {values['recall']:.3f}, F1 {values['f1']:.3f})"
                        for name, values in weakest_classes(metrics, WEAKEST_SHOWN))
    lines.append(f"Weakest classes: {weakest}.")
    return lines


def three(values: dict) -> str:
    return " / ".join(f"{values[key]:.4f}" for key in ("precision", "recall", "f1"))


def test_table(summary: dict, metrics: dict) -> str:
    wall = f"{summary['wall_seconds']:.1f} s" if "wall_seconds" in summary else "?"
    speed = f"{summary['images_per_second']:,.0f}" if "images_per_second" in summary else "?"
    return markdown_table(["metric", "value"], [
        ["test accuracy", f"{summary['test_accuracy']:.4f}"],
        ["test loss (cross-entropy)", f"{summary['test_loss']:.4f}"],
        ["macro precision / recall / F1", three(metrics["macro"])],
        ["weighted precision / recall / F1", three(metrics["weighted"])],
        ["best epoch", summary.get("best_epoch", "?")],
        ["wall time (every part of a resumed run)", wall],
        ["training images/s (mean over epochs)", speed],
    ])


def epoch_table(history: list[dict]) -> str:
    header = ["epoch", "train loss", "train acc", "val loss", "val acc", "lr (last step)", "seconds", "images/s"]
    return markdown_table(header, [
        [row["epoch"], f"{row['train_loss']:.4f}", f"{row['train_accuracy']:.4f}", f"{row['val_loss']:.4f}",
         f"{row['val_accuracy']:.4f}", f"{row['lr']:.2e}", f"{row['seconds']:.1f}", f"{row['images_per_second']:,.0f}"]
        for row in history
    ])


def class_table(metrics: dict) -> str:
    return markdown_table(["class", "precision", "recall (accuracy)", "F1", "images"], [
        [name, f"{values['precision']:.4f}", f"{values['recall']:.4f}", f"{values['f1']:.4f}", values["support"]]
        for name, values in metrics["per_class"].items()
    ])


def rerun_section(saved: dict) -> list[str]:
    """How to train this run again: the CLI command recorded with it, else the Python call."""
    lines = ["## Re-run it"]
    if saved.get("rerun"):
        lines += ["```bash\n" + saved["rerun"] + "\n```",
                  "Explicit flags for every value that differs from the defaults and the recipe; without `--name` "
                  "so that the re-run gets a folder of its own."]
    given = {name: value for name, value in saved.get("options_given", {}).items() if name != "name"}
    arguments = ", ".join(f"{name}={value!r}" for name, value in given.items())
    needs = model_needs(saved)
    python = f"{needs}from fmnist import TrainConfig, train\n\ntrain(TrainConfig({arguments}))"
    lines += ["From Python:", f"```python\n{python}\n```"]
    if needs and saved.get("rerun"):
        known = how_to_make_known(saved["config"]["model"], saved["model_origin"])
        lines.append(f"The command needs the model too: {known}.")
    if saved.get("command"):
        lines += ["The command that made this run was:", "```bash\n" + shlex.join(saved["command"]) + "\n```"]
    return lines


def model_needs(saved: dict) -> str:
    """The line a new Python process needs before it can build this run's model ("" for fmnist's own)."""
    origin = saved.get("model_origin")
    if not isinstance(origin, dict) or is_builtin(origin):
        return ""
    name = saved.get("config", {}).get("model")
    module = origin.get("module")
    if origin.get("distribution"):
        return f"# the model {name!r} comes from the package {origin['distribution']!r}: pip install it first\n"
    if module and module != "__main__":
        return f"import {module}  # registers the model {name!r}\n"
    return (f"# the model {name!r} was registered in a script or notebook: run its register_model code first "
            "(or move it into a module and import that)\n")


def budget_section(saved: dict, summary: dict) -> list[str]:
    """A time-budgeted run's plans (training/budget.py, training/replan.py) and what it took; nothing for an
    epoch-count run."""
    plan = (saved.get("resolved") or {}).get("time_plan")
    if not plan:
        return []
    used = summary.get("budget_used_seconds")
    trained = summary.get("trained_steps")
    replans = summary.get("replans") or []
    rows = [
        ["budget", f"{plan['budget']} ({plan['budget_seconds']:,.0f} s)"],
        ["measured: one training step", f"{plan['step_seconds'] * 1000:.1f} ms"],
        ["measured: validation and checkpoints after an epoch", f"{plan['epoch_end_seconds']:.2f} s"],
        ["measuring took", f"{plan['measure_seconds']:.1f} s"],
        ["first plan", f"{plan['total_steps']:,} steps = {plan['epochs']} epochs of {plan['steps_per_epoch']} "
                       f"(the last {plan['last_epoch_steps']})"],
    ]
    if trained is not None:
        epochs = -(-trained // plan["steps_per_epoch"])
        rows.append(["trained", f"{trained:,} steps = {epochs} epochs, after {len(replans)} plans made again at "
                                f"epochs' ends" if replans else f"{trained:,} steps = {epochs} epochs"])
    if summary.get("schedule_finished") is False:
        rows.append(["schedule", f"cut short after epoch {replans[-1]['epoch']}: that epoch ran slower than the "
                                 "time kept in hand allows for, and no further step fitted; the learning rate "
                                 "stopped short of its last value"])
    rows.append(["training and validation took", "unknown: the run was resumed by an fmnist that kept no count"
                 if used is None else f"{used:,.1f} s ({used / plan['budget_seconds']:.1%} of the budget)"])
    return ["## Time budget",
            "The steps were planned from this machine's speed, and planned again at each epoch's end from the "
            "speed of that epoch, so that training and validation end within the budget and the learning-rate "
            "schedule ends at the last step. The final test evaluation comes after and is not counted; the time "
            "a stopped run waited before it was resumed is not counted either.",
            markdown_table(["", ""], rows)]


def stop_section(summary: dict) -> list[str]:
    """Why a run ended before its last epoch (early stopping, or a callback that asked); nothing otherwise."""
    if not summary.get("stopped_early"):
        return []
    return ["## Stopped early",
            f"Training stopped after epoch {summary.get('epochs', '?')} of {summary.get('epochs_planned', '?')}: "
            f"{summary['stopped_early']}. The test figures below are those of the best epoch by validation "
            "accuracy, as for any run."]
def calibration_section(calibration: dict) -> list[str]:
    """The test calibration before and after the temperature, and what the numbers mean for a user."""
    before, after, temperature = calibration["before"], calibration.get("after"), calibration.get("temperature")
    header = ["on the test split", "ECE (15 bins)", "Brier score", "NLL"]
    rows = [["raw probabilities", f"{before['ece']:.4f}", f"{before['brier']:.4f}", f"{before['nll']:.4f}"]]
    if after:
        rows.append([f"after temperature scaling (T = {temperature:.3f})", f"{after['ece']:.4f}",
                     f"{after['brier']:.4f}", f"{after['nll']:.4f}"])
    given = after or before
    gap = sum(row["count"] * (row["confidence"] - row["accuracy"]) for row in given["bins"] if row["count"])
    leaning = "overconfident (it states more than it achieves)" if gap > 0 else \
        "underconfident (it achieves more than it states)"
    meaning = (f"ECE {given['ece']:.4f} means: on the test split, the probability this run gives its answer and "
               f"how often such answers are right differ by {100 * given['ece']:.1f} percentage points on average "
               f"(over 15 confidence bins, weighted by their images); it is {leaning}. Calibrated means near 0: "
               "of the images it answers with probability 0.9, nine in ten are right.")
    if after:
        change = ("softened" if temperature > 1 else "sharpened") + " the probabilities"
        verdict = (f"The temperature, fitted on the validation split only, {change} and moved the test ECE from "
                   f"{before['ece']:.4f} to {after['ece']:.4f} and the NLL from {before['nll']:.4f} to "
                   f"{after['nll']:.4f}; predictions (and accuracy) are unchanged. `fmnist predict`, `serve` and "
                   "`export` apply it; `--no-calibrate` gives the raw probabilities.")
    else:
        verdict = "This run has no temperature (trained with --no-calibrate, or before temperatures existed)."
    return ["## Calibration (test)", markdown_table(header, rows), meaning + " " + verdict]


def report_markdown(run_path: Path, saved: dict, summary: dict, history: list[dict], matrix: torch.Tensor,
                    metrics: dict, figures: dict[str, str], dropout: bool = False) -> str:
    config = saved.get("config", {})
    parameters = f"{summary['parameters']:,}" if "parameters" in summary else "?"
    recipe = f", recipe `{config['recipe']}`" if config.get("recipe") else ""
    data = summary.get("test_data", {})
    tested_on = ""
    if data:
        tested_on = f" Tested on {data.get('directory')} ({'verified' if data.get('verified') else 'NOT verified'})."
    precision = (saved.get("resolved") or {}).get("amp")
    precision = f", mixed precision {precision}" if precision and precision != "none" else ""
    sections = [
        f"# Run {run_path.name}",
        f"Model `{config.get('model')}`{recipe}, {parameters} parameters, device {summary.get('device', '?')}"
        f"{precision}." + tested_on,
        *rerun_section(saved),
        *budget_section(saved, summary),
        *stop_section(summary),
        "## Test metrics (best epoch's weights)",
        test_table(summary, metrics),
        *(calibration_section(summary["calibration"]) if summary.get("calibration") else []),
        "## Observations",
        "\n".join(f"- {line}" for line in observations(history, matrix, metrics, config, dropout)),
        "## Per epoch",
        epoch_table(history),
        "## Per class (test)",
        class_table(metrics),
        "Macro = unweighted mean over the 10 classes; weighted = mean weighted by the number of test images.",
        "## Figures",
        "\n\n".join(f"### {caption}\n\n![{caption}]({name})" for caption, name in figures.items()),
        "## Resolved config",
        "Options that the run's settings do not use are null.",
        "```json\n" + json.dumps(config, indent=2) + "\n```",
    ]
    return "\n\n".join(sections) + "\n"


def flat_calibration(calibration: dict | None) -> dict:
    """summary.json's one-number keys for tables (fmnist compare): test_ece, test_brier, test_nll of the raw
    probabilities and, with a temperature, test_ece_calibrated etc. (None without one)."""
    calibration = calibration or {"before": {}}
    after = calibration.get("after") or {}
    flat = {"temperature": calibration.get("temperature")}
    for key in ("ece", "brier", "nll"):
        flat[f"test_{key}"] = calibration["before"].get(key)
        flat[f"test_{key}_calibrated"] = after.get(key)
    return flat


def summarize_test(run_path: Path, test: EvalResult, test_data: dict | None = None,
                   calibration: dict | None = None) -> tuple[dict, torch.Tensor, dict, dict | None]:
    """summary.json's test fields: loss, accuracy, per-class metrics, the confusion matrix, calibration and
    the data tested on. Every finished run has them, with its report or without (`--no-report`): `fmnist
    serve`'s model card and `fmnist compare` read them. Returns the summary (not yet written), the matrix,
    the metrics and the calibration record as measured."""
    summary = read_summary(run_path)
    matrix = confusion_matrix(test.labels, test.predictions)
    metrics = classification_metrics(matrix)
    summary.update({
        "test_loss": test.loss,
        "test_accuracy": test.accuracy,
        "test_per_class_accuracy": test.per_class_accuracy(),
        "test_precision_recall_f1": metrics,
        "test_confusion_matrix": {"rows": "true class", "columns": "predicted class", "counts": matrix.tolist()},
    })
    if calibration is None and test.probabilities is not None:  # measured as they are, without a temperature
        calibration = calibration_record(test.probabilities, test.labels, None)
    if calibration is not None:  # a hand-made EvalResult may have no probabilities to measure
        summary.update({"calibration": calibration, **flat_calibration(calibration)})
    else:  # nothing measured now: no figures of an earlier evaluation left behind
        for key in ("calibration", *flat_calibration(None)):
            summary.pop(key, None)
    if test_data is not None:
        summary["test_data"] = test_data
    return summary, matrix, metrics, calibration


def write_test_summary(run_path: Path, test: EvalResult, test_data: dict | None = None,
                       calibration: dict | None = None) -> None:
    """summary.json's test fields without the report (`--no-report`)."""
    run_path = Path(run_path)
    summary, *_ = summarize_test(run_path, test, test_data, calibration)
    write_summary(run_path, summary)


def write_report(run_path: Path, model: nn.Module, test_images: torch.Tensor, test: EvalResult,
                 mean: float, std: float, test_data: dict | None = None, calibration: dict | None = None) -> Path:
    """Figures, per-class metrics into summary.json, and report.md, all in the run folder.

    `test_data` says which data the test result came from (directory, verified); summary.json keeps it.
    `calibration`: the test calibration before and after the run's temperature (training/calibration.py's
    calibration_record); without it, the test probabilities are measured as they are.
    """
    run_path = Path(run_path)
    history = read_history(run_path)
    if not history:
        raise CheckpointError(f"{run_path}: metrics.csv has no epochs yet; nothing to report")
    saved = read_saved_config(run_path)
    summary, matrix, metrics, calibration = summarize_test(run_path, test, test_data, calibration)
    network = model.network if isinstance(model, TrainedModel) else model
    explained = TrainedModel(network, mean, std, bool(saved["config"].get("tta_flip")), {},
                             (calibration or {}).get("temperature"), shift_tta=bool(saved["config"].get("tta_shift")))
    figures = write_figures(run_path, history, read_learning_rates(run_path), matrix, metrics,
                            test_images, test, explained, calibration)
    write_summary(run_path, summary)
    report_path = run_path / "report.md"
    atomic_write_text(report_path, report_markdown(run_path, saved, summary, history, matrix, metrics, figures,
                                                       has_dropout(model)))
    return report_path


def report_run(run_dir: str | Path, data_dir: str | None = None, device: str = "auto",
               batch_size: int = EVAL_BATCH_SIZE, allow_unverified_data: bool = False,
               calibrate: bool = True) -> Path:
    """`fmnist report RUN_DIR`: evaluate the run's best checkpoint on the test split, then write the report
    (report.md and its figures; summary.json's test fields); returns report.md's path.

    What a run trained with `report=False` writes later. It never changes whether the run can be
    resumed: a stopped run stays a stopped run.
    """
    run_path = run_folder_argument(run_dir, "report_run")
    evaluation_arguments("report_run", data_dir, device, batch_size, allow_unverified_data=allow_unverified_data,
                         calibrate=calibrate)
    read_saved_config(run_path)
    check_writable(run_path, "report:")  # before the evaluation, not after it
    with exclusive_lock(run_path, "run folder"):  # not while the run is training or being resumed
        return write_run_report(run_path, data_dir, device, batch_size, allow_unverified_data, calibrate)


def write_run_report(run_path: Path, data_dir: str | None, device: str, batch_size: int,
                     allow_unverified_data: bool, calibrate: bool = True) -> Path:
    evaluation = evaluate_checkpoint(run_path, data_dir, device, batch_size, allow_unverified_data, calibrate)
    model, state = evaluation.model, evaluation.state
    if not read_summary(run_path):  # an interrupted run: say what was tested
        write_summary(run_path, {"model": state["model_name"], "parameters": count_parameters(model.network),
                                 "epochs": state["config"].get("epochs"), "best_epoch": state["epoch"],
                                 "device": str(evaluation.test_split.images.device)})
    test_data = {"directory": str(evaluation.data_dir), "verified": evaluation.data_verified}
    return write_report(run_path, model.network, evaluation.test_split.images, evaluation.result,
                        model.mean, model.std, test_data, evaluation.calibration)
