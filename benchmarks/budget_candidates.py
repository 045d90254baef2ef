"""Issue 29: networks and settings for a recipe's time budget, each trained the way users train it.

    python benchmarks/budget_candidates.py --seeds 42 --out /tmp/best-candidates          # `best`'s screen
    python benchmarks/budget_candidates.py --seeds 43 44 --only as-is fast-vgg-24 --out /tmp/best-candidates
    python benchmarks/budget_candidates.py --recipe top --seeds 42 --only erase-0.5 as-is --out /tmp/top
    python benchmarks/budget_candidates.py --seeds 1 --time-budget 20s --limit-batches 5 --out /tmp/smoke

Every candidate is `fmnist train --recipe R --time-budget B` (R `best` and B its 5 minutes unless given)
with a few settings changed; `as-is` changes none. Each runs through the public API (`fmnist.train`), so the
budget's planner fits its schedule to the budget: a cheaper network gets more epochs, a dearer one fewer.
For `best` the levers tried are the network's width and depth, the precision and batch size it trains in,
and crops, after the training tricks measured before (all lost); then four settings of airbench's short
CIFAR-10 runs (GELU, label smoothing 0.2) and of the schedule (a higher peak, more weight decay); then
airbench's whitened first layer, which won and is `best`'s network now (whiten-vgg); then its alternating
flips (adopted) and its partial identity start for the later convs. For
`top`, whose 30 minutes end with training accuracy well above validation, stronger regularization, then
the whitened first layer in its res-cnn (whiten-res), which won too; for `top-long`, a wider network. The
candidates take turns per seed, so a machine that drifts affects them alike.

Selection is on the validation split; test figures are printed beside them, not chosen on. Each run is a
normal run folder under --out (its report included). BENCHMARKS.md (issue 29) quotes the figures.
"""

from __future__ import annotations

import argparse
import functools
import statistics

import torch
from torch import nn

from fmnist import TrainConfig, train
from fmnist.models import register_model
from fmnist.models.fast_cnn import conv_block, conv_bn_relu, fast_vgg, whiten_vgg
from fmnist.models.res_cnn import res_cnn
from fmnist.models.whitening import PatchWhitening
from fmnist.training.recipes import RECIPES

# Widths of fast-vgg that no recipe uses, registered here only (`best` is width 32).
for width in (24, 40):
    register_model(f"fast-vgg-{width}")(functools.partial(fast_vgg, width=width))


@register_model("fast-vgg-deep")
def fast_vgg_deep(num_classes: int = 10, width: int = 32) -> nn.Module:
    """fast-vgg with a third conv at 7x7 (1.33x the multiply-adds): depth where the image is smallest."""
    return nn.Sequential(
        *conv_block(1, width),
        *conv_bn_relu(width, 2 * width),
        *conv_block(2 * width, 2 * width),
        *conv_bn_relu(2 * width, 4 * width),
        *conv_bn_relu(4 * width, 4 * width),
        *conv_block(4 * width, 4 * width),
        nn.Flatten(),
        nn.Linear(4 * width * 3 * 3, num_classes),
    )


@register_model("fast-vgg-gelu")
def fast_vgg_gelu(num_classes: int = 10, width: int = 32) -> nn.Module:
    """fast-vgg with GELU in place of ReLU (airbench's activation for its short CIFAR-10 runs)."""
    network = fast_vgg(num_classes, width)
    return nn.Sequential(*(nn.GELU() if isinstance(layer, nn.ReLU) else layer for layer in network))


# Residual networks at fast-vgg's cost (about 21 M multiply-adds against its 22.0 M): a different kind
# of network for the same time per epoch. res-cnn itself (36 M) fitted only 6 epochs in five minutes.
register_model("res-cnn-48-96")(functools.partial(res_cnn, widths=(32, 48, 96)))  # 7 convs, narrower
register_model("res-cnn-7x7")(functools.partial(res_cnn, blocks=(0, 1)))  # 5 convs, the skip at 7x7 only


class LearnedWhitening(PatchWhitening):
    """PatchWhitening whose whitening filters are only where training starts: learned like the other filters."""

    def __init__(self, out_channels: int, kernel_size: int = 3):
        super().__init__(out_channels, kernel_size)
        fixed = self.whitening
        del self.whitening  # a buffer until here
        self.whitening = nn.Parameter(fixed)


@register_model("whiten-vgg-init")
def whiten_vgg_init(num_classes: int = 10, width: int = 32) -> nn.Module:
    """whiten-vgg with all 32 first filters learned, 18 of them starting from the whitening basis."""
    network = fast_vgg(num_classes, width)
    network[0] = LearnedWhitening(width)
    return network


@register_model("whiten-vgg-dirac")
def whiten_vgg_dirac(num_classes: int = 10, width: int = 32) -> nn.Module:
    """whiten-vgg whose later convs start as partly the identity (airbench): each conv's first filters, one per
    input channel, pass that channel through (a centred 1 in the 3x3), the rest start at random."""
    network = whiten_vgg(num_classes, width)
    for layer in list(network)[1:]:
        if isinstance(layer, nn.Conv2d) and layer.out_channels >= layer.in_channels:
            with torch.no_grad():
                nn.init.dirac_(layer.weight[:layer.in_channels])
    return network


