"""The first convolution's layout: oneDNN's 1-channel conv against the same conv as unfold + matmul.

    python benchmarks/first_conv.py

affine-cnn's first layer (1 -> 32 channels, 3x3, padding 1) at batch 64, forward and backward
(weight gradient only, as in training: the images need no gradient). A 1-channel input gives
oneDNN little to vectorize over, so the conv runs far below the machine's matrix-multiply rate;
the alternative rewrites it as one matrix multiply of the 9 pixels around each pixel
(`F.unfold`) with the 32 x 9 weight, which writes its output directly channels-last.
Both compute the same numbers (checked below); the question is only which is faster.
Three rounds of 200 timed steps after 20 warm-up steps, alternating; run it on an idle machine.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

BATCH, STEPS, WARMUP, ROUNDS = 64, 200, 20, 3


class UnfoldConv(nn.Module):
    """A 1-channel 3x3 'same' conv as unfold + matrix multiply, output channels-last."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, _, height, width = images.shape
        patches = F.unfold(images, kernel_size=3, padding=1)  # (n, 9, height * width)
        rows = patches.transpose(1, 2).reshape(n * height * width, 9)
        out = torch.addmm(self.bias, rows, self.weight.view(-1, 9).t())  # (n * h * w, channels)
        return out.view(n, height, width, -1).permute(0, 3, 1, 2)  # NCHW shape, channels-last memory


def milliseconds_per_step(layer: nn.Module, images: torch.Tensor, grad: torch.Tensor) -> float:
    for _ in range(WARMUP):
        layer(images).backward(grad)
    start = time.perf_counter()
    for _ in range(STEPS):
        layer(images).backward(grad)
    return (time.perf_counter() - start) / STEPS * 1000


if __name__ == "__main__":
    torch.manual_seed(0)
    images = torch.randn(BATCH, 1, 28, 28)
    grad = torch.randn(BATCH, 32, 28, 28).contiguous(memory_format=torch.channels_last)
    conv = nn.Conv2d(1, 32, kernel_size=3, padding=1).to(memory_format=torch.channels_last)
    unfolded = UnfoldConv(conv)
    with torch.no_grad():
        difference = (conv(images) - unfolded(images)).abs().max().item()
    print(f"largest difference between the two outputs: {difference:.2e}")
    times = {"oneDNN conv (channels-last)": [], "unfold + matmul": []}
    for _ in range(ROUNDS):
        times["oneDNN conv (channels-last)"].append(milliseconds_per_step(conv, images, grad))
        times["unfold + matmul"].append(milliseconds_per_step(unfolded, images, grad))
    for name, values in times.items():
        print(f"  {name:<30} {statistics.median(values):.2f} ms per forward+backward "
              f"(min {min(values):.2f}, max {max(values):.2f})")
