"""The figures of a run and of a comparison, as PNG files, drawn off screen (no display needed).

Each function draws one figure from plain data (lists, tensors) and saves it atomically; none of
them trains or evaluates anything, so the report code decides what is shown.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from fmnist.files import atomic_write_bytes

DPI = 100  # small files, fast to write; enough to read every label


def new_figure(**options):
    """A matplotlib Figure of its own (`options` as for Figure: figsize, layout), not one of pyplot's.

    Not pyplot's: drawing a report leaves the user's backend alone (a notebook's inline one stays),
    and nothing is kept open once the figure is saved. matplotlib is imported by the first figure:
    about half a second that the commands drawing nothing (predict, evaluate, a refused option) skip.
    """
    from matplotlib.figure import Figure

    return Figure(**options)


def save(figure, path: Path) -> Path:
    """Render to PNG in memory and write it atomically.

    Figures use layout="constrained" (labels do not overlap colorbars or neighbours) and are cropped
    with bbox_inches="tight" (nothing cut at the edges).
    """
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


def epoch_curves(history: list[dict], metric: str, ylabel: str, path: Path) -> Path:
    """Train and validation `metric` ("loss" or "accuracy") per epoch."""
    epochs = [row["epoch"] for row in history]
    figure = new_figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    axes.plot(epochs, [row[f"train_{metric}"] for row in history], marker="o", label="train (running, in the epoch)")
    axes.plot(epochs, [row[f"val_{metric}"] for row in history], marker="o", label="validation (end of epoch)")
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.set_xticks(epochs)
    axes.grid(alpha=0.3)
    axes.legend()
    return save(figure, path)


def learning_rate_steps(learning_rates: list[float], steps_per_epoch: int | None, path: Path) -> Path:
    """The learning rate used at every training step, with epoch boundaries marked."""
    figure = new_figure(figsize=(6, 3.5), layout="constrained")
    axes = figure.subplots()
    axes.plot(range(1, len(learning_rates) + 1), learning_rates)
    if steps_per_epoch:
        for boundary in range(steps_per_epoch, len(learning_rates), steps_per_epoch):
            axes.axvline(boundary + 0.5, color="grey", alpha=0.3, linestyle="--")
    axes.set_xlabel("training step (dashed: epoch boundaries)")
    axes.set_ylabel("learning rate")
    axes.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes.grid(alpha=0.3)
    return save(figure, path)


def draw_matrix(axes, figure, values: torch.Tensor, class_names: list[str], title: str, text) -> None:
    """One class-by-class matrix as a heat map with every non-zero cell written in it."""
    image = axes.imshow(values.numpy(), cmap="Blues")
    figure.colorbar(image, ax=axes, shrink=0.8)
    threshold = values.max().item() / 2
    for row in range(len(class_names)):
        for column in range(len(class_names)):
            value = values[row, column].item()
            if value:
                axes.text(column, row, text(value), ha="center", va="center", fontsize=7,
                          color="white" if value > threshold else "black")
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names, rotation=45, ha="right")
    axes.set_yticks(ticks, class_names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)


def confusion_matrix(matrix: torch.Tensor, class_names: list[str], path: Path) -> Path:
    """Counts beside row-normalized rates (each row: where the images of one true class went)."""
    counts = matrix.to(torch.float64)
    rates = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    figure = new_figure(figsize=(15, 6.5), layout="constrained")
    panels = figure.subplots(1, 2)
    draw_matrix(panels[0], figure, counts, class_names, "counts", lambda v: f"{int(v)}")
    draw_matrix(panels[1], figure, rates, class_names, "row-normalized (recall on the diagonal)", lambda v: f"{v:.2f}")
    return save(figure, path)


def label_bars(axes, values: list[float]) -> None:
    """Write each bar's value (0..1) at its end, so that the figure is read without a ruler; a value
    that rounds to 0.000 says so rather than showing a misleading 0."""
    for position, value in enumerate(values):
        text = f"{value:.3f}" if value >= 0.0005 else "<0.001"
        axes.text(min(value, 1.0) + 0.01, position, text, va="center", fontsize=8)
    axes.set_xlim(0, 1.14)  # room for the value after a bar of 1


def per_class_bars(values: list[float], class_names: list[str], xlabel: str, path: Path) -> Path:
    """One horizontal bar per class, value written at its end."""
    figure = new_figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    positions = range(len(class_names))
    axes.barh(positions, values, color="tab:blue")
    label_bars(axes, values)
    axes.set_yticks(positions, class_names)
    axes.invert_yaxis()  # first class on top, as in the confusion matrix
    axes.set_xlabel(xlabel)
    axes.grid(axis="x", alpha=0.3)
    return save(figure, path)


def image_grid(images: torch.Tensor, titles: list[str], path: Path, columns: int = 8, maps=None) -> Path:
    """uint8 images (N, 28, 28), each with a title; an empty set draws a note instead. `maps`: an
    attribution map (N, 28, 28) in [0, 1] per image (explain.py), drawn over it in "inferno".

    The images are tiled into one picture on one axes (with room for the titles between rows): a
    grid of 32 small axes took most of a short training run's time to lay out and draw."""
    count = len(images)
    rows = max(1, -(-count // columns))
    size, gap, title_room = 28, 4, 16  # pixels of an image, between images, above each row for its title
    height, width = rows * (size + title_room), columns * (size + gap) - gap
    mosaic = np.full((height, width), np.nan)
    overlay = np.full((height, width), np.nan)
    figure = new_figure(figsize=(columns * 1.5, rows * 1.75))
    axes = figure.subplots()
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.99)
    axes.axis("off")
    for index in range(count):
        row, column = divmod(index, columns)
        top, left = row * (size + title_room) + title_room, column * (size + gap)
        mosaic[top:top + size, left:left + size] = images[index].numpy()
        if maps is not None:
            overlay[top:top + size, left:left + size] = maps[index]
        axes.text(left + size / 2, top - 1.5, titles[index], fontsize=7, ha="center", va="bottom")
    axes.imshow(np.ma.masked_invalid(mosaic), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    if maps is not None:
        axes.imshow(np.ma.masked_invalid(overlay), cmap="inferno", vmin=0, vmax=1, alpha=0.55,
                    interpolation="nearest")
    if count == 0:
        axes.text(0, height / 2, "no misclassified images", fontsize=12)
    return save(figure, path)


def reliability_diagram(calibration: dict, path: Path) -> Path:
    """Accuracy against confidence per bin, before and (with a temperature) after scaling: a calibrated
    model's bars reach the diagonal; bars below it are overconfidence. Bar width: the bin; the number
    above a bar: its images."""
    panels = [("raw probabilities", calibration["before"])]
    if calibration.get("after"):
        panels.append((f"after temperature scaling (T = {calibration['temperature']:.2f})", calibration["after"]))
    figure = new_figure(figsize=(5.5 * len(panels), 4.5), layout="constrained")
    grid = figure.subplots(1, len(panels), squeeze=False)
    for axes, (title, measured) in zip(grid[0], panels, strict=True):
        filled = [row for row in measured["bins"] if row["count"]]
        axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
        axes.bar([row["lower"] for row in filled], [row["accuracy"] for row in filled],
                 width=[row["upper"] - row["lower"] for row in filled], align="edge", color="tab:blue",
                 edgecolor="white", alpha=0.8, label="accuracy of the bin's images")
        axes.scatter([row["confidence"] for row in filled], [row["confidence"] for row in filled], color="tab:red",
                     s=12, zorder=3, label="their mean confidence")
        for row in filled:
            axes.text((row["lower"] + row["upper"]) / 2, min(row["accuracy"], 0.93) + 0.02, f"{row['count']:,}",
                      ha="center", fontsize=6, rotation=90)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.05)
        axes.set_xlabel("confidence (the top probability), 15 bins")
        axes.set_ylabel("accuracy")
        axes.set_title(f"{title}\nECE {measured['ece']:.4f}, NLL {measured['nll']:.4f}", fontsize=9)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="upper left")
    return save(figure, path)


def probability_bars(image: torch.Tensor, probabilities: list[float], class_names: list[str], title: str,
                     path: Path) -> Path:
    """One test image beside the model's probability for every class."""
    figure = new_figure(figsize=(9, 3.5), layout="constrained")
    picture, bars = figure.subplots(1, 2, width_ratios=[1, 2])
    picture.imshow(image.numpy(), cmap="gray", vmin=0, vmax=255)
    picture.axis("off")
    picture.set_title(title, fontsize=9)
    positions = range(len(class_names))
    bars.barh(positions, probabilities, color="tab:orange")
    label_bars(bars, probabilities)
    bars.set_yticks(positions, class_names)
    bars.invert_yaxis()
    bars.set_xlabel("probability (softmax of the logits)")
    return save(figure, path)


def overlaid_curves(curves: dict[str, list[dict]], path: Path) -> Path:
    """Validation accuracy and loss per epoch, one line per run or grid point.

    `curves` maps a label to rows with "epoch", "val_accuracy", "val_loss" and optionally
    "val_accuracy_std" / "val_loss_std", drawn as a band (mean ± std over seeds).
    """
    figure = new_figure(figsize=(12, 4.5), layout="constrained")
    panels = figure.subplots(1, 2)
    banded = False
    for label, rows in curves.items():
        epochs = [row["epoch"] for row in rows]
        for axes, metric in zip(panels, ("val_accuracy", "val_loss"), strict=True):
            means = [row[metric] for row in rows]
            line = axes.plot(epochs, means, marker="o", label=label)[0]
            if rows and f"{metric}_std" in rows[0]:
                banded = True
                stds = [row[f"{metric}_std"] for row in rows]
                axes.fill_between(epochs, [m - s for m, s in zip(means, stds, strict=True)],
                                  [m + s for m, s in zip(means, stds, strict=True)], color=line.get_color(), alpha=0.2)
    for axes, ylabel in zip(panels, ("validation accuracy", "validation loss"), strict=True):
        axes.locator_params(axis="x", integer=True)
        axes.set_xlabel("epoch (bands: ± one std over seeds)" if banded else "epoch")
        axes.set_ylabel(ylabel)
        axes.grid(alpha=0.3)
    panels[0].legend(fontsize=7)
    return save(figure, path)


def lr_find_curve(learning_rates: list[float], losses: list[float], suggestion: float | None, path: Path) -> Path:
    """The learning-rate range test: smoothed loss against the learning rate (log scale), the
    suggested rate marked."""
    figure = new_figure(figsize=(6, 4), layout="constrained")
    axes = figure.subplots()
    axes.plot(learning_rates, losses)
    if suggestion is not None:
        axes.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggested {suggestion:.2g}")
        axes.legend()
    axes.set_xscale("log")
    if losses:  # the explosion at the end would flatten everything before it
        axes.set_ylim(min(losses) * 0.95, min(max(losses), 2 * losses[0]) * 1.05)
    axes.set_xlabel("learning rate (log scale)")
    axes.set_ylabel("training loss (smoothed)")
    axes.grid(alpha=0.3, which="both")
    return save(figure, path)
