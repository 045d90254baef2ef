"""What a finished run shows: figures, per-class metrics and a written report.md in its folder.

`write_report` is called at the end of `fmnist train` and by `fmnist report RUN_DIR`. It reads the
run's own files (config.json, metrics.csv, lr_steps.csv, summary.json) and one test evaluation of
the best weights; every observation in report.md is computed from those numbers, none is typed in.
"""

from __future__ import annotations

import csv
import json
import shlex
from pathlib import Path

import torch
from torch import nn

from fmnist.config import EVAL_BATCH_SIZE, FIELD_TYPES, TrainConfig
from fmnist.data import CLASS_NAMES, NUM_CLASSES, Split
from fmnist.errors import CheckpointError
from fmnist.loader import normalize
from fmnist.runs import atomic_write_json, atomic_write_text
from fmnist.train import EvalResult

MISCLASSIFIED_SHOWN = 32  # a 4 x 8 grid: enough to see a pattern, small enough to read
PAIRS_SHOWN = 3
WEAKEST_SHOWN = 3
OVERFIT_GAP = 0.02  # train accuracy this far above validation is called a sign of overfitting
# Fields a re-run should not copy: a fixed --name would collide with the existing run folder.
NOT_REPEATED = ("name",)


# ---------------------------------------------------------------- numbers from the predictions

def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """matrix[true, predicted] = number of images; rows are the true classes."""
    flat = labels.to(torch.int64) * num_classes + predictions.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def classification_metrics(matrix: torch.Tensor, class_names=CLASS_NAMES) -> dict:
    """Per-class precision, recall, F1 and support, with their macro and support-weighted averages.

    A class that is never predicted has precision 0 (and one never present, recall 0), the
    convention of scikit-learn's zero_division=0, so averages stay defined.
    """
    counts = matrix.to(torch.float64)
    true_positives = counts.diag()
    predicted = counts.sum(dim=0)
    support = counts.sum(dim=1)
    precision = torch.where(predicted > 0, true_positives / predicted.clamp(min=1), 0.0)
    recall = torch.where(support > 0, true_positives / support.clamp(min=1), 0.0)
    both = precision + recall
    f1 = torch.where(both > 0, 2 * precision * recall / both.clamp(min=1e-12), 0.0)
    weights = support / support.sum().clamp(min=1)
    total = max(counts.sum().item(), 1)
    per_class = {
        name: {"precision": p, "recall": r, "f1": f, "support": int(s)}
        for name, p, r, f, s in zip(class_names, precision.tolist(), recall.tolist(), f1.tolist(),
                                    support.tolist(), strict=True)
    }
    return {
        "averaging": (
            "per_class: one-vs-rest precision, recall and F1 of each class; macro: unweighted mean over "
            "the classes; weighted: mean weighted by each class's support (its number of test images); "
            "micro precision = recall = F1 = accuracy for single-label classification; "
            "a class never predicted has precision 0 (zero_division=0)"
        ),
        "per_class": per_class,
        "macro": {"precision": precision.mean().item(), "recall": recall.mean().item(), "f1": f1.mean().item()},
        "weighted": {
            "precision": (precision * weights).sum().item(),
            "recall": (recall * weights).sum().item(),
            "f1": (f1 * weights).sum().item(),
        },
        "micro": dict.fromkeys(("precision", "recall", "f1"), true_positives.sum().item() / total),
    }


def most_confused_pairs(matrix: torch.Tensor, top: int = PAIRS_SHOWN, class_names=CLASS_NAMES) -> list[dict]:
    """The largest off-diagonal cells: images of class `true` predicted as class `predicted`."""
    off_diagonal = matrix.clone()
    off_diagonal.fill_diagonal_(0)
    support = matrix.sum(dim=1)
    values, flat_indices = off_diagonal.flatten().sort(descending=True, stable=True)
    pairs = []
    for value, flat_index in zip(values.tolist()[:top], flat_indices.tolist()[:top], strict=True):
        if value == 0:
            break
        true_class, predicted_class = divmod(flat_index, matrix.shape[1])
        pairs.append({
            "true": class_names[true_class],
            "predicted": class_names[predicted_class],
            "count": value,
            "share_of_true_class": value / max(support[true_class].item(), 1),
        })
    return pairs


