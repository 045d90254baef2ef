"""The BatchNorm study's ResNet-18: torchvision's network with a 1-channel stem and a 10-class head.

`--pretrained [PATH]` starts from ImageNet weights. fmnist never downloads them: they come from
PATH (a saved torchvision resnet18 state_dict) or from torchvision's own cache, where
`torchvision.models.resnet18(weights="DEFAULT")` leaves them on a machine with a network.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fmnist.arguments import argument, invalid, named, setting
from fmnist.errors import ConfigError, one_line_reason
from fmnist.models.registry import register_model

# `--pretrained` without a PATH means "the file torchvision's cache holds".
FROM_TORCHVISION_CACHE = "torchvision"
PRETRAINED_MODELS = ("resnet18",)


@register_model("resnet18", "ResNet-18, 1-channel stem; --pretrained for ImageNet's")
def resnet18(num_classes: int = 10, pretrained: str | None = None) -> nn.Module:
    """ResNet-18 with conv1 = Conv(1 -> 64, 7x7, stride 2, pad 3) and fc = Linear(512 -> 10).

    On 28x28 images the stem leaves 7x7 after max-pooling and layer4 works on 1x1: the network
    was designed for 224x224, which is why it is slow for what it gains here. The seed loaded
    ImageNet weights, then replaced conv1 with a freshly initialized one; with `pretrained`, this
    one keeps ImageNet's conv1 instead, summed over its RGB channels (see load_imagenet_weights).
    """
    from torchvision.models import resnet18 as torchvision_resnet18  # here: importing torchvision takes ~1 s

    model = torchvision_resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    if pretrained is not None:
        load_imagenet_weights(model, pretrained)
    return model


def cached_weights_path() -> Path:
    """Where torchvision keeps the downloaded ImageNet weights of resnet18."""
    from torchvision.models import ResNet18_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / Path(ResNet18_Weights.IMAGENET1K_V1.url).name


def resolve_weights_file(source: str) -> Path:
    if source == FROM_TORCHVISION_CACHE:
        path = cached_weights_path()
        if not path.is_file():
            raise ConfigError(
                f"{named('pretrained')}: no ImageNet weights for resnet18 in torchvision's cache ({path}) and fmnist "
                "does not download them; fetch them where there is a network with "
                "`python -c \"import torchvision; torchvision.models.resnet18(weights='DEFAULT')\"`, "
                f"or pass {setting('pretrained', 'PATH')} to a saved resnet18 state_dict", "pretrained"
            )
        return path
    path = Path(source)
    if not path.is_file():
        raise invalid("pretrained", path, "no such file; pass a saved torchvision resnet18 state_dict")
    return path


def load_imagenet_weights(model: nn.Module, source: str) -> None:
    """Load torchvision's resnet18 weights into our 1-channel, 10-class variant.

    conv1's RGB kernels are summed into one: a gray image copied into three channels gives
    exactly that response, so the pretrained stem sees our image as ImageNet's gray images.
    fc (ImageNet's 1000 classes) is dropped; ours keeps its fresh initialization.
    """
    path = resolve_weights_file(source)
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a foreign or truncated file
        reason = one_line_reason(error)
        raise invalid("pretrained", path, f"not a readable state_dict ({reason})") from None
    if not isinstance(weights, dict) or "conv1.weight" not in weights:
        raise invalid("pretrained", path, "not a resnet18 state_dict (no conv1.weight)")
    weights = {key: value for key, value in weights.items() if not key.startswith("fc.")}
    if weights["conv1.weight"].shape[1] == 3:
        weights["conv1.weight"] = weights["conv1.weight"].sum(dim=1, keepdim=True)

    expected = {key: value for key, value in model.state_dict().items() if not key.startswith("fc.")}
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    mismatched = [key for key in expected if key in weights and weights[key].shape != expected[key].shape]
    if missing or unexpected or mismatched:
        raise ConfigError(
            f"{argument('pretrained', path)}: does not fit resnet18 (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, other shapes {mismatched[:3]}); is it a state_dict of another network?"
        )
    model.load_state_dict(weights, strict=False)  # strict=False only because fc is left out
