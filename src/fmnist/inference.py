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

from fmnist.arguments import check_bool, check_path, shown
from fmnist.data.fashion import CLASS_NAMES, IMAGE_SIZE, MEAN, NUM_CLASSES, STD
from fmnist.data.images import IMAGE_SUFFIXES, display_path, image_batch, image_files, read_image, to_fashion_mnist
from fmnist.data.loader import TensorLoader
from fmnist.data.locate import find_data_dir
from fmnist.data.splits import Split, read_split
from fmnist.data.verify import unverified_files
from fmnist.errors import CheckpointError, ConfigError, DataError, one_line_reason
from fmnist.runs.calibration import run_temperature
from fmnist.runs.checkpoint import (
    checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
    normalization,
    trained_with_flip_tta,
    trained_with_shift_tta,
)
from fmnist.training.calibration import calibration_record, scaled_probabilities
from fmnist.training.config import EVAL_BATCH_SIZE
from fmnist.training.loop import EvalResult, evaluate, predict_logits
from fmnist.training.runtime import resolve_device


class TrainedModel(nn.Module):
    """A trained network with what using it takes: its input normalization and its evaluation mode.

    Call it on normalized (N, 1, 28, 28) images for logits, as the network itself; a run trained
    with --tta-flip also averages each image with its mirror image here, as its test accuracy did, and
    one trained with --tta-shift its one-pixel shifts (`shift_tta`).
    `info` holds the checkpoint's model name, epoch, recipe and path. `temperature` is the run's fitted
    temperature (runs/calibration.py), or None: probabilities are softmax(logits / temperature)
    wherever they come out (class_probabilities, evaluate_checkpoint, export); the logits stay raw.
    """

    def __init__(self, network: nn.Module, mean: float, std: float, flip_tta: bool, info: dict,
                 temperature: float | None = None, shift_tta: bool = False):
        super().__init__()
        self.network = network
        self.mean = mean
        self.std = std
        self.flip_tta = flip_tta
        self.shift_tta = shift_tta
        self.info = info
        self.temperature = temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return predict_logits(self.network, images, self.flip_tta, self.shift_tta)


def load_model(source: str | os.PathLike, device: str = "cpu", calibrate: bool = True) -> TrainedModel:
    """The trained model of a run folder (its best.pt, else last.pt) or of a checkpoint file, in eval mode.

    With `calibrate`, the run's temperature (calibration.json) is applied to its probabilities;
    `calibrate=False` keeps the raw ones.
    """
    path = checkpoint_argument(source, "load_model", "source")
    torch_device = device_argument(device, "load_model")
    check_bool(calibrate, "calibrate", "load_model")
    state = load_checkpoint(path)
    network = model_from_checkpoint(state, path)
    mean, std = normalization(state)
    info = {"model": state["model_name"], "epoch": state["epoch"], "recipe": state["config"].get("recipe"),
            "checkpoint": str(path)}
    temperature = run_temperature(path, state["model_name"], state["epoch"]) if calibrate else None
    model = TrainedModel(network, mean, std, trained_with_flip_tta(state), info, temperature,
                         shift_tta=trained_with_shift_tta(state))
    return model.to(device=torch_device, memory_format=torch.channels_last).eval()


def checkpoint_argument(source, function: str, argument: str) -> Path:
    """A run folder or checkpoint path given to `function`, else a CheckpointError naming the argument."""
    if isinstance(source, bool) or not isinstance(source, (str, os.PathLike)) or not str(source) \
            or "\x00" in str(source):
        raise CheckpointError(f"{function}({argument}={shown(source)}): not a path; give a run folder or a "
                              "checkpoint file (a str or a Path)")
    return checkpoint_path(source)


def run_folder_argument(run_dir, function: str) -> Path:
    """A run folder given to `function`: a path (else ArgumentTypeError) to a folder (else CheckpointError)."""
    path = check_path(run_dir, "run_dir", function)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such run folder; give the folder that `fmnist train` printed")
    return path


