"""Issue 29's last two training levers for `best`'s 5-minute budget, measured against the plain run in
the same time: sharpness-aware minimization (SAM) and distillation from the run's own earlier snapshot.

    python benchmarks/sharpness_and_distillation.py --seeds 42 43 44
    python benchmarks/sharpness_and_distillation.py --seeds 1 --limit-batches 5 --plain-epochs 2 --sam-epochs 1 \\
        --distill-epochs 2   # a smoke test of the script

The variants take turns per seed (plain, SAM, distillation), so a machine that drifts affects them alike.
Each gets the epochs that cost about what the plain run's 11 cost (the epochs `best`'s 5-minute budget plans
here), and the seconds each trained are printed beside its figures, so the equal time can be checked:

- **SAM** (Foret et al., 2021): every step first climbs to the worst point within a radius rho of the
  weights (along the gradient), takes the gradient there, and steps from the original weights with it.
  Two forward and backward passes a step, so it gets about half the epochs.
- **Distillation from a snapshot**: at half of the run's steps the weights are copied and frozen; from then on
  the loss adds the KL divergence to that snapshot's softened predictions on the same augmented batch (the
  snapshot's forward pass costs about a third of a step, paid in epochs).

Selection is on the validation split; the test figures are printed beside them, not chosen on. A lever
measured, not a feature: BENCHMARKS.md (issue 29) quotes the figures.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from fmnist.data.splits import load_splits
from fmnist.training.build import build_training
from fmnist.training.config import build_config
from fmnist.training.loop import evaluate, fit
from fmnist.training.runtime import seed_everything

RHO = 0.05  # SAM's radius: the value its authors used with SGD on CIFAR
TEMPERATURE, DISTILL_WEIGHT = 4.0, 0.5  # Hinton et al.'s softening; half the loss from the snapshot


class LastBatch:
    """Remembers the images the model saw last and the labels the loss saw last: SAM's second pass and the
    snapshot's predictions need the very batch (augmented) that the loop's step used."""

    def __init__(self, model: nn.Module):
        self.images = self.labels = None
        model.register_forward_pre_hook(self.remember_images)

    def remember_images(self, module, inputs) -> None:
        self.images = inputs[0]


@contextmanager
def batchnorm_statistics_frozen(model: nn.Module) -> Iterator[None]:
    """BatchNorm's running statistics left as they are (momentum 0) inside: SAM's second pass must not
    count its batch twice."""
    batchnorms = [module for module in model.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    momenta = [module.momentum for module in batchnorms]
    for module in batchnorms:
        module.momentum = 0.0
    try:
        yield
    finally:
        for module, momentum in zip(batchnorms, momenta, strict=True):
            module.momentum = momentum


class SharpnessAware(torch.optim.Optimizer):
    """SAM around the recipe's own optimizer, which keeps its parameter groups (and so its schedule)."""

    def __init__(self, base: torch.optim.Optimizer, model: nn.Module, loss_fn, batch: LastBatch,
                 autocast: torch.dtype | None, rho: float):
        super().__init__([p for group in base.param_groups for p in group["params"]], {"rho": rho})
        self.base, self.model, self.loss_fn, self.batch, self.autocast, self.rho = (
            base, model, loss_fn, batch, autocast, rho)
        self.param_groups = base.param_groups

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.norm(torch.stack([p.grad.norm() for p in params]))
        climbs = [p.grad * (self.rho / (norm + 1e-12)) for p in params]
        for p, climb in zip(params, climbs, strict=True):
            p.add_(climb)
            p.grad = None
        with batchnorm_statistics_frozen(self.model), torch.enable_grad(), \
                torch.autocast("cpu", dtype=self.autocast, enabled=self.autocast is not None):
            self.loss_fn(self.model(self.batch.images), self.batch.labels).backward()
        for p, climb in zip(params, climbs, strict=True):
            p.sub_(climb)
        return self.base.step()


