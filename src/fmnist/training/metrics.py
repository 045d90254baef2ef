"""Numbers from predictions: accuracy per class, the confusion matrix, precision, recall and F1,
and the most-confused pairs. Pure tensor math, no files: reports, TensorBoard and the CLI share it."""

from __future__ import annotations

import torch

from fmnist.data.fashion import CLASS_NAMES, NUM_CLASSES


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """matrix[true, predicted] = number of images; rows are the true classes."""
    flat = labels.to(torch.int64) * num_classes + predictions.to(torch.int64)
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_accuracy(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int = NUM_CLASSES) -> list[float]:
    """The share of each class's images predicted as that class (its recall); NaN for an absent class."""
    accuracies = []
    for cls in range(num_classes):
        mask = labels == cls
        hits = (predictions[mask] == cls).sum().item()
        accuracies.append(hits / mask.sum().item() if mask.any() else float("nan"))
    return accuracies


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


def most_confused_pairs(matrix: torch.Tensor, top: int = 3, class_names=CLASS_NAMES) -> list[dict]:
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


def weakest_classes(metrics: dict, top: int = 3) -> list[tuple[str, dict]]:
    """Classes with the lowest recall (per-class accuracy), F1 breaking ties."""
    ranked = sorted(metrics["per_class"].items(), key=lambda item: (item[1]["recall"], item[1]["f1"]))
    return ranked[:top]