def evaluation_arguments(function: str, data_dir, device, batch_size, **switches) -> None:
    """The arguments a function that evaluates a run takes beside it, checked before anything is loaded."""
    if data_dir is not None and (isinstance(data_dir, bool) or not isinstance(data_dir, (str, os.PathLike))):
        raise DataError(f"{function}(data_dir={shown(data_dir)}): give the data folder (a str or a Path), "
                        "or None to find it")
    check_batch_size(batch_size, function)
    for name, value in switches.items():
        check_bool(value, name, function)
    device_argument(device, function)


def device_argument(device, function: str) -> torch.device:
    """The device `function` was given, named as its argument (`load_model(device='tpu')`, or `--device tpu`)."""
    return resolve_device(device, owner=function)


@dataclass(repr=False)
class Prediction:
    """The class probabilities for one image; `error` instead when the file could not be read."""

    source: str  # the file's path, or "image N" for an array or tensor
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

    def __repr__(self) -> str:
        if self.error is not None:
            return f"Prediction({self.source!r}, error={self.error!r})"
        return f"Prediction({self.source!r}, {self.class_name} {self.probability:.3f})"


class Predictions(list):
    """What predict returns: one Prediction per image, in order, and the same as NumPy arrays:
    `probabilities` (N, 10) float32 and `labels` (N,) int64. An image that could not be read
    (skip_unreadable) has a row of NaN and the label -1."""

    def __init__(self, predictions: list[Prediction], probabilities: np.ndarray):
        super().__init__(predictions)
        self.probabilities = probabilities
        readable = ~np.isnan(probabilities).any(axis=1)
        self.labels = np.where(readable, np.nan_to_num(probabilities, nan=-1.0).argmax(axis=1), -1).astype(np.int64)

    @property
    def class_names(self) -> list[str | None]:
        return [CLASS_NAMES[label] if label >= 0 else None for label in self.labels]

    def __repr__(self) -> str:
        shown = ", ".join(repr(prediction) for prediction in list.__getitem__(self, slice(0, 3)))
        more = f", ... {len(self) - 3} more" if len(self) > 3 else ""
        return f"Predictions({len(self)} images: {shown}{more})"


def predict(
    model_or_run: nn.Module | str | os.PathLike,
    images_or_paths,
    *,
    invert: bool = True,
    skip_unreadable: bool = False,
    batch_size: int = EVAL_BATCH_SIZE,
) -> Predictions:
    """Class probabilities for images: arrays, tensors, PIL images, image files or folders of them.

    Arrays and tensors (NumPy or torch) may be one image (28, 28) or a batch (N, 28, 28),
    (N, 1, 28, 28) or (N, 28, 28, 1), of uint8 pixels 0..255 or floats in [0, 1], light on black as
    in Fashion-MNIST. `model_or_run` is a TrainedModel, a run folder or checkpoint path, or a plain
    network (then normalized with Fashion-MNIST's mean and std). Files and PIL images are made to look
    like Fashion-MNIST first (data/images.py; `invert=False` keeps their colours as they are). An
    unreadable file raises DataError, or with `skip_unreadable` comes back as a Prediction with
    `error` set. Images go through the model in batches, so memory stays flat however many there are.
    Returns Predictions: a list of Prediction with `.labels` (N,) and `.probabilities` (N, 10) arrays.
    """
    check_flag(invert, "invert")
    check_flag(skip_unreadable, "skip_unreadable")
    check_batch_size(batch_size)
    model = model_to_use(model_or_run)
    predictions, rows = [], []
    for chunk in chunks(prepare(images_or_paths, invert, skip_unreadable), batch_size):
        readable = [image for _, image in chunk if isinstance(image, torch.Tensor)]
        probabilities = iter(probability_rows(model, readable) if readable else [])
        for source, image in chunk:
            if isinstance(image, DataError):
                predictions.append(Prediction(source, error=display_path(Path(str(image)))))
                rows.append(np.full(NUM_CLASSES, np.nan, dtype=np.float32))
            else:
                row = next(probabilities)
                predictions.append(Prediction(source, row.tolist()))
                rows.append(row.numpy())
    return Predictions(predictions, np.stack(rows))


