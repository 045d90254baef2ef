"""The BatchNorm study's networks: `v1` (its pipeline test) and `v1-5-5` with and without BatchNorm.

The originals ended in nn.Softmax and fed those probabilities to CrossEntropyLoss, which applies
log_softmax itself: the loss then saw squashed values in [0, 1] and its gradients shrank. These
return logits instead; otherwise the layers and parameter counts are the seed's.
"""

from torch import nn

from fmnist.models.registry import register_model


@register_model("v1", "the BatchNorm study's pipeline test: two tiny convs")
def v1(num_classes: int = 10) -> nn.Module:
    """Two unpadded 1-channel 3x3 convs (28 -> 26 -> 24), then 576 -> 64 -> 32 -> 10.

    One channel per conv is deliberately tiny: the seed built it to test its pipeline end to end.
    """
    return nn.Sequential(
        nn.Conv2d(1, 1, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.Conv2d(1, 1, kernel_size=3),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(24 * 24, 64),
        nn.ReLU(inplace=True),
        nn.Linear(64, 32),
        nn.ReLU(inplace=True),
        nn.Linear(32, num_classes),
    )


def conv_pair(in_channels: int, out_channels: int, batch_norm: bool) -> list[nn.Module]:
    """Two 'same' 3x3 convs with no activation between them (as in the seed), then [BN], ReLU."""
    layers = [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding="same"),
        nn.Conv2d(out_channels, out_channels, kernel_size=3, padding="same"),
    ]
    if batch_norm:
        layers.append(nn.BatchNorm2d(out_channels))
    return [*layers, nn.ReLU(inplace=True)]


def dense(in_features: int, out_features: int, batch_norm: bool) -> list[nn.Module]:
    layers = [nn.Linear(in_features, out_features)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(out_features))
    return [*layers, nn.ReLU(inplace=True)]


def v1_5_5_layers(batch_norm: bool, num_classes: int) -> nn.Sequential:
    """No pooling anywhere: the image stays 28x28, so the first Linear sees 28*28*128 = 100,352
    features and holds 25.7M of the ~26M parameters (and makes an epoch slow on a CPU)."""
    return nn.Sequential(
        *conv_pair(1, 32, batch_norm),
        *conv_pair(32, 64, batch_norm),
        *conv_pair(64, 128, batch_norm),
        nn.Flatten(),
        *dense(28 * 28 * 128, 256, batch_norm),
        *dense(256, 64, batch_norm),
        nn.Linear(64, num_classes),
    )


@register_model("v1-5-5", "the BatchNorm study's six convs, 26 M parameters, no BN")
def v1_5_5(num_classes: int = 10) -> nn.Module:
    """Six 'same' 3x3 convs (1 -> 32 -> 32, -> 64 -> 64, -> 128 -> 128), 100,352 -> 256 -> 64 -> 10."""
    return v1_5_5_layers(batch_norm=False, num_classes=num_classes)


@register_model("v1-5-5-bn", "v1-5-5 with BatchNorm: the study's four learning rates")
def v1_5_5_bn(num_classes: int = 10) -> nn.Module:
    """`v1-5-5` with BatchNorm before each ReLU: after each conv pair and after the two hidden Linears.

    In training mode BatchNorm1d needs at least 2 images in a batch.
    """
    return v1_5_5_layers(batch_norm=True, num_classes=num_classes)
