"""Residual networks in the fast-cnn style, for the longer time-to-accuracy recipes (`top`, `top-long`)."""

import functools

from torch import nn

from fmnist.models.registry import register_model
from fmnist.models.whitening import PatchWhitening


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> ReLU, keeping the image size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),  # BatchNorm has the bias
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class Residual(nn.Module):
    """x + f(x), f = two 3x3 conv -> BatchNorm -> ReLU at the same width and size (ResNet-9's block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))

    def forward(self, x):
        return x + self.body(x)


def stage(in_channels: int, out_channels: int, blocks: int) -> list[nn.Module]:
    """One conv that widens, `blocks` residual blocks at that width, then a 2x2 max-pool."""
    layers = [conv_bn_relu(in_channels, out_channels)]
    layers += [Residual(out_channels) for _ in range(blocks)]
    return [*layers, nn.MaxPool2d(2)]


@register_model("res-cnn", "residual stages at 14x14 and 7x7 (top-long's network)")
def res_cnn(
    num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128), blocks: tuple[int, int] = (1, 1)
) -> nn.Module:
    """A thin conv at 28x28, then residual stages at 14x14 and 7x7, then one linear layer on 3x3.

    Why this shape: a 3x3 conv at 28x28 costs four times one at 14x14, so the full-size image gets
    a single thin conv (1 -> widths[0], 0.2 M multiply-adds) and is pooled at once; the depth sits
    at 14x14 and 7x7, where it is cheap. Each stage widens with one conv and then adds residual
    blocks (two convs and a skip, as in ResNet-9), so the network can be deeper than fast-vgg and
    still train fast under a high learning rate. The last 3x3 map is kept whole for the linear
    layer (fast-cnn's head): where a feature is on the garment matters for Fashion-MNIST.
    With the default widths and one block per stage: 36 M multiply-adds per image.
    """
    c0, c1, c2 = widths
    return nn.Sequential(
        conv_bn_relu(1, c0),
        nn.MaxPool2d(2),  # 28 -> 14
        *stage(c0, c1, blocks[0]),  # 14 -> 7
        *stage(c1, c2, blocks[1]),  # 7 -> 3
        nn.Flatten(),
        nn.Linear(c2 * 3 * 3, num_classes),
    )


@register_model("whiten-res", "res-cnn with a first conv fitted to the data")
def whiten_res(num_classes: int = 10) -> nn.Module:
    """res-cnn whose first conv is PatchWhitening (as in whiten-vgg): 18 of its 32 filters are the
    whitening basis of the training images' 3x3 patches, fitted when training starts and then fixed.

    res-cnn's first conv is as thin as fast-vgg's (one channel to 32 at 28x28), and fixing half of it
    to the directions in which the patches vary paid at `top`'s 30-minute budget as it did at `best`'s
    5 minutes. Same multiply-adds as res-cnn, 162 fewer learned parameters.
    """
    network = res_cnn(num_classes)
    first_conv = network[0][0]  # the conv of the first conv -> BatchNorm -> ReLU
    network[0][0] = PatchWhitening(first_conv.out_channels)
    return network


# Wider variants, registered by name so that recipes and checkpoints can name them.
register_model("res-cnn-96", "wider res-cnn (96 and 192 channels)")(
    functools.partial(res_cnn, widths=(32, 96, 192)))
register_model("res-cnn-128", "wider res-cnn (128 and 256 channels)")(
    functools.partial(res_cnn, widths=(32, 128, 256)))
