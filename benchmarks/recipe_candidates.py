"""The candidates tried while designing the `quick`, `medium` and `best` recipes, one seed each.

    python benchmarks/recipe_candidates.py                 # all of them: about 45 min
    python benchmarks/recipe_candidates.py fast-cnn-48-e16 # one by name

Each candidate is the `fast` recipe with a few settings changed. After every epoch it prints the
training time so far (from the first batch, evaluation not counted) and the test accuracy without
and with flip test-time augmentation, so one run shows both. This is how the recipes were chosen;
their own figures come from `fmnist bench --time-to-accuracy RECIPE --seeds 3`. Run it on an idle
machine.
"""

from __future__ import annotations

import functools
import sys

from fmnist.data.splits import load_splits
from fmnist.models import register_model
from fmnist.models.fast_cnn import fast_cnn
from fmnist.training.build import build_training
from fmnist.training.config import TrainConfig
from fmnist.training.loop import evaluate, train_one_epoch
from fmnist.training.runtime import seed_everything

# Widths of fast-cnn that no recipe uses, registered here only.
for width in (24, 48):
    register_model(f"fast-cnn-{width}")(functools.partial(fast_cnn, width=width))

CANDIDATES = {
    # For `quick` (>= 0.90 within 20 s): how narrow, and which batch size.
    "fast-cnn-e2": {"epochs": 2},
    "fast-cnn-24-e2": {"model": "fast-cnn-24", "epochs": 2},
    "fast-cnn-16-e2": {"model": "fast-cnn-16", "epochs": 2},
    "fast-cnn-16-e2-batch128": {"model": "fast-cnn-16", "epochs": 2, "batch_size": 128, "max_lr": 0.1},
    # For `medium` and `best` (>= 0.93 within 3 min, >= 0.94 within 10 min): longer, wider or deeper.
    "fast-cnn-e10": {"epochs": 10},
    "fast-cnn-e15-crop2": {"epochs": 15, "crop_padding": 2},
    "fast-cnn-48-e10": {"model": "fast-cnn-48", "epochs": 10},
    "fast-cnn-48-e16": {"model": "fast-cnn-48", "epochs": 16},
    "fast-vgg-e12": {"model": "fast-vgg", "epochs": 12},
}


def run_candidate(name: str, data) -> None:
    config = TrainConfig.from_recipe("fast", **CANDIDATES[name])
    seed_everything(config.seed)
    parts = build_training(config, data.train, data.val, data.test)
    seconds = 0.0
    for epoch in range(1, config.epochs + 1):
        stats = train_one_epoch(parts.model, parts.train_loader, parts.optimization)
        seconds += stats.seconds
        plain = evaluate(parts.model, parts.test_loader).accuracy
        mirrored = evaluate(parts.model, parts.test_loader, flip_tta=True).accuracy
        print(f"{name:<26} epoch {epoch:>2}  {seconds:6.1f} s  test accuracy {plain:.4f}  with flip TTA {mirrored:.4f}",
              flush=True)


if __name__ == "__main__":
    names = sys.argv[1:] or list(CANDIDATES)
    unknown = [name for name in names if name not in CANDIDATES]
    if unknown:
        sys.exit(f"unknown candidate(s) {', '.join(unknown)}; choose from {', '.join(CANDIDATES)}")
    splits = load_splits(None, 5000, 0)
    for candidate in names:
        run_candidate(candidate, splits)
