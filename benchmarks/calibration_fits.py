"""Two ways to fit a run's temperature, compared on its test split: the NLL's minimum alone, and
fmnist's two steps (the NLL's T, then the lowest validation ECE near it; training/calibration.py).

Both are fitted to the validation logits of the run's best.pt, as training fits them; the test
split only reports. The raw figures and the NLL fit reproduce what the run itself recorded.

    PYTHONPATH=src python benchmarks/calibration_fits.py runs/fast-42 runs/fast-43 ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fmnist.data.loader import TensorLoader
from fmnist.data.splits import load_splits
from fmnist.inference import load_model
from fmnist.training.calibration import (
    expected_calibration_error,
    fit_temperature,
    logits_of,
    negative_log_likelihood,
    nll_temperature,
)
from fmnist.training.config import TrainConfig


def figures(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> str:
    probabilities = torch.softmax(logits.double() / temperature, dim=1)
    return (f"T {temperature:.3f}  ECE {expected_calibration_error(probabilities, labels):.4f}  "
            f"NLL {negative_log_likelihood(probabilities, labels):.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    for run in parser.parse_args().runs:
        config = TrainConfig.from_saved(json.loads((run / "config.json").read_text())["config"])
        model = load_model(run / "best.pt", calibrate=False)
        splits = load_splits(config.data_dir, config.val_size, config.split_seed,
                             verify=not config.allow_unverified_data)
        loaders = {name: TensorLoader(getattr(splits, name), 1000, mean=model.mean, std=model.std)
                   for name in ("val", "test")}
        (val_logits, val_labels), (test_logits, test_labels) = (
            logits_of(model, loaders[name]) for name in ("val", "test"))  # model applies its flip TTA
        by_nll = nll_temperature(val_logits.double(), val_labels.long())
        two_steps = fit_temperature(val_logits, val_labels)
        print(f"{run}: raw {figures(test_logits, test_labels, 1.0)}")
        print(f"{run}: NLL fit {figures(test_logits, test_labels, by_nll)}")
        print(f"{run}: two steps {figures(test_logits, test_labels, two_steps)}")


if __name__ == "__main__":
    main()
