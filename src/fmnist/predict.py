"""Class probabilities for image files, from a checkpoint: what `fmnist predict` does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fmnist.data import CLASS_NAMES
from fmnist.errors import DataError
from fmnist.preprocess import IMAGE_SUFFIXES, image_batch, read_image, to_fashion_mnist
from fmnist.train import predict_logits


@dataclass
class Prediction:
    path: Path
    classes: list[int]  # the top-k class indices, most likely first
    probabilities: list[float]

    def to_dict(self) -> dict:
        return {
            "file": str(self.path),
            "predictions": [
                {"label": label, "class": CLASS_NAMES[label], "probability": probability}
                for label, probability in zip(self.classes, self.probabilities, strict=True)
            ],
        }

    def to_line(self) -> str:
        top = ", ".join(
            f"{CLASS_NAMES[label]} {probability:.3f}"
            for label, probability in zip(self.classes, self.probabilities, strict=True)
        )
        return f"{self.path}: {top}"


def prepare_images(files: list[Path], invert: bool = True) -> tuple[list[Path], list[torch.Tensor], list[DataError]]:
    """Read and preprocess each file; a file that fails is reported, the others go on."""
    readable, images, failures = [], [], []
    for path in files:
        try:
            if path.is_dir():  # image_files() keeps a folder only when it holds no image
                raise DataError(f"{path}: a folder with no image files ({', '.join(IMAGE_SUFFIXES)})")
            images.append(to_fashion_mnist(read_image(path), invert))
            readable.append(path)
        except DataError as error:
            failures.append(error)
    return readable, images, failures


def predict_images(
    model: nn.Module, files: list[Path], images: list[torch.Tensor], mean: float, std: float, top_k: int,
    flip_tta: bool = False,
) -> list[Prediction]:
    """The top-k classes and their softmax probabilities for each preprocessed image (`flip_tta` as
    the model was evaluated in training, so predictions agree with its test accuracy)."""
    if not images:
        return []
    model.eval()
    with torch.inference_mode():
        probabilities = torch.softmax(predict_logits(model, image_batch(images, mean, std), flip_tta), dim=1)
    top = probabilities.topk(top_k, dim=1)
    return [
        Prediction(path, classes.tolist(), values.tolist())
        for path, classes, values in zip(files, top.indices, top.values, strict=True)
    ]