def check_flag(value, name: str) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"predict({name}={shown(value)}): give True or False", name)


def class_probabilities(model: nn.Module, images: list[torch.Tensor]) -> list[list[float]]:
    """Softmax over the classes for (28, 28) images, uint8 or float on the 0..255 scale, as lists (serve)."""
    return probability_rows(model, images).tolist()


def probability_rows(model: nn.Module, images: list[torch.Tensor]) -> torch.Tensor:
    """Softmax over the classes (N, 10) on the CPU for (28, 28) images, uint8 or float on the 0..255
    scale, normalized as the model was trained."""
    mean, std = getattr(model, "mean", MEAN), getattr(model, "std", STD)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    batch = image_batch(images, mean, std).to(device).contiguous(memory_format=torch.channels_last)
    model.eval()
    try:
        with torch.inference_mode():
            logits = model(batch)
    except (RuntimeError, TypeError, ValueError, IndexError) as error:  # a network not made for 28x28 images
        raise CheckpointError(f"predict(model_or_run={type(model).__name__}): the model fails on (N, 1, 28, 28) "
                              f"images ({one_line_reason(error)}); give a model trained on Fashion-MNIST") from None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (len(images), NUM_CLASSES):
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise CheckpointError(f"predict(model_or_run={type(model).__name__}): the model answers {shape} for "
                              f"{len(images)} images, not ({len(images)}, {NUM_CLASSES}) class scores")
    # A TrainedModel with a fitted temperature gives its calibrated probabilities (runs/calibration.py).
    temperature = getattr(model, "temperature", None) or 1.0
    probabilities = torch.softmax(logits.float() / temperature, dim=1).cpu()
    if not torch.isfinite(probabilities).all():
        raise CheckpointError("the model's output is not finite (NaN or infinite weights?); "
                              "it cannot classify anything: use a checkpoint from before the loss diverged")
    return probabilities


IN_MEMORY = (torch.Tensor, np.ndarray, Image.Image)
WHAT_PREDICT_TAKES = ("image files or folders (str or Path), PIL images, or tensors or NumPy arrays of shape "
                      "(28, 28), (N, 28, 28), (N, 1, 28, 28) or (N, 28, 28, 1), uint8 0..255 or float in [0, 1]")


def prepare(images_or_paths, invert: bool, skip_unreadable: bool) -> Iterator[tuple[str, torch.Tensor | DataError]]:
    """(source, float32 (28, 28) image on the 0..255 scale, or the DataError that reading it raised), lazily."""
    if isinstance(images_or_paths, (torch.Tensor, np.ndarray)):
        for index, image in enumerate(pixel_batch(images_or_paths)):
            yield f"image {index}", image
        return
    items = given_items(images_or_paths)
    if all(isinstance(item, IN_MEMORY) for item in items):
        for index, item in enumerate(items):
            if isinstance(item, Image.Image):
                image = pil_pixels(item, invert, f"item {index}")
            else:
                image = pixel_batch(item, single=True, what=f"item {index}")[0]
            yield f"image {index}", image
        return
    for path in image_files(items):
        try:
            if path.is_dir():  # image_files() keeps a folder only when it holds no image
                raise DataError(f"{path}: a folder with no image files ({', '.join(IMAGE_SUFFIXES)})")
            yield display_path(path), pil_pixels(read_image(path), invert, display_path(path))
        except DataError as error:
            if not skip_unreadable:
                raise
            yield display_path(path), error


def images_error(text: str) -> DataError:
    """A DataError about predict's images, naming the argument."""
    return DataError(f"predict(images_or_paths): {text}")


