"""Export a checkpoint's model to ONNX, for inference without PyTorch (onnxruntime and others).

The ONNX model takes what the PyTorch model takes: float images (N, 1, 28, 28), normalized with
the run's mean and std (written into the file's metadata with the class names), and returns
logits (N, 10). N, the batch axis, is dynamic. A run trained with `--tta-flip` was evaluated on
each image and its mirror image, so its ONNX model does the same. This needs the optional extra:
`pip install 'fmnist[onnx]'` (onnx and onnxscript for torch's exporter, onnxruntime to run the result).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from fmnist.arguments import check_bool, check_path, named
from fmnist.data.fashion import CLASS_NAMES, IMAGE_SIZE
from fmnist.errors import ConfigError
from fmnist.files import atomic_write_bytes, check_writable
from fmnist.inference import checkpoint_argument, load_model
from fmnist.runs.folder import check_output_file

FORMATS = ("onnx",)
OWNER = "export_onnx"  # how errors name the arguments in Python (the CLI: --out, --force)
INSTALL_EXTRA = "pip install -e '.[onnx]' in the fmnist checkout (onnx, onnxscript, onnxruntime)"


def require_onnx_exporter() -> None:
    """torch.onnx.export (the dynamo exporter, torch's default) needs onnx and onnxscript."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"export to ONNX: {error.name} is not installed; {INSTALL_EXTRA}") from None


def default_onnx_path(source: Path, checkpoint: Path) -> Path:
    """runs/<name>/model.onnx for a run folder, else the checkpoint's name with .onnx."""
    return source / "model.onnx" if source.is_dir() else checkpoint.with_suffix(".onnx")


class ScaledLogits(torch.nn.Module):
    """The model's logits divided by its temperature (1 without one): softmax of them is what predict gives."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.temperature = float(getattr(model, "temperature", None) or 1.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(images)
        return logits if self.temperature == 1.0 else logits / self.temperature


def export_onnx(source: str | Path, out: str | Path | None = None, force: bool = False,
                calibrate: bool = True) -> Path:
    """Write the model of a run folder (its best.pt) or checkpoint as ONNX; return the file written.

    The ONNX model is what load_model() gives: a run trained with --tta-flip averages each image
    with its mirror image inside the exported graph too. It never overwrites the checkpoint it reads
    or a run's own files; another existing file only with `force`. With the run's temperature (and
    `calibrate`), the exported logits are divided by it, so their softmax is the calibrated probabilities.
    """
    checkpoint = checkpoint_argument(source, OWNER, "source")
    out = check_path(out, "out", OWNER) if out is not None else default_onnx_path(Path(source), checkpoint)
    check_bool(force, "force", OWNER)
    check_bool(calibrate, "calibrate", OWNER)
    check_output_file(out, reads=[checkpoint], force=force, owner=OWNER)
    check_writable(out.parent, named("out", OWNER))
    require_onnx_exporter()
    model = load_model(checkpoint, calibrate=calibrate).to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 1, IMAGE_SIZE, IMAGE_SIZE)
    program = torch.onnx.export(
        ScaledLogits(model).eval(), (example,), dynamo=True, input_names=["images"], output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
    )
    metadata = {
        "mean": str(model.mean),
        "std": str(model.std),
        "classes": json.dumps(CLASS_NAMES),
        "fmnist_model": model.info["model"],
        "fmnist_epoch": str(model.info["epoch"]),
        "tta_flip": str(model.flip_tta),
        "tta_shift": str(model.shift_tta),
        "temperature": str(model.temperature or 1.0),  # already applied to the output
    }
    with tempfile.TemporaryDirectory() as scratch:  # the exporter writes files; we publish one atomically
        temporary = Path(scratch) / "model.onnx"
        program.save(str(temporary))
        import onnx

        proto = onnx.load(str(temporary))
        onnx.helper.set_model_props(proto, metadata)
        atomic_write_bytes(out, proto.SerializeToString())
    return out
