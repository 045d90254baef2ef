"""Loss functions: cross-entropy (with optional label smoothing) and focal loss."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from fmnist.training.config import TrainConfig


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., 2017) for multi-class logits, averaged over the batch.

    FL = -alpha * (1 - p_t)^gamma * log(p_t), where p_t is the probability of the true class.
    The factor (1 - p_t)^gamma shrinks the loss of images the model already gets right with
    confidence, so training spends its gradient on the hard ones. gamma = 0 and alpha = 1 give
    plain cross-entropy. alpha is one scalar for every class here (the focal-loss study used alpha = 1).
    """

    def __init__(self, gamma: float, alpha: float):
        super().__init__()
        self.gamma = gamma
        self.alpha = alpha

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # log_softmax then gather: log(p_t) without ever forming a probability that rounds to 0.
        log_p_true = functional.log_softmax(logits, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
        p_true = log_p_true.exp()
        return (-self.alpha * (1 - p_true).pow(self.gamma) * log_p_true).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}"


def build_loss(config: TrainConfig) -> nn.Module:
    """Cross-entropy on logits (label smoothing e: targets 1-e+e/K and e/K), or focal loss."""
    if config.loss == "focal":
        return FocalLoss(gamma=config.focal_gamma, alpha=config.focal_alpha)
    return nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
