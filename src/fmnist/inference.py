"""Using a trained model: load it from a run, predict image files or tensors, evaluate it on the test set.

    model = load_model("runs/fast")                 # a run folder (its best.pt) or a .pt file
    for prediction in predict(model, ["boot.jpg", "photos/"]):
        print(prediction.path, prediction.class_name, prediction.probability)

`fmnist predict`, `fmnist evaluate`, `fmnist export` and `fmnist serve` all go through here, so a
file gives the same answer whichever way it is asked.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from fmnist.data.fashion import CLASS_NAMES, MEAN, STD
from fmnist.data.images import IMAGE_SUFFIXES, display_path, image_batch, image_files, read_image, to_fashion_mnist
from fmnist.data.loader import TensorLoader
from fmnist.data.locate import find_data_dir
from fmnist.data.splits import Split, read_split
from fmnist.data.verify import unverified_files
from fmnist.errors import CheckpointError, ConfigError, DataError
from fmnist.runs.calibration import run_temperature
from fmnist.runs.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
    normalization,
    trained_with_flip_tta,
)
from fmnist.training.calibration import calibration_record, scaled_probabilities
from fmnist.training.config import EVAL_BATCH_SIZE
from fmnist.training.loop import EvalResult, evaluate, predict_logits
from fmnist.training.runtime import resolve_device


class TrainedModel(nn.Module):
    """A trained network with what using it takes: its input normalization and its evaluation mode.

    Call it on normalized (N, 1, 28, 28) images for logits, as the network itself; a run trained
    with --tta-flip also averages each image with its mirror image here, as its test accuracy did.
    `info` holds the checkpoint's model name, epoch, recipe and path. `temperature` is the run's fitted
    temperature (runs/calibration.py), or None: probabilities are softmax(logits / temperature)
    wherever they come out (class_probabilities, evaluate_checkpoint, export); the logits stay raw.
    """

    def __init__(self, network: nn.Module, mean: float, std: float, flip_tta: bool, info: dict,
                 temperature: float | None = None):
        super().__init__()
        self.network = network
        self.mean = mean
        self.std = std
        self.flip_tta = flip_tta
        self.info = info
        self.temperature = temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return predict_logits(self.network, images, self.flip_tta)


def load_model(source: str | os.PathLike, device: str = "cpu", calibrate: bool = True) -> TrainedModel:
    """The trained model of a run folder (its best.pt, else last.pt) or of a checkpoint file, in eval mode.

    With `calibrate`, the run's temperature (calibration.json) is applied to its probabilities;
    `calibrate=False` keeps the raw ones.
    """
    path = checkpoint_path(source)
    state = load_checkpoint(path)
    network = model_from_checkpoint(state, path)
    mean, std = normalization(state)
    info = {"model": state["model_name"], "epoch": state["epoch"], "recipe": state["config"].get("recipe"),
            "checkpoint": str(path)}
    temperature = run_temperature(path, state["model_name"], state["epoch"]) if calibrate else None
    model = TrainedModel(network, mean, std, trained_with_flip_tta(state), info, temperature)
    return model.to(device=resolve_device(device), memory_format=torch.channels_last).eval()


@dataclass
class Prediction:
    """The class probabilities for one image; `error` instead when the file could not be read."""

    source: str  # the file's path, or "image N" for a tensor
    probabilities: list[float] | None = None
    error: str | None = None

    @property
    def label(self) -> int:
        return max(range(len(self.probabilities)), key=self.probabilities.__getitem__)

    @property
    def class_name(self) -> str:
        return CLASS_NAMES[self.label]

    @property
    def probability(self) -> float:
        return self.probabilities[self.label]

    def top(self, k: int = 3) -> list[tuple[str, float]]:
        """The k most likely classes with their probabilities, most likely first."""
        ranked = sorted(range(len(self.probabilities)), key=lambda index: -self.probabilities[index])
        return [(CLASS_NAMES[index], self.probabilities[index]) for index in ranked[:k]]

    def to_dict(self, top_k: int = 3) -> dict:
        if self.error is not None:
            return {"file": self.source, "error": self.error}
        return {
            "file": self.source,
            "predictions": [
                {"label": CLASS_NAMES.index(name), "class": name, "probability": probability}
                for name, probability in self.top(top_k)
            ],
            "probabilities": dict(zip(CLASS_NAMES, self.probabilities, strict=True)),
        }

    def to_line(self, top_k: int = 3) -> str:
        return f"{self.source}: " + ", ".join(f"{name} {probability:.3f}" for name, probability in self.top(top_k))


def predict(
    model_or_run: nn.Module | str | os.PathLike,
    images_or_paths,
    *,
    invert: bool = True,
    skip_unreadable: bool = False,
    batch_size: int = EVAL_BATCH_SIZE,
) -> list[Prediction]:
    """Class probabilities for image files, folders of them, or uint8 images (28x28 tensors, PIL images).

    `model_or_run` is a TrainedModel, a run folder or checkpoint path, or a plain network (then
    normalized with Fashion-MNIST's mean and std). Files are made to look like Fashion-MNIST first
    (data/images.py; `invert=False` keeps their colours as they are). An unreadable file raises
    DataError, or with `skip_unreadable` comes back as a Prediction with `error` set. Images go
    through the model in batches, so memory stays flat however many there are.
    """
    model = model_to_use(model_or_run)
    check_batch_size(batch_size)
    prepared = prepare(images_or_paths, invert, skip_unreadable)
    predictions = []
    for chunk in chunks(prepared, batch_size):
        readable = [(source, image) for source, image in chunk if isinstance(image, torch.Tensor)]
        probabilities = iter(class_probabilities(model, [image for _, image in readable]) if readable else [])
        for source, image in chunk:
            if isinstance(image, DataError):
                predictions.append(Prediction(source, error=display_path(Path(str(image)))))
            else:
                predictions.append(Prediction(source, next(probabilities)))
    return predictions


def class_probabilities(model: nn.Module, images: list[torch.Tensor]) -> list[list[float]]:
    """Softmax over the classes for uint8 (28, 28) images, normalized as the model was trained."""
    mean, std = getattr(model, "mean", MEAN), getattr(model, "std", STD)
    parameter = next(model.parameters())
    batch = image_batch(images, mean, std).to(parameter.device).contiguous(memory_format=torch.channels_last)
    model.eval()
    with torch.inference_mode():
        probabilities = torch.softmax(model(batch).float() / (getattr(model, "temperature", None) or 1.0), dim=1)
    if not torch.isfinite(probabilities).all():
        raise CheckpointError("the model's output is not finite (NaN or infinite weights?); "
                              "it cannot classify anything: use a checkpoint from before the loss diverged")
    return probabilities.tolist()


IN_MEMORY = (torch.Tensor, np.ndarray, Image.Image)
WHAT_PREDICT_TAKES = ("image files or folders (str or Path), PIL images, or uint8 tensors or NumPy arrays "
                      "of shape (28, 28) or (N, 28, 28)")


def prepare(images_or_paths, invert: bool, skip_unreadable: bool) -> Iterator[tuple[str, torch.Tensor | DataError]]:
    """(source, uint8 28x28 image or the DataError that reading it raised), lazily, in order."""
    if isinstance(images_or_paths, (torch.Tensor, np.ndarray)):
        for index, image in enumerate(image_tensor(images_or_paths)):
            yield f"image {index}", image
        return
    items = given_items(images_or_paths)
    if all(isinstance(item, IN_MEMORY) for item in items):
        for index, item in enumerate(items):
            image = to_fashion_mnist(item, invert) if isinstance(item, Image.Image) else image_tensor(item, single=True)
            yield f"image {index}", image
        return
    for path in image_files(items):
        try:
            if path.is_dir():  # image_files() keeps a folder only when it holds no image
                raise DataError(f"{path}: a folder with no image files ({', '.join(IMAGE_SUFFIXES)})")
            yield display_path(path), to_fashion_mnist(read_image(path), invert)
        except DataError as error:
            if not skip_unreadable:
                raise
            yield display_path(path), error


def given_items(images_or_paths) -> list:
    """The images or paths as a non-empty list, all in memory or all paths; anything else is a DataError."""
    if isinstance(images_or_paths, (str, os.PathLike, Image.Image)):
        return [images_or_paths]
    if not isinstance(images_or_paths, Iterable):
        raise DataError(f"predict: cannot read images from {type(images_or_paths).__name__}; "
                        f"give {WHAT_PREDICT_TAKES}")
    items = list(images_or_paths)
    if not items:
        raise DataError(f"predict: no images given (an empty {type(images_or_paths).__name__}); "
                        f"give at least one of {WHAT_PREDICT_TAKES}")
    for index, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike, *IN_MEMORY)):
            raise DataError(f"predict: item {index} is a {type(item).__name__}; give {WHAT_PREDICT_TAKES}")
    in_memory = [isinstance(item, IN_MEMORY) for item in items]
    if any(in_memory) and not all(in_memory):
        raise DataError(f"predict: item {in_memory.index(not in_memory[0])} and item 0 are not both paths or both "
                        "images; predict files and in-memory images in separate calls")
    return items


def image_tensor(images, single: bool = False) -> torch.Tensor:
    """uint8 images as a (N, 28, 28) tensor (a (28, 28) one when `single`), else a DataError saying how to fix them."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise DataError(f"predict: images of NumPy dtype {images.dtype}; give uint8 pixels 0..255 "
                            "(from floats in 0..1: (images * 255).round().astype(numpy.uint8))")
        images = torch.from_numpy(np.ascontiguousarray(images))
    shape = tuple(images.shape)
    if images.dtype != torch.uint8:
        raise DataError(f"predict: images of dtype {images.dtype}; give uint8 pixels 0..255 "
                        "(from floats in 0..1: (images * 255).round().to(torch.uint8))")
    if shape[-2:] != (28, 28) or images.dim() not in ((2,) if single else (2, 3)):
        wanted = "(28, 28)" if single else "(28, 28) or (N, 28, 28)"
        raise DataError(f"predict: images of shape {shape}; give {wanted} grayscale images "
                        "(drop a channel dimension with .squeeze(); resize other sizes, or pass PIL images)")
    images = images if single or images.dim() == 3 else images.unsqueeze(0)
    if images.numel() == 0:
        raise DataError(f"predict: no images given (a tensor of shape {shape}); give at least one")
    return images.cpu()