def weakest_classes(metrics: dict, top: int = WEAKEST_SHOWN) -> list[tuple[str, dict]]:
    """Classes with the lowest recall (per-class accuracy), F1 breaking ties."""
    ranked = sorted(metrics["per_class"].items(), key=lambda item: (item[1]["recall"], item[1]["f1"]))
    return ranked[:top]


# ---------------------------------------------------------------- the run's files

def read_history(run_path: Path) -> list[dict]:
    """metrics.csv as rows of numbers (epoch as int)."""
    path = run_path / "metrics.csv"
    if not path.is_file():
        raise CheckpointError(f"{run_path}: no metrics.csv; is it a run folder of fmnist?")
    with path.open(newline="") as handle:
        return [{key: int(value) if key == "epoch" else float(value) for key, value in row.items()}
                for row in csv.DictReader(handle)]


def read_learning_rates(run_path: Path) -> list[float]:
    path = run_path / "lr_steps.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return [float(row["lr"]) for row in csv.DictReader(handle)]


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot read it as JSON ({error}); the run folder may be damaged") from None


def rerun_command(config: dict) -> str:
    """An `fmnist train` command with explicit flags that rebuilds `config` (all but its --name).

    Flags are given for every field that differs from what the defaults plus the recipe would set,
    so the command stays short yet does not depend on today's defaults matching the run's.
    """
    from fmnist.recipes import RECIPES

    recipe = config.get("recipe")
    baseline = TrainConfig().to_dict()
    if recipe in RECIPES:
        baseline.update(RECIPES[recipe].overrides)
    arguments = ["fmnist", "train"]
    for name, value in config.items():
        if name in NOT_REPEATED or name not in FIELD_TYPES:
            continue
        if name == "recipe":
            if value:
                arguments += ["--recipe", value]
            continue
        if value == baseline.get(name) or value is None:  # None cannot be given as a flag: it is the default
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            arguments.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            arguments += [flag, repr(value) if isinstance(value, float) else str(value)]
    return shlex.join(arguments)


# ---------------------------------------------------------------- figures and the report

def probabilities_of(model: nn.Module, image: torch.Tensor, config: TrainConfig) -> list[float]:
    """Softmax over the classes for one uint8 (28, 28) image, normalized as in training."""
    parameter = next(model.parameters())
    batch = normalize(image.unsqueeze(0), config.mean, config.std).to(parameter.device)
    model.eval()
    with torch.inference_mode():
        return torch.softmax(model(batch.contiguous(memory_format=torch.channels_last)), dim=1)[0].tolist()


def write_figures(run_path: Path, history: list[dict], learning_rates: list[float], matrix: torch.Tensor,
                  metrics: dict, test_images: torch.Tensor, test: EvalResult, model: nn.Module,
                  config: TrainConfig) -> dict[str, str]:
    """Every PNG of the run; returns {caption: file name} in the order report.md shows them."""
    from fmnist import plots

    names = list(CLASS_NAMES)
    steps_per_epoch = len(learning_rates) // len(history) if history else None
    wrong = (test.predictions != test.labels).nonzero().flatten()
    shown = wrong[:MISCLASSIFIED_SHOWN]
    titles = [f"true {names[test.labels[i]]}\npred {names[test.predictions[i]]}" for i in shown.tolist()]
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
        f"Misclassified test images (first {len(shown)} of {len(wrong)})": plots.image_grid(
            test_images[shown.to(test_images.device)].cpu(), titles, run_path / "misclassified.png"),
        "Class probabilities for one test image": plots.probability_bars(
            test_images[example].cpu(), probabilities_of(model, test_images[example], config), names,
            example_title, run_path / "probabilities.png"),
    }
    return {caption: path.name for caption, path in figures.items()}


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def observations(history: list[dict], matrix: torch.Tensor, metrics: dict) -> list[str]:
    """Sentences computed from the run's numbers."""
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
        f"(train minus validation): {verdict}. Train figures are running averages over the epoch with dropout and "
        "augmentation on, so they understate how well the weights at the end of the epoch fit the training data.",
    ]
    if last["val_accuracy"] < best["val_accuracy"]:
        lines.append(f"Validation accuracy fell from {best['val_accuracy']:.4f} (epoch {best['epoch']}) to "
                     f"{last['val_accuracy']:.4f} by the last epoch: more epochs did not help this run.")
    pairs = most_confused_pairs(matrix)
    if pairs:
        described = "; ".join(
            f"{pair['true']} → {pair['predicted']}: {pair['count']} images "
            f"({pair['share_of_true_class']:.1%} of {pair['true']})" for pair in pairs
        )
        lines.append(f"Most-confused pairs (true → predicted, from the test confusion matrix): {described}.")
    else:
        lines.append("No test image was misclassified.")
    weakest = "; ".join(f"{name} (recall {values['recall']:.3f}, F1 {values['f1']:.3f})"
                        for name, values in weakest_classes(metrics))
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
        ["wall time", wall],
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


