"""LearnedAffine: the custom layer of the lab."""

from __future__ import annotations

import torch
from torch import nn

from fmnist.arguments import check_int, invalid


class LearnedAffine(nn.Module):
    """y = scale * x + shift, with one learned scale and shift per feature (dimension 1).

    It starts as the identity (scale 1, shift 0), so adding it to a network changes nothing until
    training moves it. On (N, F) it acts per feature; on (N, C, H, W) per channel, like the affine
    part of BatchNorm without the normalization. It has exactly 2 x num_features parameters.
    """

    def __init__(self, num_features: int):
        super().__init__()
        check_int(num_features, "num_features", "LearnedAffine", minimum=1)
        self.num_features = num_features
        try:
            self.scale = nn.Parameter(torch.ones(num_features))
            self.shift = nn.Parameter(torch.zeros(num_features))
        except RuntimeError:  # more memory than there is: torch's allocator refuses it
            raise invalid("num_features", num_features, "too many to hold in memory", "LearnedAffine") from None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor) or inputs.dim() < 2 or inputs.shape[1] != self.num_features:
            raise invalid("inputs", inputs, f"expects a tensor whose dimension 1 has size {self.num_features}",
                          "LearnedAffine.forward")
        # View scale and shift as (F, 1, 1, ...) so they broadcast over every dimension after 1.
        trailing = (1,) * (inputs.dim() - 2)
        scale = self.scale.view(self.num_features, *trailing)
        shift = self.shift.view(self.num_features, *trailing)
        return torch.addcmul(shift, inputs, scale)

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, y = scale * x + shift"
