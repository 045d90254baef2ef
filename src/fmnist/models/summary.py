"""`fmnist summary MODEL`: each layer's output shape, parameters and multiply-adds for one image.

Forward hooks on the leaf modules record what one 1x28x28 image does as it passes through. The
multiply-add (MAC) counts are written out by hand so a learner can check them:

  Conv2d:  one MAC per output value per weight that touches it
           = output values x (in_channels / groups) x kernel height x kernel width
  PatchWhitening: a one-channel conv, its fixed filters included = output values x kernel height x width
  Linear:  output values x in_features
  BatchNorm, LearnedAffine: one multiply-add per output value (scale and shift)

Other layers (ReLU, pooling, dropout, flatten) do comparisons or copies, not multiply-adds: 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fmnist.models.layers import LearnedAffine
from fmnist.models.registry import count_parameters, create_model
from fmnist.models.whitening import PatchWhitening


@dataclass
class LayerRow:
    name: str  # the module's path in the model, e.g. "features.0"
    kind: str  # its class name
    output_shape: tuple[int, ...]
    parameters: int
    macs: int


def multiply_adds(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one call of a leaf module that produced `output` (see the module docstring)."""
    if isinstance(module, nn.Conv2d):
        kernel_height, kernel_width = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kernel_height * kernel_width
    if isinstance(module, PatchWhitening):
        return output.numel() * module.kernel_size ** 2
    if isinstance(module, nn.Linear):
        return output.numel() * module.in_features
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, LearnedAffine)):
        return output.numel()
    return 0


def summarize(model: nn.Module, input_shape: tuple[int, ...] = (1, 1, 28, 28)) -> list[LayerRow]:
    """One row per leaf-module call, in the order the forward pass runs them."""
    rows: list[LayerRow] = []

    def record(name: str):
        def hook(module: nn.Module, inputs, output) -> None:
            # The first call of a reused module counts its parameters; later calls only their work.
            counted = any(row.name == name for row in rows)
            parameters = 0 if counted else sum(p.numel() for p in module.parameters(recurse=False))
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
            macs = multiply_adds(module, output) if isinstance(output, torch.Tensor) else 0
            rows.append(LayerRow(name, type(module).__name__, shape, parameters, macs))

        return hook

    handles = [
        module.register_forward_hook(record(name))
        for name, module in model.named_modules()
        if not any(True for _ in module.children())
    ]
    model.eval()  # BatchNorm with a batch of one image needs running statistics
    try:
        with torch.inference_mode():
            model(torch.zeros(input_shape))
    finally:
        for handle in handles:
            handle.remove()
    return rows


def format_summary(model_name: str, model: nn.Module, rows: list[LayerRow]) -> str:
    """The layer table, then totals. Parameters outside leaf modules are included in the total."""
    header = f"{'layer':<24} {'type':<16} {'output shape':<20} {'parameters':>12} {'multiply-adds':>15}"
    lines = [f"{model_name}: one 1x28x28 image", header, "-" * len(header)]
    for row in rows:
        shape = "x".join(str(size) for size in row.output_shape)
        lines.append(f"{row.name:<24} {row.kind:<16} {shape:<20} {row.parameters:>12,} {row.macs:>15,}")
    lines.append("-" * len(header))
    total_macs = sum(row.macs for row in rows)
    lines.append(f"{'total':<62} {count_parameters(model):>12,} {total_macs:>15,}")
    lines.append(f"about {total_macs / 1e6:,.2f} M multiply-adds ({2 * total_macs / 1e6:,.2f} M FLOPs) per image")
    return "\n".join(lines)


def model_summary(model_name: str) -> str:
    model = create_model(model_name)
    return format_summary(model_name, model, summarize(model))
