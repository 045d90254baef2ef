"""Export a checkpoint's model to ONNX, for inference without PyTorch (onnxruntime and others).

The ONNX model takes what the PyTorch model takes: float images (N, 1, 28, 28), normalized with
the run's mean and std (written into the file's metadata with the class names), and returns
logits (N, 10). N, the batch axis, is dynamic. A run trained with `--tta-flip` was evaluated on
each image and its mirror image, so its ONNX model does the same. This needs the optional extra:
`pip install 'fmnist[onnx]'` (onnx and onnxscript for torch's exporter, onnxruntime to run the result).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from fmnist.data import CLASS_NAMES, IMAGE_SIZE
from fmnist.errors import ConfigError
from fmnist.runs import (
    atomic_write_bytes,
    checkpoint_path,
    load_checkpoint,
    model_from_checkpoint,
    trained_with_flip_tta,
)
from fmnist.train import predict_logits

FORMATS = ("onnx",)
INSTALL_EXTRA = "pip install 'fmnist[onnx]' (onnx, onnxscript, onnxruntime)"


def require_onnx_exporter() -> None:
    """torch.onnx.export (the dynamo exporter, torch's default) needs onnx and onnxscript."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"fmnist export --format onnx: {error.name} is not installed; {INSTALL_EXTRA}") from None


def default_onnx_path(source: Path, checkpoint: Path) -> Path:
    """runs/<name>/model.onnx for a run folder, else the checkpoint's name with .onnx."""
    return source / "model.onnx" if source.is_dir() else checkpoint.with_suffix(".onnx")


def check_writable(out: Path) -> None:
    folder = out.parent
    if not folder.is_dir():
        raise ConfigError(f"--out {out}: the folder {folder} does not exist; create it or choose another")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--out {out}: cannot write into {folder}; choose another place")
    if out.is_dir():
        raise ConfigError(f"--out {out}: a folder; give a file name such as {out / 'model.onnx'}")


class FlipAveraged(torch.nn.Module):
    """A model with flip test-time augmentation built in, as `--tta-flip` evaluates it."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return predict_logits(self.model, images, flip_tta=True)


def export_onnx(source: str | Path, out: str | Path | None = None) -> Path:
    """Write the model of a run folder (its best.pt) or checkpoint as ONNX; return the file written."""
    source = Path(source)
    checkpoint = checkpoint_path(source)
    out = Path(out) if out is not None else default_onnx_path(source, checkpoint)
    check_writable(out)
    require_onnx_exporter()
    state = load_checkpoint(checkpoint)
    model = model_from_checkpoint(state, checkpoint).eval()
    flip_tta = trained_with_flip_tta(state)
    if flip_tta:
        model = FlipAveraged(model)
    example = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    program = torch.onnx.export(
        model, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
    )
    metadata = {
        "mean": str(state["config"]["mean"]),
        "std": str(state["config"]["std"]),
        "classes": json.dumps(CLASS_NAMES),
        "fmnist_model": state["model_name"],
        "fmnist_epoch": str(state["epoch"]),
        "tta_flip": str(flip_tta),
    }
    with tempfile.TemporaryDirectory() as scratch:  # the exporter writes files; we publish one atomically
        temporary = Path(scratch) / "model.onnx"
        program.save(str(temporary))
        import onnx

        proto = onnx.load(str(temporary))
        onnx.helper.set_model_props(proto, metadata)
        atomic_write_bytes(out, proto.SerializeToString())
    return out
