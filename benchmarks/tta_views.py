"""Issue 29: how much more test-time views buy a trained run than the mirror image alone.

    python benchmarks/budget_candidates.py --seeds 42 43 44 --only as-is crops --out RUNS   # the runs to score
    python benchmarks/tta_views.py RUNS/best-seed42 RUNS/best-seed43 RUNS/best-seed44
    python benchmarks/tta_views.py RUNS/crops-seed42 RUNS/crops-seed43 RUNS/crops-seed44

`best` and `top` already average each image with its mirror image (`tta_flip`). Views that cost no
training time are a lever for a time budget (the budget counts training and validation): this script
scores a finished run's best weights on the validation and test splits with more views, each image
also shifted by one pixel (the empty edge filled with the background, as `crop_padding` fills it),
and prints every combination's accuracy. Choose on validation; the test column is printed beside it.
"flip (as trained)" repeats the run's own figures: a check that the views are scored as the run scored.
"""

from __future__ import annotations

import argparse
import statistics

import torch

from fmnist import load_model, load_splits
from fmnist.data.loader import normalize
from fmnist.training.views import ONE_PIXEL_SHIFTS, shifted

# (dy, dx) shifts of one pixel, the package's eight (`--tta-shift`): four along the axes, then four
# diagonal; each view is also taken mirrored.
AXIS_SHIFTS, DIAGONAL_SHIFTS = ONE_PIXEL_SHIFTS[:4], ONE_PIXEL_SHIFTS[4:]
# name: (shifts, mirrored too, the unshifted views' share of the average: None for an equal share each,
# and optionally "replicate": the uncovered edge filled with the nearest edge pixels instead of black).
# airbench's test-time views are the third kind: the image and its mirror weigh half, and the two
# diagonal shifts (each mirrored) the other half.
VIEW_SETS = {
    "plain": ([], False, None),
    "flip (as trained)": ([], True, None),
    "flip + 4 axis shifts": (AXIS_SHIFTS, True, None),
    "flip + 2 diagonal shifts": (DIAGONAL_SHIFTS[:2], True, None),
    "flip + 4 diagonal shifts": (DIAGONAL_SHIFTS, True, None),
    "flip + all 8 shifts": (AXIS_SHIFTS + DIAGONAL_SHIFTS, True, None),
    "flip half, 2 diagonal half": (DIAGONAL_SHIFTS[:2], True, 0.5),
    "flip half, 4 axis half": (AXIS_SHIFTS, True, 0.5),
    "flip half, all 8 half": (AXIS_SHIFTS + DIAGONAL_SHIFTS, True, 0.5),
    "flip + all 8, edges repeated": (AXIS_SHIFTS + DIAGONAL_SHIFTS, True, None, "replicate"),
    "flip half, 2 diag half, rep.": (DIAGONAL_SHIFTS[:2], True, 0.5, "replicate"),
}


def black_edged(images: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """uint8 (N, 28, 28) images moved by (dy, dx) pixels, the uncovered edge black (the background, as
    `crop_padding` fills it). The other edge, the nearest pixels repeated, is the package's own
    `fmnist.training.views.shifted` (what `--tta-shift` uses)."""
    out = torch.zeros_like(images)
    height, width = images.shape[1:]
    out[:, max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        images[:, max(-dy, 0):height + min(-dy, 0), max(-dx, 0):width + min(-dx, 0)]
    return out


@torch.inference_mode()
def view_logits(network, images: torch.Tensor, mean: float, std: float, shift, mirrored: bool,
                edge: str = "black") -> torch.Tensor:
    if edge == "replicate":  # repeating an edge commutes with normalizing, so shift the normalized batch
        pixels = shifted(normalize(images, mean, std), *shift)
    else:
        pixels = normalize(black_edged(images, *shift), mean, std)
    pixels = pixels.contiguous(memory_format=torch.channels_last)
    if mirrored:
        pixels = pixels.flip(3)
    return torch.cat([network(batch).float() for batch in pixels.split(500)])


def accuracies(run_dir: str, splits) -> dict[str, tuple[float, float]]:
    model = load_model(run_dir, calibrate=False)
    scores = {}
    logits = {}
    for split_name in ("val", "test"):
        split = getattr(splits, split_name)
        views = {}
        for shift in [(0, 0), *AXIS_SHIFTS, *DIAGONAL_SHIFTS]:
            for mirrored in (False, True):
                views[shift, mirrored] = view_logits(model.network, split.images, model.mean, model.std, shift,
                                                     mirrored)
                if shift != (0, 0):
                    views[shift, mirrored, "replicate"] = view_logits(
                        model.network, split.images, model.mean, model.std, shift, mirrored, "replicate")
        logits[split_name] = (views, split.labels)
    for name, (shifts, flip, centre_share, *edge) in VIEW_SETS.items():
        row = []
        mirrorings = (False, True) if flip else (False,)
        for split_name in ("val", "test"):
            views, labels = logits[split_name]
            centre = [views[(0, 0), mirrored] for mirrored in mirrorings]
            moved = [views[(shift, mirrored, *edge)] for shift in shifts for mirrored in mirrorings]
            if centre_share is None or not moved:
                average = torch.stack(centre + moved).mean(dim=0)  # logits averaged, as predict_logits does
            else:
                average = (centre_share * torch.stack(centre).mean(dim=0)
                           + (1 - centre_share) * torch.stack(moved).mean(dim=0))
            row.append((average.argmax(dim=1) == labels).float().mean().item())
        scores[name] = tuple(row)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run folders")
    args = parser.parse_args()
    splits = load_splits()
    table = {name: [] for name in VIEW_SETS}
    for run_dir in args.runs:
        print(run_dir, flush=True)
        for name, (val, test) in accuracies(run_dir, splits).items():
            table[name].append((val, test))
            print(f"  {name:<26} validation {val:.4f}  test {test:.4f}", flush=True)
    print(f"\nmean ± std over {len(args.runs)} runs")
    for name, rows in table.items():
        cells = []
        for column in (0, 1):
            values = [row[column] for row in rows]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.4f} ± {spread:.4f}")
        print(f"  {name:<26} validation {cells[0]}  test {cells[1]}")


if __name__ == "__main__":
    main()
