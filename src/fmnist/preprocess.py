"""Any image file -> the kind of input the model was trained on.

Fashion-MNIST items are light on a black background, centred, and fill a 28x28 frame. A photo or
a drawing rarely is, so `fmnist predict` turns an image into that form in four steps:

1. grayscale: colour, palette, transparency (laid on white, as a viewer shows it) and 16-bit or
   float pixels all become 8-bit gray;
2. invert when the background is light: the mean of the outermost pixels decides, because the
   border of a product picture is its background (`invert=False` turns this off);
3. fit into 28x28 keeping the aspect ratio (the longer side becomes 28 pixels) and pad the
   shorter side with black, centred;
4. normalize with the mean and std the model was trained with (loader.normalize, values from
   the checkpoint's config), exactly as training batches are.

A Fashion-MNIST image saved as a 28x28 PNG comes out of steps 1-3 unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist.data import IMAGE_SIZE
from fmnist.errors import DataError, one_line_reason
from fmnist.loader import normalize

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
LIGHT_BACKGROUND = 128  # border mean above this (0..255) counts as a light background


def read_image(path: Path) -> Image.Image:
    """Open and decode an image file (the first frame of an animation), or raise a one-line DataError."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now, inside the try: a truncated file fails here, not later
            return image.copy()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, not an image") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read (PNG, JPEG, BMP, WebP or GIF)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        reason = one_line_reason(error)
        raise DataError(f"{path}: cannot decode the image ({reason})") from None


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 (H, W) gray."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # Wide-range pixels: stretch the image's own range onto 0..255 (Pillow's "L" would clip).
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return np.round((pixels - low) * scale).astype(np.uint8)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        on_white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(on_white, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.uint8)


def has_light_background(gray: np.ndarray) -> bool:
    """True when the outermost rows and columns are light on average."""
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    return float(border.mean()) > LIGHT_BACKGROUND


def to_fashion_mnist(image: Image.Image, invert: bool = True) -> torch.Tensor:
    """Steps 1-3: an image -> uint8 (28, 28), light item on black, centred."""
    gray = to_grayscale(image)
    if invert and has_light_background(gray):
        gray = 255 - gray
    fitted = ImageOps.pad(
        Image.fromarray(gray), (IMAGE_SIZE, IMAGE_SIZE), method=Image.Resampling.LANCZOS, color=0
    )
    return torch.from_numpy(np.array(fitted, dtype=np.uint8))


def image_batch(images: list[torch.Tensor], mean: float, std: float) -> torch.Tensor:
    """Step 4: uint8 (28, 28) images -> the normalized float (N, 1, 28, 28) batch the model takes."""
    return normalize(torch.stack(images), mean, std)


def image_files(paths: list[str | Path]) -> list[Path]:
    """The files to predict: each path as given, or a folder's image files (by suffix) in name order."""
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            files.extend(images or [path])  # an empty folder stays, to be reported as such
        else:
            files.append(path)
    return files
