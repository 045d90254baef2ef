"""What the model looked at: an attribution map per image, and the image drawn with its map over it.

The map is SmoothGrad (Smilkov et al., 2017) through Captum, PyTorch's interpretability library:
the gradient of the predicted class's probability with respect to each pixel, in absolute value,
averaged over a few copies of the image with a little noise added (plain gradients are speckled;
the average keeps what is stable). Why this method:

- it passes the model-randomization sanity check (Adebayo et al., NeurIPS 2018): its maps depend on
  the weights. Integrated gradients and occlusion from a black image give every black pixel (half of
  a Fashion-MNIST image) zero attribution whatever the weights, so their maps of a trained and of a
  random network partly agree by construction;
- it works for every model of the zoo (the MLP has no convolution for Grad-CAM to look at) and
  through flip test-time augmentation (the gradient flows through both views);
- it costs SMOOTHGRAD_SAMPLES forward and backward passes per image, in batches: `fmnist predict
  --explain` on 100 images stays within twice the time of `fmnist predict` (BENCHMARKS.md).

Bright means: changing this pixel would change the model's answer most. It is not "the part of the
image that is a sandal"; docs/calibration-and-explanations.md explains how to read the maps.
This needs the optional extra: `pip install 'fmnist[explain]'` (captum).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from fmnist.data.fashion import CLASS_NAMES, MEAN, STD
from fmnist.data.images import image_batch
from fmnist.errors import CheckpointError, ConfigError
from fmnist.files import atomic_write_bytes, check_writable

SMOOTHGRAD_SAMPLES = 4  # noisy copies per image: a steadier map than one gradient, at 4x its cost (docstring)
SMOOTHGRAD_NOISE = 0.15  # noise std as a share of the normalized images' range (Smilkov et al.: 10-20%)
NOISE_SEED = 0  # the same image gets the same map every time
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
    """SmoothGrad maps (N, 28, 28), each scaled to [0, 1], of uint8 images (N, 28, 28).

    `targets`: the class to explain per image (default: the predicted one). `model` is a
    TrainedModel (its normalization is used) or a network (Fashion-MNIST's).
    """
    require_captum()
    from captum.attr import NoiseTunnel, Saliency

    mean, std = getattr(model, "mean", MEAN), getattr(model, "std", STD)
    parameter = next(model.parameters())
    batch = image_batch(list(images), mean, std).to(parameter.device).contiguous(memory_format=torch.channels_last)
    model.eval()
    if targets is None:
        with torch.inference_mode():
            targets = model(batch).argmax(dim=1).tolist()
    spread = SMOOTHGRAD_NOISE * (batch.amax() - batch.amin()).item()
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(NOISE_SEED)  # captum draws the noise with torch's global generator
    try:
        tunnel = NoiseTunnel(Saliency(ProbabilityOf(model)))
        maps = tunnel.attribute(batch.clone().requires_grad_(), nt_type="smoothgrad", nt_samples=SMOOTHGRAD_SAMPLES,
                                nt_samples_batch_size=1, stdevs=spread,
                                target=list(targets), abs=True)
    finally:
        torch.random.set_rng_state(generator_state)
    maps = maps.detach().float().cpu().reshape(len(batch), *batch.shape[2:])
    peak = maps.flatten(1).amax(dim=1).clamp(min=1e-12).reshape(-1, 1, 1)
    return (maps / peak).numpy()


class ProbabilityOf(nn.Module):
    """The model's class probabilities: the map explains the probability shown, not a raw logit."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        temperature = getattr(self.model, "temperature", None) or 1.0
        return torch.softmax(self.model(images).float() / temperature, dim=1)


# ---------------------------------------------------------------- drawing


def heat_colours(attribution: np.ndarray) -> np.ndarray:
    """A [0, 1] map as RGB uint8 in matplotlib's "inferno" (dark = no influence, yellow = most)."""
    from matplotlib import colormaps

    return (colormaps["inferno"](attribution)[..., :3] * 255).astype(np.uint8)


def overlay(image: np.ndarray, attribution: np.ndarray, caption: str) -> Image.Image:
    """The image as the model saw it, beside it the same image with its map blended over, and a caption."""
    size = image.shape[0] * SCALE
    gray = Image.fromarray(image, mode="L").resize((size, size), Image.NEAREST).convert("RGB")
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