def report_markdown(run_path: Path, saved: dict, summary: dict, history: list[dict], matrix: torch.Tensor,
                    metrics: dict, figures: dict[str, str]) -> str:
    config = saved.get("config", {})
    parameters = f"{summary['parameters']:,}" if "parameters" in summary else "?"
    recipe = f", recipe `{config['recipe']}`" if config.get("recipe") else ""
    sections = [
        f"# Run {run_path.name}",
        f"Model `{config.get('model')}`{recipe}, {parameters} parameters, device {summary.get('device', '?')}.",
        "## Re-run it",
        "```bash\n" + rerun_command(config) + "\n```",
        "Explicit flags for every value that differs from the defaults and the recipe; without `--name` "
        "so that the re-run gets a folder of its own. The command that made this run was:",
        "```bash\n" + shlex.join(saved.get("command", [])) + "\n```",
        "## Test metrics (best epoch's weights)",
        test_table(summary, metrics),
        "## Observations",
        "\n".join(f"- {line}" for line in observations(history, matrix, metrics)),
        "## Per epoch",
        epoch_table(history),
        "## Per class (test)",
        class_table(metrics),
        "Macro = unweighted mean over the 10 classes; weighted = mean weighted by the number of test images.",
        "## Figures",
        "\n\n".join(f"### {caption}\n\n![{caption}]({name})" for caption, name in figures.items()),
        "## Resolved config",
        "```json\n" + json.dumps(config, indent=2) + "\n```",
    ]
    return "\n\n".join(sections) + "\n"


def write_report(run_path: Path, model: nn.Module, test_split: Split, test: EvalResult, config: TrainConfig) -> Path:
    """Figures, per-class metrics into summary.json, and report.md, all in the run folder."""
    run_path = Path(run_path)
    history = read_history(run_path)
    if not history:
        raise CheckpointError(f"{run_path}: metrics.csv has no epochs yet; nothing to report")
    saved = read_json(run_path / "config.json")
    summary = read_json(run_path / "summary.json")
    matrix = confusion_matrix(test.labels, test.predictions)
    metrics = classification_metrics(matrix)
    summary.update({
        "test_loss": test.loss,
        "test_accuracy": test.accuracy,
        "test_per_class_accuracy": test.per_class_accuracy(),
        "test_precision_recall_f1": metrics,
        "test_confusion_matrix": {"rows": "true class", "columns": "predicted class", "counts": matrix.tolist()},
    })
    figures = write_figures(run_path, history, read_learning_rates(run_path), matrix, metrics,
                            test_split.images, test, model, config)
    atomic_write_json(run_path / "summary.json", summary)
    report_path = run_path / "report.md"
    atomic_write_text(report_path, report_markdown(run_path, saved, summary, history, matrix, metrics, figures))
    return report_path


def report_run(run_dir: str, data_dir: str | None = None, device_name: str = "auto",
               batch_size: int = EVAL_BATCH_SIZE) -> Path:
    """`fmnist report RUN_DIR`: evaluate the run's best checkpoint on the test split, then write the report."""
    from fmnist.experiment import evaluate_checkpoint  # late: experiment imports this module
    from fmnist.models import count_parameters

    run_path = Path(run_dir)
    if not run_path.is_dir():
        raise CheckpointError(f"{run_path}: no such run folder; give the folder that `fmnist train` printed")
    evaluation = evaluate_checkpoint(run_path, data_dir, device_name, batch_size)
    config, model, state, test = evaluation.config, evaluation.model, evaluation.state, evaluation.result
    summary_path = run_path / "summary.json"
    if not summary_path.is_file():  # an interrupted run: say what was tested
        atomic_write_json(summary_path, {"model": config.model, "parameters": count_parameters(model),
                                         "epochs": config.epochs, "best_epoch": state["epoch"],
                                         "device": str(evaluation.test_split.images.device)})
    return write_report(run_path, model, evaluation.test_split, test, config)
