"""A first conv whose filters start from the data: the whitening basis of the training images' patches.

airbench's first layer (Keller Jordan's CIFAR-10 speed runs), for one-channel images. Random first
filters spend a short run's first epochs finding the directions in which 3x3 patches vary; the
patch covariance's eigenvectors are those directions, from the first step. Scaled by 1/sqrt(eigenvalue),
the faint high-frequency ones (edges, texture) come out as strong as the brightness of the patch.
Each is kept with both signs, so that the ReLU after the block passes both halves of it. These filters
are fixed (a buffer: no gradient, no weight decay); the layer's other filters are learned as usual.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fmnist.arguments import check_int, invalid

# Added to each eigenvalue before the square root, so that a direction the images never vary in (a blank
# generated image, a constant one) is not scaled without bound. Normalized Fashion-MNIST's 3x3 patches
# have eigenvalues from about 0.02 (the faintest, scaled up sixfold) to 7 (the patch's brightness).
EIGENVALUE_FLOOR = 1e-3
IMAGES_PER_CHUNK = 1_000  # patches are unfolded a thousand images at a time (85 MB with their float64 copy)


class PatchWhitening(nn.Module):
    """A conv (one input channel, 'same' padding) whose first 2*k*k filters are the whitening basis of the
    images given to `fit`, with both signs, and whose other `out_channels - 2*k*k` filters are learned."""

    def __init__(self, out_channels: int, kernel_size: int = 3):
        super().__init__()
        check_int(kernel_size, "kernel_size", "PatchWhitening", minimum=1)
        if kernel_size % 2 == 0:
            raise invalid("kernel_size", kernel_size, "must be odd, so that the output keeps the image's size",
                          "PatchWhitening")
        fixed = 2 * kernel_size ** 2
        check_int(out_channels, "out_channels", "PatchWhitening", minimum=fixed)
        self.kernel_size = kernel_size
        # Until `fit` (build_training calls it), the fixed filters are the patch's pixels, each with both signs:
        # a layer built without data still passes the image on, with no channel dead.
        pixels = torch.eye(kernel_size ** 2).reshape(-1, 1, kernel_size, kernel_size)
        self.register_buffer("whitening", torch.cat([pixels, -pixels]))
        self.learned = nn.Parameter(torch.empty(out_channels - fixed, 1, kernel_size, kernel_size))
        if self.learned.numel():
            nn.init.kaiming_uniform_(self.learned, a=math.sqrt(5))  # nn.Conv2d's own initialization

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the fixed filters from normalized (N, 1, H, W) training images (sums in float64: millions of patches)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 1 or not len(images):
            raise invalid("images", images, "expects a normalized (N, 1, H, W) batch of at least one image",
                          "PatchWhitening.fit")
        size = self.kernel_size ** 2
        products = torch.zeros(size, size, dtype=torch.float64, device=images.device)
        sums = torch.zeros(size, dtype=torch.float64, device=images.device)
        count = 0
        for chunk in images.split(IMAGES_PER_CHUNK):
            patches = F.unfold(chunk.float(), self.kernel_size, padding=self.kernel_size // 2)
            patches = patches.transpose(1, 2).reshape(-1, size).double()
            products += patches.T @ patches
            sums += patches.sum(dim=0)
            count += len(patches)
        mean = sums / count
        covariance = products / count - torch.outer(mean, mean)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        basis = eigenvectors.T / (eigenvalues.clamp(min=0) + EIGENVALUE_FLOOR).sqrt()[:, None]
        basis = basis.reshape(size, 1, self.kernel_size, self.kernel_size).to(self.whitening.dtype)
        self.whitening.copy_(torch.cat([basis, -basis]))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return F.conv2d(inputs, torch.cat([self.whitening, self.learned]), padding=self.kernel_size // 2)

    def extra_repr(self) -> str:
        fixed = len(self.whitening)
        return (f"1, {fixed + len(self.learned)}, kernel_size={self.kernel_size}: {fixed} whitening filters fixed, "
                f"{len(self.learned)} learned")


def whitening_layers(model: nn.Module) -> list[PatchWhitening]:
    """The layers of `model` that are fitted to the training images before training (most models: none)."""
    return [layer for layer in model.modules() if isinstance(layer, PatchWhitening)]
