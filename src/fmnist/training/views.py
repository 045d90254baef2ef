"""Test-time views: the same images seen a few ways, whose logits are averaged into one opinion.

A network trained on mirrored images (--hflip) has learned both sides of a garment, and one trained on
images moved by a pixel (--crop-padding) has learned them a pixel off too: asked about each such view
of a test image, it errs less often than asked about the image alone (BENCHMARKS.md measures how much).
The views cost evaluation time only, never training steps.
"""

from __future__ import annotations

import torch
from torch.nn import functional

# One pixel in each of the eight directions, (rows, columns): down is +1 rows, right is +1 columns.
ONE_PIXEL_SHIFTS = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, 1), (-1, 1), (1, -1))


def shifted(images: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """(N, C, H, W) images moved by up to one pixel down (`rows` > 0) and right (`columns` > 0).

    The row or column uncovered at the edge repeats its neighbour: in Fashion-MNIST the edge is
    background, and a garment that touches the edge continues instead of being cut by a black line.
    """
    if not (abs(rows) <= 1 and abs(columns) <= 1):
        raise ValueError(f"shifted: moves of one pixel at most, not ({rows}, {columns})")
    height, width = images.shape[-2:]
    padded = functional.pad(images, (1, 1, 1, 1), mode="replicate")
    return padded[..., 1 - rows:1 - rows + height, 1 - columns:1 - columns + width]


def view_logits(model: torch.nn.Module, images: torch.Tensor, flip: bool, shifts: bool) -> torch.Tensor:
    """The mean of the model's logits over the views asked for: the images themselves, with `shifts`
    also each one-pixel shift of them, and with `flip` each of those mirrored left-right as well."""
    views = [images]
    if shifts:
        views += [shifted(images, rows, columns) for rows, columns in ONE_PIXEL_SHIFTS]
    if flip:
        views += [view.flip(3) for view in views]
    total = model(views[0])
    for view in views[1:]:
        total = total + model(view)
    return total / len(views)
