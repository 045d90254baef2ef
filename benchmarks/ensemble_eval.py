"""How much an ensemble of finished runs gains: each run's accuracy and that of their averaged softmax.

    python benchmarks/ensemble_eval.py runs/top-long-s43 runs/top-long-s44

Each run's best.pt is used as `fmnist evaluate` uses it (its normalization, flip TTA when it was
trained with it), on the validation split the runs were selected on and on the test split. The
runs must share their validation split (the same --val-size and --split-seed), or the validation
figures mean nothing: that is checked. A lever measured, not a feature: BENCHMARKS.md ("Beyond 95%")
quotes the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fmnist import load_model, load_splits
from fmnist.data.loader import TensorLoader
from fmnist.runs.folder import read_saved_config


def softmax_outputs(model, split) -> torch.Tensor:
    loader = TensorLoader(split, 500, mean=model.mean, std=model.std)
    with torch.inference_mode():
        return torch.cat([model(images).softmax(dim=1) for images, _ in loader])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run folders")
    args = parser.parse_args()
    configs = [read_saved_config(Path(run))["config"] for run in args.runs]
    splits = {(config["val_size"], config["split_seed"]) for config in configs}
    if len(splits) != 1:
        parser.error(f"the runs hold out different validation splits (val_size, split_seed): {sorted(splits)}")
    val_size, split_seed = splits.pop()
    data = load_splits(val_size=val_size, split_seed=split_seed)
    models = [load_model(run) for run in args.runs]
    for name in ("val", "test"):
        split = getattr(data, name)
        outputs = [softmax_outputs(model, split) for model in models]
        for run, output in zip(args.runs, outputs, strict=True):
            print(f"{name:4}  {(output.argmax(1) == split.labels).float().mean().item():.4f}  {run}")
        ensemble = torch.stack(outputs).mean(dim=0)
        print(f"{name:4}  {(ensemble.argmax(1) == split.labels).float().mean().item():.4f}  ensemble of {len(models)}")


if __name__ == "__main__":
    main()
