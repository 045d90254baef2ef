"""The focal-loss study's feed-forward network, which is the PyTorch quickstart's network."""

from torch import nn

from fmnist.models.registry import register_model


@register_model("mlp", "784-512-512-10, no convolutions: the focal-loss study")
def mlp(num_classes: int = 10) -> nn.Module:
    """784 -> 512 -> 512 -> 10 with ReLU: no convolutions, so it sees pixels, not shapes.

    Same as the original (the quickstart's NeuralNetwork), written as one Sequential.
    """
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(28 * 28, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, num_classes),
    )
