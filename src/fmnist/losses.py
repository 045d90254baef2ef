"""Loss functions by name."""

from __future__ import annotations

from torch import nn

from fmnist.errors import ConfigError

LOSSES = ("ce",)


def build_loss(name: str = "ce", label_smoothing: float = 0.0) -> nn.Module:
    """Cross-entropy on logits, optionally with label smoothing (targets 1-e+e/K and e/K)."""
    if name == "ce":
        return nn.CrossEntropyLoss(label_smoothing=label_smoothing)
    raise ConfigError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
