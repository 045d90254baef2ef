"""The LeNet augmentation project's small LeNet-style CNN."""

from torch import nn

from fmnist.models.registry import register_model


@register_model("lenet", "the LeNet augmentation project's CNN")
def lenet(num_classes: int = 10) -> nn.Module:
    """Two unpadded 3x3 convs with max-pooling (28 -> 26 -> 13 -> 11 -> 5), then 400 -> 120 -> 84 -> 10.

    The original returned log_softmax and fed it to CrossEntropyLoss, which applies log_softmax
    again (harmless, since log_softmax of log-probabilities gives them back, but redundant); this
    one returns logits like every fmnist model. Max-pooling comes before the ReLU, as in
    `affine-cnn`: the same function, with less work.
    """
    return nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=3),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 16, kernel_size=3),
        nn.MaxPool2d(2),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(inplace=True),
        nn.Linear(120, 84),
        nn.ReLU(inplace=True),
        nn.Linear(84, num_classes),
    )