def model_to_use(model_or_run) -> nn.Module:
    """A network as given, or the trained model of a run folder or checkpoint path."""
    if isinstance(model_or_run, nn.Module):
        return model_or_run
    if not isinstance(model_or_run, (str, os.PathLike)):
        raise CheckpointError(f"predict: the model is a {type(model_or_run).__name__}; give a TrainedModel "
                              "(load_model), a network, or a run folder or checkpoint path")
    return load_model(model_or_run)


def check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"predict: batch_size={batch_size!r}; give a whole number of images, at least 1",
                          "batch_size")


def chunks(iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class CheckpointEvaluation:
    path: Path
    state: dict
    model: TrainedModel
    test_split: Split
    result: EvalResult
    data_dir: Path
    data_verified: bool
    # {"temperature", "before": measures of the raw probabilities, "after": of the scaled ones (None
    # without a temperature)}; a measure is ECE, Brier score, NLL and reliability bins (training/calibration.py).
    calibration: dict | None = None


def evaluate_checkpoint(
    checkpoint: str | os.PathLike, data_dir: str | None = None, device: str = "auto",
    batch_size: int = EVAL_BATCH_SIZE, allow_unverified_data: bool = False, calibrate: bool = True,
) -> CheckpointEvaluation:
    """A checkpoint's model on the test split, normalized and (flip TTA) evaluated as in its training.

    The loss is the cross-entropy of the raw logits, as in training; the result's probabilities are
    the temperature-scaled ones when the run has a temperature and `calibrate` (see load_model).
    """
    path = checkpoint_path(checkpoint)
    state = load_checkpoint(path)
    model = load_model(path, device, calibrate)
    directory = find_data_dir(data_dir or state["config"].get("data_dir"))
    problems = unverified_files(directory)
    if problems and not allow_unverified_data:
        raise problems[0]
    device_of_model = next(model.parameters()).device
    test_split = read_split(directory, "test").to(device_of_model)
    loader = TensorLoader(test_split, batch_size, mean=model.mean, std=model.std)
    result = evaluate(model, loader)
    if not torch.isfinite(torch.tensor(result.loss)):
        raise CheckpointError(f"{path}: the model's output is not finite (NaN or infinite weights?); "
                              "use a checkpoint from before the loss diverged")
    calibration = calibration_of(model, result)
    return CheckpointEvaluation(path, state, model, test_split, result, directory, not problems, calibration)


def calibration_of(model: TrainedModel, result: EvalResult) -> dict:
    """The result's calibration measures, before and after the model's temperature (if any); the result's
    probabilities become the scaled ones, what predict gives for the same images."""
    measured = calibration_record(result.probabilities, result.labels, model.temperature)
    if model.temperature is not None:
        result.probabilities = scaled_probabilities(result.probabilities, model.temperature)
    return measured
