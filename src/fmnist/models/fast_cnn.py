"""fmnist's own networks for time to accuracy on a CPU (the `quick`, `fast`, `medium` and `best` recipes)."""

from torch import nn

from fmnist.models.registry import register_model
from fmnist.models.whitening import PatchWhitening


def conv_bn(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 conv -> BatchNorm, keeping the image size."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),  # BatchNorm has the bias
        nn.BatchNorm2d(out_channels),
    ]


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 conv -> BatchNorm -> ReLU, keeping the image size."""
    return [*conv_bn(in_channels, out_channels), nn.ReLU(inplace=True)]


def conv_block(in_channels: int, out_channels: int) -> list[nn.Module]:
    """3x3 conv -> BatchNorm -> 2x2 max-pool -> ReLU: one block halves the image.

    Pooling before the ReLU is the same function as after it (the max of ReLUs is the ReLU of the
    max), with a quarter of the ReLU work.
    """
    return [*conv_bn(in_channels, out_channels), nn.MaxPool2d(2), nn.ReLU(inplace=True)]


@register_model("fast-cnn", "three conv-BN blocks: fmnist's fast network")
def fast_cnn(num_classes: int = 10, width: int = 32) -> nn.Module:
    """Three conv blocks (32, 64, 128 channels at 28, 14 and 7 pixels) and one linear layer.

    Why this shape: on a CPU the time goes into multiply-adds, and most of them sit at the full
    28x28 resolution, so the first block is thin (1 -> 32) and every block halves the image
    before the next one widens it. BatchNorm lets SGD run at a high learning rate from the start,
    which is what a short schedule needs. About 7.5 M multiply-adds per image and 104 k parameters.
    """
    return nn.Sequential(
        *conv_block(1, width),
        *conv_block(width, 2 * width),
        *conv_block(2 * width, 4 * width),
        nn.Flatten(),
        nn.Linear(4 * width * 3 * 3, num_classes),
    )


@register_model("fast-cnn-16", "fast-cnn at half width: the quickest check")
def fast_cnn_16(num_classes: int = 10) -> nn.Module:
    """fast-cnn at half the width (16, 32, 64 channels): a quarter of the multiply-adds (1.9 M), 29 k parameters.

    For the `quick` recipe: within a budget of seconds, two epochs of a narrow network learn more
    than one epoch of a wide one.
    """
    return fast_cnn(num_classes, width=16)


@register_model("fast-vgg", "fast-cnn with five convs: 0.94 in minutes")
def fast_vgg(num_classes: int = 10, width: int = 32) -> nn.Module:
    """fast-cnn with a second conv in its 14x14 and 7x7 blocks (VGG's stacked 3x3 convs): 5 convs.

    For the `best` recipe. Depth where the image is small buys accuracy: the two added convs take
    the multiply-adds from 7.5 M to 22.0 M per image, and the network reaches 0.94, which fast-cnn
    at 1.5x the width (16.7 M) did not in as much time (BENCHMARKS.md). The first block stays
    single and thin, since a conv at 28x28 costs four times one at 14x14.
    """
    return nn.Sequential(
        *conv_block(1, width),
        *conv_bn_relu(width, 2 * width),
        *conv_block(2 * width, 2 * width),
        *conv_bn_relu(2 * width, 4 * width),
        *conv_block(4 * width, 4 * width),
        nn.Flatten(),
        nn.Linear(4 * width * 3 * 3, num_classes),
    )


@register_model("whiten-vgg", "fast-vgg with a first conv fitted to the data")
def whiten_vgg(num_classes: int = 10, width: int = 32) -> nn.Module:
    """fast-vgg whose first conv is PatchWhitening: 18 of its 32 filters are the whitening basis of the
    training images' 3x3 patches (fitted when training starts, then fixed), 14 are learned.

    For a short schedule (the `best` recipe at its 5-minute budget), where random first filters are
    still finding the image's directions when the learning rate anneals. Same multiply-adds as fast-vgg,
    162 fewer learned parameters.
    """
    network = fast_vgg(num_classes, width)
    network[0] = PatchWhitening(width)
    return network
