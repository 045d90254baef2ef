"""Any image file -> the kind of input the model was trained on.

Fashion-MNIST items are light on a black background, centred, and fill a 28x28 frame. A photo or
a drawing rarely is, so `fmnist predict` and `fmnist serve` turn an image (a file, or the bytes of
an upload) into that form in four steps:

0. decode safely: at most MAX_PIXELS pixels (an image "bomb" of 12,000 x 12,000 is refused before
   it is decoded), large JPEGs decoded at a reduced size, and EXIF orientation applied (a photo
   stored sideways is turned upright, as viewers show it);
1. grayscale: colour, palette, LAB, transparency (laid on white, as a viewer shows it) and 16-bit or
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

import io
import warnings
from pathlib import Path
from struct import error as struct_error
from typing import BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fmnist.data.fashion import IMAGE_SIZE
from fmnist.data.loader import scale_batch
from fmnist.errors import DataError, one_line_reason

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "GIF")  # the same formats, as Pillow names its decoders
LIGHT_BACKGROUND = 128  # border mean above this (0..255) counts as a light background
# 40 megapixels: any photo a phone takes, far below Pillow's own limit of 179 M (which still decodes
# 4 GB for a 16-bit bomb). Every image ends up 28x28, so nothing is lost by refusing more.
MAX_PIXELS = 40_000_000
# JPEGs can be decoded at 1/2, 1/4 or 1/8 size for free; anything at least this large is.
DRAFT_SIZE = (4 * IMAGE_SIZE, 4 * IMAGE_SIZE)


def read_image(path: Path) -> Image.Image:
    """Open and decode an image file (the first frame of an animation), or raise a one-line DataError."""
    return decode_image(path, str(path))


def read_image_bytes(data: bytes, name: str, formats: tuple[str, ...] | None = None) -> Image.Image:
    """The same for an image held in memory (an upload), called `name` in errors.

    `formats` limits the decoders Pillow may try (Pillow's format names, e.g. IMAGE_FORMATS): a server
    should not hand a stranger's bytes to every decoder Pillow has.
    """
    return decode_image(io.BytesIO(data), name, formats)


def decode_image(source: Path | BinaryIO, name: str, formats: tuple[str, ...] | None = None) -> Image.Image:
    """Step 0 for a path or an open binary file: the decoded image, or a one-line DataError naming `name`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, lower cap decides
            with Image.open(source, formats=formats) as image:
                width, height = image.size
                if width * height > MAX_PIXELS:
                    raise DataError(f"{name}: {width} x {height} pixels is more than fmnist reads "
                                    f"({MAX_PIXELS // 1_000_000} megapixels); scale it down first")
                if image.format == "JPEG":
                    image.draft(image.mode, DRAFT_SIZE)  # decode reduced: a 12 MP photo costs 1/64 of the work
                image.load()  # decode now, inside the try: a truncated file fails here, not later
                return ImageOps.exif_transpose(image)
    except DataError:
        raise
    except Image.DecompressionBombError:  # Pillow's own limit, far above ours: the same answer
        raise DataError(f"{name}: more pixels than fmnist reads ({MAX_PIXELS // 1_000_000} megapixels); "
                        "scale it down first") from None
    except FileNotFoundError:
        raise DataError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{name}: a folder, not an image") from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image Pillow can read (PNG, JPEG, BMP, WebP or GIF)") from None
    except (OSError, ValueError, SyntaxError, struct_error) as error:
        reason = one_line_reason(error)
        raise DataError(f"{name}: cannot decode the image ({reason})") from None


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Any Pillow mode -> uint8 (H, W) gray."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        # Wide-range pixels: stretch the image's own range onto 0..255 (Pillow's "L" would clip).
        pixels = np.asarray(image, dtype=np.float64)
        low, high = float(pixels.min()), float(pixels.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        return np.round((pixels - low) * scale).astype(np.uint8)
    if image.mode == "LAB":
        return np.asarray(image.getchannel(0), dtype=np.uint8)  # L is lightness already
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
    try:
        gray = to_grayscale(image)
    except (ValueError, OSError) as error:  # a mode Pillow cannot convert to gray
        raise DataError(f"an image in mode {image.mode} cannot be made gray ({one_line_reason(error)})") from None
    if invert and has_light_background(gray):
        gray = 255 - gray
    fitted = ImageOps.pad(
        Image.fromarray(gray), (IMAGE_SIZE, IMAGE_SIZE), method=Image.Resampling.LANCZOS, color=0
    )
    return torch.from_numpy(np.array(fitted, dtype=np.uint8))


def image_batch(images: list[torch.Tensor], mean: float, std: float) -> torch.Tensor:
    """Step 4: (28, 28) images, uint8 or float on the 0..255 scale -> the normalized float (N, 1, 28, 28) batch."""
    return scale_batch(torch.stack(images), mean, std)  # checked by the callers: uint8 or floats already scaled


def image_files(paths: list[str | Path]) -> list[Path]:
    """The files to predict: each path as given, or a folder's image files (by suffix) in name order.

    A file named twice (also directly, and inside a folder given too) is read once.
    """
    files: list[Path] = []
    seen: set[Path] = set()
    for path in map(Path, paths):
        if path.is_dir():
            images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            candidates = images or [path]  # an empty folder stays, to be reported as such
        else:
            candidates = [path]
        for candidate in candidates:
            key = candidate.resolve() if candidate.exists() else candidate
            if key not in seen:
                seen.add(key)
                files.append(candidate)
    return files


def display_path(path: Path) -> str:
    """A path as text any terminal encoding can show: undecodable bytes of a file name become '?'."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
