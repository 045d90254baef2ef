"""The focal-loss study's "CNN with 3x3 kernels". The project shows no code for it, so this design is ours."""

from torch import nn

from fmnist.models.registry import register_model


@register_model("small-cnn", "two conv blocks: the focal-loss study's CNN")
def small_cnn(num_classes: int = 10) -> nn.Module:
    """Two 'same' 3x3 conv blocks (32 and 64 channels, each halving the image: 28 -> 14 -> 7),
    then 3136 -> 128 -> 10.

    The simplest CNN that fits the seed's description: the textbook two-block layout, without
    dropout or normalization, so that it differs from `mlp` only by its convolutions. (It is
    `affine-cnn` without LearnedAffine and dropout.) Max-pooling comes before the ReLU, as in
    `affine-cnn`: the same function, with less work.
    """
    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128),
        nn.ReLU(inplace=True),
        nn.Linear(128, num_classes),
    )