def pil_pixels(image: Image.Image, invert: bool, what: str) -> torch.Tensor:
    if image.width < 1 or image.height < 1:
        raise images_error(f"{what} is an image of {image.width}x{image.height} pixels; give one with pixels")
    return to_fashion_mnist(image, invert).float()


def given_items(images_or_paths) -> list:
    """The images or paths as a non-empty list, all in memory or all paths; anything else is a DataError."""
    if isinstance(images_or_paths, (str, os.PathLike, Image.Image)):
        images_or_paths = [images_or_paths]
    if not isinstance(images_or_paths, Iterable) or isinstance(images_or_paths, (bytes, bytearray, dict)):
        raise images_error(f"cannot read images from {type(images_or_paths).__name__}; "
                        f"give {WHAT_PREDICT_TAKES}")
    items = list(images_or_paths)
    if not items:
        raise images_error(f"no images given (an empty {type(images_or_paths).__name__}); "
                        f"give at least one of {WHAT_PREDICT_TAKES}")
    for index, item in enumerate(items):
        if not isinstance(item, (str, os.PathLike, *IN_MEMORY)):
            raise images_error(f"item {index} is a {type(item).__name__}; give {WHAT_PREDICT_TAKES}")
        if isinstance(item, str) and (not item or "\x00" in item):
            raise images_error(f"item {index} is {shown(item)}, not a usable path; give {WHAT_PREDICT_TAKES}")
    in_memory = [isinstance(item, IN_MEMORY) for item in items]
    if any(in_memory) and not all(in_memory):
        raise images_error(f"item {in_memory.index(not in_memory[0])} and item 0 are not both paths or both "
                        "images; predict files and in-memory images in separate calls")
    return items


FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def pixel_batch(images, single: bool = False, what: str = "images") -> torch.Tensor:
    """Images as a float32 (N, 28, 28) tensor on the 0..255 scale, else a DataError saying how to fix them.

    Takes uint8 pixels or floats in [0, 1]; a channel axis of size 1 before or after the pixels; one
    image (28, 28) too. `single`: an item of a list, so one image: (28, 28), (1, 28, 28) or (28, 28, 1).
    """
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 and images.dtype.kind != "f":
            raise images_error(f"{what} of NumPy dtype {images.dtype}; give uint8 pixels 0..255 or floats "
                            "in [0, 1] (from other integers: images.astype(numpy.uint8))")
        # Native byte order, and floats as float64 (torch has no float128): from_numpy takes only some dtypes.
        images = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8 if images.dtype == np.uint8
                                                       else np.float64))
    if images.dtype != torch.uint8 and images.dtype not in FLOAT_DTYPES:
        raise images_error(f"{what} of dtype {images.dtype}; give uint8 pixels 0..255 or floats in [0, 1] "
                        "(from other integers: images.to(torch.uint8))")
    shape = tuple(images.shape)
    batch = to_batch_shape(images.detach())
    if batch is None or (single and len(batch) != 1):
        wanted = "(28, 28), (1, 28, 28) or (28, 28, 1)" if single else \
            "(28, 28), (N, 28, 28), (N, 1, 28, 28) or (N, 28, 28, 1)"
        raise images_error(f"{what} of shape {shape}; give {wanted} grayscale images "
                        "(resize other sizes, or pass PIL images)")
    if batch.numel() == 0:
        raise images_error(f"no images given (a tensor of shape {shape}); give at least one")
    batch = batch.cpu()
    if batch.dtype == torch.uint8:
        return batch.float()
    return float_pixels(batch, what).float()  # the range checked in the given precision, then float32