CANDIDATES = {
    "as-is": {},  # the recipe unchanged: the baseline every screen runs in turns with
    "fp32": {"amp": "none"},  # fewer epochs; one seed once did better per epoch in fp32 (BENCHMARKS.md)
    "fast-vgg-24": {"model": "fast-vgg-24"},  # 0.56x the multiply-adds: more epochs
    "fast-vgg-40": {"model": "fast-vgg-40"},  # 1.56x: fewer, wider
    "fast-vgg-deep": {"model": "fast-vgg-deep"},  # 1.33x: fewer, deeper
    "batch-128": {"batch_size": 128, "max_lr": 0.1},  # twice the steps, at the rate `quick` uses for 128
    "crops": {"crop_padding": 1},  # `top`'s 1-pixel random crops on top of the flips
    # The three that came out ahead on seed 42 by up to 0.0018 (validation), together.
    "24-128-crops": {"model": "fast-vgg-24", "batch_size": 128, "max_lr": 0.1, "crop_padding": 1},
    # One at a time: two settings of airbench (Keller Jordan's fast CIFAR-10 training), then the peak and the decay.
    "gelu": {"model": "fast-vgg-gelu"},  # a smoother activation, a little dearer per image
    "smoothing-0.2": {"label_smoothing": 0.2},  # airbench's smoothing; `best` has 0.1
    "peak-0.4": {"max_lr": 0.4},  # twice `best`'s OneCycle peak
    "decay-1e-3": {"weight_decay": 1e-3},  # twice `best`'s weight decay
    "res-48-96": {"model": "res-cnn-48-96"},
    "res-7x7": {"model": "res-cnn-7x7"},
    # airbench's whitened first layer: fixed (whiten-vgg, adopted for `best`: `as-is` since), or only
    # where training starts; and `best`'s network before it.
    "whitened-init": {"model": "whiten-vgg-init"},
    "fast-vgg": {"model": "fast-vgg"},
    # The same layer in `top`'s res-cnn, whose first conv is also one channel to 32 at 28x28 (whiten-res,
    # adopted for `top`: `as-is` there since), and `top`'s network before it.
    "whiten-res": {"model": "whiten-res"},
    "res-cnn": {"model": "res-cnn"},
    # For `top` (30 minutes): random erasing at the published setting (Zhong et al.), twice `top`'s 0.25.
    "erase-0.5": {"erase_prob": 0.5},
    "erase-0": {"erase_prob": 0.0},  # the other way: flips and crops only, if 30 minutes underfit
    # airbench's alternating flips, each image mirrored in every other epoch (adopted for `best`: `as-is` there
    # since), and the random flips `best` had before.
    "alternate-flips": {"alternate_flips": True},
    "random-flips": {"alternate_flips": False},
    "identity-init": {"model": "whiten-vgg-dirac"},  # airbench's partial identity start for the convs after the first
    # For `top-long` (60 minutes), whose res-cnn reaches its ceiling in half the hour on an AMX CPU: the wider
    # network (2.2x the multiply-adds), which lost at 30 minutes on a Zen 4 in half res-cnn's epochs.
    "res-cnn-96": {"model": "res-cnn-96"},
}


def one_run(name: str, seed: int, args) -> dict:
    overrides = {**CANDIDATES[name], "time_budget": args.time_budget, "seed": seed,
                 "out": args.out, "name": f"{name}-seed{seed}", "limit_batches": args.limit_batches}
    run = train(TrainConfig.from_recipe(args.recipe, **overrides))
    summary = run.summary
    row = {"epochs": summary["epochs"], "steps": summary["trained_steps"], "used": summary["budget_used"],
           "validation": summary["best_val_accuracy"], "test": summary["test_accuracy"]}
    # The steps say how fast the machine ran at the moment: more steps is what pays in a budget.
    print(f"  seed {seed}  {name:<13} {row['epochs']:>2} epochs  {row['steps']:>6,} steps  "
          f"{100 * row['used']:5.1f}% of the budget  validation {row['validation']:.4f}  test {row['test']:.4f}",
          flush=True)
    return row


def mean_and_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {spread:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="best", choices=[name for name, recipe in RECIPES.items() if recipe.budget])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), help="these candidates (default: all)")
    parser.add_argument("--time-budget", help="default: the recipe's own budget (`best`: 5m, `top`: 30m)")
    parser.add_argument("--out", required=True, help="folder for the run folders (names must be free)")
    parser.add_argument("--limit-batches", type=int, help="training batches per epoch (a smoke test)")
    args = parser.parse_args()
    args.time_budget = args.time_budget or RECIPES[args.recipe].budget
    names = args.only or list(CANDIDATES)
    results = {name: [] for name in names}
    for seed in args.seeds:
        for name in names:
            results[name].append(one_run(name, seed, args))
    print(f"\n{args.recipe} at {args.time_budget}, seeds {' '.join(map(str, args.seeds))}: mean ± std")
    for name, rows in results.items():
        epochs = "/".join(str(row["epochs"]) for row in rows)
        steps = "/".join(f"{row['steps']:,}" for row in rows)
        print(f"  {name:<13} epochs {epochs:<9} steps {steps:<20} "
              f"validation {mean_and_spread([row['validation'] for row in rows])}  "
              f"test {mean_and_spread([row['test'] for row in rows])}")


if __name__ == "__main__":
    main()
