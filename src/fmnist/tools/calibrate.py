"""`fmnist calibrate RUN_DIR`: fit a run's temperature after the fact (runs trained before temperatures
existed, or with --no-calibrate), on the same validation split its training held out.

Training does this itself at its end (experiment.py); this is the same fit, on the same images.
"""

from __future__ import annotations

from pathlib import Path

from fmnist.arguments import setting
from fmnist.data.loader import TensorLoader
from fmnist.data.splits import load_splits
from fmnist.errors import CheckpointError
from fmnist.files import check_writable, exclusive_lock
from fmnist.inference import evaluation_arguments, load_model, run_folder_argument
from fmnist.runs.calibration import CALIBRATION_FILE, fit_run_temperature
from fmnist.runs.folder import read_saved_config
from fmnist.training.config import EVAL_BATCH_SIZE, TrainConfig

OWNER = "calibrate_run"  # how errors name the arguments in Python (the CLI: --force, --batch-size)


def calibrate_run(run_dir: str | Path, data_dir: str | None = None, device: str = "auto",
                  batch_size: int = EVAL_BATCH_SIZE, force: bool = False) -> dict:
    """Fit best.pt's temperature on the run's validation split; write calibration.json; return its record.

    An existing calibration.json is replaced only with `force` (nothing is lost by accident).
    """
    run_path = run_folder_argument(run_dir, OWNER)
    evaluation_arguments(OWNER, data_dir, device, batch_size, force=force)
    saved = read_saved_config(run_path)
    if not (run_path / "best.pt").is_file():
        raise CheckpointError(f"{run_path}: no best.pt yet (no epoch finished); nothing to calibrate")
    if (run_path / CALIBRATION_FILE).exists() and not force:
        raise CheckpointError(f"{run_path / CALIBRATION_FILE}: already there; pass {setting('force', True, OWNER)} "
                              "to fit it again")
    check_writable(run_path, "calibrate:")
    config = TrainConfig.from_saved(saved["config"])
    with exclusive_lock(run_path, "run folder"):  # not while the run is training or being resumed
        model = load_model(run_path / "best.pt", device, calibrate=False)
        data = load_splits(data_dir or config.data_dir, config.val_size, config.split_seed,
                           verify=not config.allow_unverified_data)
        parameter = next(model.parameters())
        loader = TensorLoader(data.val.to(parameter.device), batch_size, mean=model.mean, std=model.std)
        # The model's forward already averages the flipped and shifted views when the run used --tta-flip
        # or --tta-shift.
        return fit_run_temperature(run_path, model, loader, False, model.info["model"], model.info["epoch"])
