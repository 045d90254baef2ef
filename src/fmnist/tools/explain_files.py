"""`fmnist predict --explain OUT_DIR`: one PNG per input image, the image beside its attribution map.

The folder is checked before any work (a file in its place, an unwritable place, or a map's name
already taken is one error line, and nothing is written); the maps are explain.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from fmnist.data.images import display_path, image_files
from fmnist.explain import attribution_maps, check_explain_folder, map_file_name, require_captum, write_maps
from fmnist.inference import Prediction, prepare


@dataclass
class ExplainTarget:
    folder: Path
    names: list[str]  # one file name per input file, in predict's order


def explain_folder(out_dir: str | Path, paths: list[str]) -> ExplainTarget:
    """Where the maps of these image files will go, checked; captum checked too."""
    require_captum()
    names = [map_file_name(index, display_path(path)) for index, path in enumerate(image_files(list(paths)))]
    return ExplainTarget(check_explain_folder(out_dir, names), names)


def write_explanations(model: nn.Module, target: ExplainTarget, predictions: list[Prediction], paths: list[str],
                       invert: bool) -> dict[int, Path]:
    """The maps of the readable images, explaining each one's predicted class: {input index: PNG written}."""
    readable = [(index, image) for index, (_, image) in enumerate(prepare(list(paths), invert, skip_unreadable=True))
                if isinstance(image, torch.Tensor)]
    if not readable:
        return {}
    indices = [index for index, _ in readable]
    images = torch.stack([image for _, image in readable])
    probabilities = [predictions[index].probabilities for index in indices]
    labels = [predictions[index].label for index in indices]
    maps = attribution_maps(model, images, labels)
    written = write_maps(target.folder, [target.names[index] for index in indices], images, maps, probabilities)
    return dict(zip(indices, written, strict=True))