def to_batch_shape(images: torch.Tensor) -> torch.Tensor | None:
    """(N, 28, 28) from any layout predict takes, or None."""
    size = (IMAGE_SIZE, IMAGE_SIZE)
    shape = tuple(images.shape)
    if shape == size:
        return images.unsqueeze(0)
    if len(shape) == 3 and shape[1:] == size:
        return images
    if shape == (*size, 1):  # one image in Keras' layout
        return images.permute(2, 0, 1)
    if len(shape) == 4 and shape[1] == 1 and shape[2:] == size:  # PyTorch's (N, C, H, W)
        return images[:, 0]
    if len(shape) == 4 and shape[3] == 1 and shape[1:3] == size:  # Keras' (N, H, W, C)
        return images[..., 0]
    return None


def float_pixels(images: torch.Tensor, what: str) -> torch.Tensor:
    """Float pixels in [0, 1] on the 0..255 scale normalize() takes."""
    if not torch.isfinite(images).all():
        raise images_error(f"{what} hold NaN or infinite pixels; give uint8 pixels 0..255 or floats in [0, 1]")
    low, high = images.min().item(), images.max().item()
    if low < 0 or high > 1:
        hint = " (pixels 0..255: pass them as uint8, e.g. images.astype(numpy.uint8))" if high > 1 else ""
        raise images_error(f"float {what} range from {low:g} to {high:g}; give floats in [0, 1]{hint}")
    return images * 255.0


def model_to_use(model_or_run) -> nn.Module:
    """A network as given, or the trained model of a run folder or checkpoint path."""
    if isinstance(model_or_run, nn.Module):
        return model_or_run
    if isinstance(model_or_run, bool) or not isinstance(model_or_run, (str, os.PathLike)):
        raise CheckpointError(f"predict(model_or_run={shown(model_or_run)}): the model is a "
                              f"{type(model_or_run).__name__}; give a TrainedModel (load_model), a network, or a "
                              "run folder or checkpoint path")
    return load_model(checkpoint_argument(model_or_run, "predict", "model_or_run"))


def check_batch_size(batch_size, function: str = "predict") -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"{function}(batch_size={shown(batch_size)}): give a whole number of images, at least 1",
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


@dataclass(repr=False)
class CheckpointEvaluation:
    """A checkpoint's model on the test split: `result` (an EvalResult: loss, accuracy, and per image the
    prediction, label and class probabilities), the checkpoint's `state`, the `model` and the data used."""

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

    @property
    def accuracy(self) -> float:
        return self.result.accuracy

    @property
    def loss(self) -> float:
        return self.result.loss

    @property
    def probabilities(self) -> np.ndarray:
        """(N, 10) float32: each test image's class probabilities."""
        return self.result.probabilities.numpy()

    @property
    def labels(self) -> np.ndarray:
        """(N,) the test images' true classes."""
        return self.result.labels.numpy()

    @property
    def predictions(self) -> np.ndarray:
        """(N,) the predicted classes."""
        return self.result.predictions.numpy()

    def __repr__(self) -> str:  # the state holds every weight: never print it
        return (f"CheckpointEvaluation({str(self.path)!r}, {self.state['model_name']} epoch {self.state['epoch']}, "
                f"accuracy={self.accuracy:.4f}, loss={self.loss:.4f}, images={len(self.result.labels):,})")


def evaluate_checkpoint(
    checkpoint: str | os.PathLike, data_dir: str | os.PathLike | None = None, device: str = "auto",
    batch_size: int = EVAL_BATCH_SIZE, allow_unverified_data: bool = False, calibrate: bool = True,
) -> CheckpointEvaluation:
    """A checkpoint's model on the test split, normalized and (flip TTA) evaluated as in its training.

    The loss is the cross-entropy of the raw logits, as in training; the result's probabilities are
    the temperature-scaled ones when the run has a temperature and `calibrate` (see load_model).
    """
    path = checkpoint_argument(checkpoint, "evaluate_checkpoint", "checkpoint")
    evaluation_arguments("evaluate_checkpoint", data_dir, device, batch_size,
                         allow_unverified_data=allow_unverified_data, calibrate=calibrate)
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
