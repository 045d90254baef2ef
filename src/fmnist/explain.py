"""What the model looked at: an attribution map per image, and the image drawn with its map over it.

The map is the gradient of the predicted class's logit with respect to each pixel, in absolute value
("vanilla gradient", Simonyan et al. 2014), through Captum, PyTorch's interpretability library. Bright
means: a small change to this pixel would change the model's score for its answer most. Why this one:

- it passes the model-randomization sanity check (Adebayo et al., NeurIPS 2018) clearly: on generated
  test data its maps of a trained network and of the same network re-initialised have a mean Spearman
  rank correlation of 0.17, against 0.93 for the trained weights perturbed by 1% (tests/test_explain.py).
  The others measured there did worse: integrated gradients from a black image 0.49 (every black pixel
  gets zero attribution whatever the weights), SmoothGrad 0.56 with 16 noisy samples, and with 4 its
  maps of one model under two noise draws agreed only 0.42: the noise, not the model, ranked the pixels;
- it works for every model of the zoo (the MLP has no convolution for Grad-CAM) and through flip
  test-time augmentation (the gradient flows through both views);
- it costs one forward and one backward pass per batch: `fmnist predict --explain` stays within twice
  the time of `fmnist predict` (BENCHMARKS.md).

docs/calibration-and-explanations.md explains how to read the maps. This needs the optional extra:
`pip install 'fmnist[explain]'` (captum).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from fmnist.arguments import check_int, check_module, check_type, invalid, wrong_type
from fmnist.data.fashion import CLASS_NAMES, IMAGE_SIZE, MEAN, NUM_CLASSES, STD
from fmnist.data.images import image_batch
from fmnist.errors import CheckpointError, ConfigError
from fmnist.files import atomic_write_bytes, check_writable

SCALE = 6  # drawn 168x168: 28 pixels are too small to see; larger PNGs take longer to write
INSTALL_EXTRA = "pip install -e '.[explain]' in the fmnist checkout (captum)"


def require_captum() -> None:
    try:
        import captum  # noqa: F401
    except ImportError:
        raise ConfigError(f"attribution maps need captum, which is not installed; {INSTALL_EXTRA}") from None


def captum_available() -> bool:
    try:
        require_captum()
    except ConfigError:
        return False
    return True


def attribution_maps(model: nn.Module, images: torch.Tensor, targets: Sequence[int] | None = None) -> np.ndarray:
    """Gradient maps (N, 28, 28), each scaled to [0, 1], of uint8 images (N, 28, 28).

    `targets`: the class to explain per image (default: the predicted one). `model` is a
    TrainedModel (its normalization and flip TTA are used) or a network (Fashion-MNIST's normalization).
    A temperature divides every logit alike, so it changes no map.
    """
    check_module(model, "model", "attribution_maps")
    check_maps_request(images, targets)
    require_captum()
    from captum.attr import Saliency

    mean, std = getattr(model, "mean", MEAN), getattr(model, "std", STD)
    parameter = next(model.parameters())
    batch = image_batch(list(images), mean, std).to(parameter.device).contiguous(memory_format=torch.channels_last)
    model.eval()
    if targets is None:
        with torch.inference_mode():
            targets = model(batch).argmax(dim=1).tolist()
    maps = Saliency(model).attribute(batch.clone().requires_grad_(), target=list(targets), abs=True)
    maps = maps.detach().float().cpu().reshape(len(batch), *batch.shape[2:])
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12).reshape(-1, 1, 1)
    return (maps / peak).numpy()


def check_maps_request(images, targets) -> None:
    """(N, 28, 28) images, N at least 1, and either no targets or one class index per image."""
    check_type(images, torch.Tensor, "images", "attribution_maps", "a torch.Tensor of images (N, 28, 28)")
    if images.dim() != 3 or tuple(images.shape[1:]) != (IMAGE_SIZE, IMAGE_SIZE) or len(images) == 0:
        raise invalid("images", images, f"give images of shape (N, {IMAGE_SIZE}, {IMAGE_SIZE}), N at least 1",
                      "attribution_maps")
    if targets is None:
        return
    if isinstance(targets, (str, bytes, torch.Tensor)) or not isinstance(targets, Sequence):
        raise wrong_type("targets", targets, "a list of class indices, one per image", "attribution_maps")
    if len(targets) != len(images):
        raise invalid("targets", targets, f"give one class index per image ({len(images)}), not {len(targets)}",
                      "attribution_maps")
    for target in targets:
        check_int(target, "targets", "attribution_maps", minimum=0, maximum=NUM_CLASSES - 1)


# ---------------------------------------------------------------- drawing


def heat_colours(attribution: np.ndarray) -> np.ndarray:
    """A [0, 1] map as RGB uint8 in matplotlib's "inferno" (dark = no influence, yellow = most)."""
    from matplotlib import colormaps

    return (colormaps["inferno"](attribution)[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, attribution: np.ndarray, caption: str) -> Image.Image:
    """The image as the model saw it, beside it the same image with its map blended over, and a caption.
    `image` is uint8 or float on the 0..255 scale (predict prepares images as float32)."""
    size = image.shape[0] * SCALE
    pixels = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    gray = Image.fromarray(pixels, mode="L").resize((size, size), Image.NEAREST).convert("RGB")
    heat = Image.fromarray(heat_colours(attribution), mode="RGB").resize((size, size), Image.BILINEAR)
    blended = Image.blend(gray, heat, 0.6)
    canvas = Image.new("RGB", (2 * size + 8, size + 22), "white")
    canvas.paste(gray, (0, 22))
    canvas.paste(blended, (size + 8, 22))
    ImageDraw.Draw(canvas).text((4, 5), caption, fill="black")
    return canvas


def caption_of(probabilities: Sequence[float]) -> str:
    label = int(np.argmax(probabilities))
    return f"{CLASS_NAMES[label]} {probabilities[label]:.3f}   (left: the input; right: what changed it most)"


def png_bytes(picture: Image.Image) -> bytes:
    import io

    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()


def check_explain_folder(out_dir: str | Path, names: list[str]) -> Path:
    """The folder for --explain: created if missing, writable, and holding none of `names` yet (nothing
    is overwritten); a file in its place, or an unwritable place, is one error line."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"--explain {folder}: a file, not a folder; give a folder for the maps "
                              "(it is created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"--explain {folder}: cannot create the folder ({error.strerror or error}); "
                              "choose a writable place") from None
    check_writable(folder, "--explain")
    taken = [name for name in names if (folder / name).exists()]
    if taken:
        raise CheckpointError(f"--explain {folder}: already holds {taken[0]}" +
                              (f" and {len(taken) - 1} more of the maps' names" if len(taken) > 1 else "") +
                              "; choose an empty folder")
    return folder


def map_file_name(index: int, source: str) -> str:
    """NNNN-<file name>.png: numbered in input order, so two inputs of the same name do not collide."""
    stem = Path(source).stem if source else "image"
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80] or "image"
    return f"{index + 1:04d}-{safe}.png"


def write_maps(folder: Path, names: list[str], images: torch.Tensor, maps: np.ndarray,
               probabilities: Sequence[Sequence[float]]) -> list[Path]:
    """One PNG per image: the image and its map side by side, captioned with the class and its probability."""
    written = []
    for name, image, attribution, row in zip(names, images, maps, probabilities, strict=True):
        path = folder / name
        atomic_write_bytes(path, png_bytes(overlay(image.numpy(), attribution, caption_of(row))))
        written.append(path)
    return written