class SnapshotDistillation:
    """The recipe's loss, plus (once a snapshot is taken) the KL divergence to its softened predictions."""

    def __init__(self, loss_fn, batch: LastBatch, autocast: torch.dtype | None):
        self.loss_fn, self.batch, self.autocast, self.teacher = loss_fn, batch, autocast, None

    def take_snapshot(self, model: nn.Module) -> None:
        self.teacher = copy.deepcopy(model).eval()
        for parameter in self.teacher.parameters():
            parameter.requires_grad_(False)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.batch.labels = labels
        loss = self.loss_fn(logits, labels)
        if self.teacher is None or not torch.is_grad_enabled():
            return loss
        with torch.no_grad(), torch.autocast("cpu", dtype=self.autocast, enabled=self.autocast is not None):
            teacher_logits = self.teacher(self.batch.images)
        soft = F.kl_div(F.log_softmax(logits.float() / TEMPERATURE, dim=1),
                        F.softmax(teacher_logits.float() / TEMPERATURE, dim=1), reduction="batchmean")
        return (1 - DISTILL_WEIGHT) * loss + DISTILL_WEIGHT * TEMPERATURE ** 2 * soft


def one_run(variant: str, epochs: int, seed: int, limit_batches: int | None) -> tuple[float, float, float]:
    config = build_config(overrides={"recipe": "best", "epochs": epochs, "seed": seed, "limit_batches": limit_batches})
    seed_everything(config.seed, config.deterministic)
    data = load_splits(config.data_dir, config.val_size, config.split_seed)
    training = build_training(config, data.train, data.val, data.test)
    model, optimization = training.model, training.optimization
    batch = LastBatch(model)
    loss = SnapshotDistillation(optimization.loss_fn, batch, optimization.autocast)
    optimization.loss_fn = loss  # records the labels; distils only once a snapshot is taken
    on_step = None
    if variant == "SAM":
        optimization.optimizer = SharpnessAware(optimization.optimizer, model, loss, batch, optimization.autocast, RHO)
    elif variant == "distillation":
        snapshot_step, steps = epochs * len(training.train_loader) // 2, [0]

        def on_step(_loss, _images) -> None:
            steps[0] += 1
            if steps[0] == snapshot_step:
                loss.take_snapshot(model)
    started = time.perf_counter()
    fit(model, training.train_loader, training.val_loader, optimization, epochs, flip_tta=config.tta_flip,
        on_step=on_step)
    seconds = time.perf_counter() - started
    validation = evaluate(model, training.val_loader, config.tta_flip).accuracy
    test = evaluate(model, training.test_loader, config.tta_flip).accuracy
    print(f"  seed {seed}  {variant:<13} {epochs:>2} epochs in {seconds:5.0f} s  validation {validation:.4f}  "
          f"test {test:.4f}", flush=True)
    return validation, test, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--plain-epochs", type=int, default=11, help="the epochs `best`'s 5-minute budget plans")
    parser.add_argument("--sam-epochs", type=int, default=6, help="about the plain run's time at two passes a step")
    parser.add_argument("--distill-epochs", type=int, default=10,
                        help="about the plain run's time with the snapshot's forward pass in the second half")
    parser.add_argument("--limit-batches", type=int, help="training batches per epoch (a smoke test)")
    args = parser.parse_args()
    variants = {"plain": args.plain_epochs, "SAM": args.sam_epochs, "distillation": args.distill_epochs}
    results = {variant: [] for variant in variants}
    for seed in args.seeds:
        for variant, epochs in variants.items():
            results[variant].append(one_run(variant, epochs, seed, args.limit_batches))
    print(f"\nbest, seeds {' '.join(map(str, args.seeds))}: mean ± std")
    for variant, runs in results.items():
        columns = []
        for index, name in enumerate(("validation", "test", "seconds")):
            values = [run[index] for run in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            columns.append(f"{name} {statistics.mean(values):.4f} ± {spread:.4f}" if name != "seconds"
                           else f"trained {statistics.mean(values):.0f} s")
        print(f"  {variant:<13} {variants[variant]:>2} epochs  " + "  ".join(columns))


if __name__ == "__main__":
    main()
