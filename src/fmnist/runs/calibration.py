"""A run's temperature: fitted on its validation split after training, kept in calibration.json.

    runs/<name>/calibration.json  {"temperature": 1.42, "model": ..., "epoch": ..., "fitted_on": "validation", ...}

It describes best.pt (the weights it was fitted to): a checkpoint of another model or epoch (a
later last.pt) gets no temperature. A run from before temperatures existed has no file and no
`calibrate` in its config: its probabilities stay as they were. A run whose config asked for
calibration and that finished has one; without it, or with a temperature that is not a positive
number, using the run is refused (the fix is in the message) instead of silently changing its answers.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from fmnist.arguments import setting
from fmnist.errors import CheckpointError
from fmnist.files import atomic_write_json
from fmnist.runs.folder import is_run_folder, read_json, read_saved_config, read_summary
from fmnist.training.calibration import calibration_metrics, fit_temperature, logits_of
from fmnist.training.loop import Batches

CALIBRATION_FILE = "calibration.json"


def fit_run_temperature(run_path: Path, network: torch.nn.Module, val_batches: Batches, flip_tta: bool,
                        model_name: str, epoch: int, shift_tta: bool = False) -> dict:
    """Fit the temperature of `network` (best.pt's weights) on the validation batches, seen through the
    test-time views the run's model answers with; write calibration.json."""
    logits, labels = logits_of(network, val_batches, flip_tta, shift_tta)
    temperature = fit_temperature(logits, labels)
    probabilities = torch.softmax(logits, dim=1)
    scaled = torch.softmax(logits / temperature, dim=1)
    record = {
        "temperature": temperature,
        "model": model_name,
        "epoch": epoch,
        "fitted_on": "validation",
        "images": len(labels),
        "validation_nll_before": calibration_metrics(probabilities, labels)["nll"],
        "validation_nll_after": calibration_metrics(scaled, labels)["nll"],
        "method": "temperature scaling (Guo et al., ICML 2017): the validation NLL's T (L-BFGS on log T), then "
                  "the lowest validation ECE within a factor 1.25 of it",
    }
    atomic_write_json(run_path / CALIBRATION_FILE, record)
    return record


def run_temperature(checkpoint: Path, model_name: str, epoch: int) -> float | None:
    """The temperature to divide this checkpoint's logits by, None for none (older runs, other epochs).

    Raises CheckpointError when the run should have one and it is missing or not a positive number.
    """
    folder = Path(checkpoint).parent
    file = folder / CALIBRATION_FILE
    record = read_json(file)
    if record:
        if record.get("model") != model_name or record.get("epoch") != epoch:
            return None  # fitted to best.pt, and this is another checkpoint
        return checked_temperature(record.get("temperature"), file, folder)
    if expects_temperature(folder, model_name, epoch):
        raise CheckpointError(f"{folder}: no {CALIBRATION_FILE}, although the run was calibrated; restore it, "
                              f"fit it again with `fmnist calibrate {folder}`, or pass {setting('calibrate', False)} "
                              "(raw probabilities)")
    return None


def checked_temperature(value, file: Path, folder: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise CheckpointError(f"{file}: temperature {value!r} is not a positive number; restore the file, fit it "
                              f"again with `fmnist calibrate {folder} --force`, or pass "
                              f"{setting('calibrate', False)} (raw probabilities)")
    return float(value)


def expects_temperature(folder: Path, model_name: str, epoch: int) -> bool:
    """A finished run of this version that asked for calibration, and its best checkpoint."""
    if not is_run_folder(folder):
        return False
    if not read_saved_config(folder)["config"].get("calibrate"):
        return False  # older runs, and runs trained with --no-calibrate
    summary = read_summary(folder)
    return (summary.get("finished") is True and "diverged" not in summary
            and summary.get("model") == model_name and summary.get("best_epoch") == epoch)


def read_calibration(folder: Path) -> dict:
    """calibration.json's record, {} when there is none."""
    return read_json(Path(folder) / CALIBRATION_FILE)
