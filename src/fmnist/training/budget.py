"""Training to a wall-clock budget (`--time-budget 5m`): measure this machine, then plan the steps.

Users have minutes, not epochs, and CPUs differ by 1.5x or more: an epoch count that fits 30 minutes on
one machine misses on the next. So a budget is planned once, at the start. A few training steps and
validation batches are timed on a throwaway copy of the run (the run itself then starts from its seed
as if nothing had happened), and the number of steps is chosen so that training, the validation pass
after each epoch and the checkpoints end within the budget. The schedule is built for exactly those
steps, so the learning rate anneals to its end at the budget instead of being cut off half-way: the
lesson of budgeted training (Li, Yumer and Ramanan, ICLR 2020). The plan is saved with the run, and a
resumed run finishes the same plan, whatever the speed of the machine it resumes on.
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fmnist.arguments import argument, setting
from fmnist.data.splits import Split
from fmnist.errors import ConfigError
from fmnist.files import atomic_torch_save, atomic_write_bytes
from fmnist.training.build import build_training
from fmnist.training.config import TrainConfig
from fmnist.training.duration import format_duration, parse_duration
from fmnist.training.loop import evaluate, train_one_epoch, weights_to_use
from fmnist.training.runtime import seed_everything

logger = logging.getLogger(__name__)

# Measured step times ran 5-13% slower over whole runs than in the first seconds (the first epoch is
# the fastest on this lab's VMs: BENCHMARKS.md): plan for this much less than the budget leaves.
SAFETY_MARGIN = 0.10
# The first steps allocate memory and choose kernels (and compile, with --compile): never timed.
WARMUP_STEPS = 5
# Steps are timed in chunks of CHUNK_STEPS for about MEASURE_SECONDS (or 3% of a short budget), at
# least MIN_CHUNKS of them; a step's time is the median chunk's, so that one slow moment (another
# process, a page fault storm) does not shrink the whole plan.
CHUNK_STEPS = 5
MEASURE_SECONDS = 5.0
MIN_CHUNKS = 3
# Validation batches timed; the whole pass is scaled up from them.
EVAL_PROBE_BATCHES = 4
# A plan with fewer steps than this is no training run: the budget is refused as too short.
MIN_STEPS = 20


@dataclass(frozen=True)
class TimePlan:
    """How a budget is spent: measured costs, and the steps that fit. Saved in config.json."""

    budget: str  # as the user wrote it: "5m"
    budget_seconds: float
    measure_seconds: float  # spent measuring, inside the budget
    step_seconds: float  # one training step (forward, backward, update, augmentation)
    epoch_end_seconds: float  # one validation pass and the checkpoints after each epoch
    steps_per_epoch: int
    total_steps: int

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def last_epoch_steps(self) -> int:
        return self.total_steps - (self.epochs - 1) * self.steps_per_epoch

    def planned_seconds(self) -> float:
        """What the plan expects to spend: measuring, the steps, and each epoch's validation."""
        return self.measure_seconds + self.total_steps * self.step_seconds + self.epochs * self.epoch_end_seconds

    def to_dict(self) -> dict:
        return {**asdict(self), "epochs": self.epochs, "last_epoch_steps": self.last_epoch_steps}

    @classmethod
    def from_dict(cls, saved: dict) -> TimePlan:
        names = ("budget", "budget_seconds", "measure_seconds", "step_seconds", "epoch_end_seconds",
                 "steps_per_epoch", "total_steps")
        return cls(**{name: saved[name] for name in names})

    def describe(self) -> str:
        last = "" if self.last_epoch_steps == self.steps_per_epoch else f", the last cut to {self.last_epoch_steps}"
        return (f"time budget {self.budget}: a step takes {self.step_seconds * 1000:.1f} ms and each epoch's "
                f"validation and checkpoints {self.epoch_end_seconds:.2f} s here (measured in "
                f"{self.measure_seconds:.1f} s); planned {self.total_steps:,} steps = {self.epochs} epochs of "
                f"{self.steps_per_epoch}{last}, ending after about {self.planned_seconds():.0f} s")


def overrun_line(plan: TimePlan, used_seconds: float, train_seconds: float) -> str | None:
    """One line for a run that took longer than its budget, None within it. The plan trusts the costs it
    measured at the start; a machine that slows down later (another tenant of the VM, heat, a busy disk)
    overruns it, and the user should hear by how much and which cost grew rather than find it in
    summary.json. `train_seconds`: the training steps' time; the rest after measuring went to the
    validation passes and checkpoints."""
    if used_seconds <= plan.budget_seconds:
        return None
    over = used_seconds - plan.budget_seconds
    average_step = train_seconds / plan.total_steps
    average_epoch_end = (used_seconds - plan.measure_seconds - train_seconds) / plan.epochs
    return (f"time budget {plan.budget}: training and validation took {used_seconds:,.0f} s, {over:,.0f} s "
            f"({over / plan.budget_seconds:.1%}) over: a step took {average_step * 1000:.1f} ms on average against "
            f"the {plan.step_seconds * 1000:.1f} ms measured at the start, and each epoch's validation and "
            f"checkpoints {average_epoch_end:.2f} s against {plan.epoch_end_seconds:.2f} s; the plan keeps "
            f"{SAFETY_MARGIN:.0%} in hand for a machine that gets slower")


def plan_steps(budget: str, measure_seconds: float, step_seconds: float, epoch_end_seconds: float,
               steps_per_epoch: int) -> TimePlan:
    """The most steps whose training and validation fit in what the budget has left after measuring.

    Whole epochs first; then, if time is left for a validation pass and some steps, a last epoch
    cut short. Refused (ConfigError) when fewer than MIN_STEPS fit.
    """
    budget_seconds = parse_duration(budget)
    available = (budget_seconds - measure_seconds) * (1 - SAFETY_MARGIN)
    epoch_seconds = steps_per_epoch * step_seconds + epoch_end_seconds
    full_epochs = max(0, math.floor(available / epoch_seconds))
    left_for_last = available - full_epochs * epoch_seconds - epoch_end_seconds
    extra_steps = min(steps_per_epoch - 1, math.floor(left_for_last / step_seconds)) if left_for_last > 0 else 0
    total_steps = full_epochs * steps_per_epoch + extra_steps
    if total_steps < MIN_STEPS:
        needed = measure_seconds + (MIN_STEPS * step_seconds
                                    + math.ceil(MIN_STEPS / steps_per_epoch) * epoch_end_seconds) / (1 - SAFETY_MARGIN)
        raise ConfigError(
            f"{argument('time_budget', budget, as_typed=True)}: too short for this run on this machine: measuring took "
            f"{measure_seconds:.1f} s, a step takes {step_seconds * 1000:.0f} ms and each validation "
            f"{epoch_end_seconds:.1f} s, so the {MIN_STEPS} steps of the shortest run need about {needed:.0f} s; "
            f"give {setting('time_budget', format_duration(math.ceil(needed)))} or more", "time_budget")
    return TimePlan(budget, budget_seconds, measure_seconds, step_seconds, epoch_end_seconds, steps_per_epoch,
                    total_steps)


def plan_time_budget(config: TrainConfig, train: Split, val: Split, test: Split) -> TimePlan:
    """Time this run's steps and validation here, on a throwaway copy, and plan config.time_budget.

    The copy is built like the run (model, augmentation, mixing, EMA, precision) and seeded like it, so
    what is timed is what will run; the caller seeds again before building the run itself.
    """
    started = time.perf_counter()
    budget_seconds = parse_duration(config.time_budget)
    seed_everything(config.seed, config.deterministic)
    probe = build_training(config, train, val, test, total_steps=MIN_STEPS)
    optimization = probe.optimization
    optimization.scheduler = None  # the probe's rate does not matter, and its schedule would run out
    count_steps(probe, WARMUP_STEPS)
    step_seconds = median_step_seconds(probe, min(MEASURE_SECONDS, 0.03 * budget_seconds))
    epoch_end_seconds = validation_seconds(probe, config.tta_flip) + checkpoint_seconds(probe, config.out)
    plan = plan_steps(config.time_budget, time.perf_counter() - started, step_seconds, epoch_end_seconds,
                      len(probe.train_loader))
    logger.info("%s", plan.describe())
    return plan


def median_step_seconds(probe, measure_for: float) -> float:
    """A training step's time: the median of CHUNK_STEPS-step chunks timed for about `measure_for` seconds."""
    chunks = []
    started = time.perf_counter()
    while len(chunks) < MIN_CHUNKS or time.perf_counter() - started < measure_for:
        steps, seconds = count_steps(probe, CHUNK_STEPS)
        chunks.append(seconds / steps)
    return statistics.median(chunks)


def count_steps(probe, steps: int) -> tuple[int, float]:
    """Run `steps` training steps (over as many passes as the loader needs); (steps, seconds)."""
    done, seconds = 0, 0.0
    while done < steps:
        stats = train_one_epoch(probe.model, probe.train_loader, probe.optimization,
                                max_batches=min(steps - done, len(probe.train_loader)))
        done += len(stats.learning_rates)
        seconds += stats.seconds
    return done, seconds


def validation_seconds(probe, flip_tta: bool) -> float:
    """One validation pass, scaled up from its first EVAL_PROBE_BATCHES batches."""
    batches = min(EVAL_PROBE_BATCHES, len(probe.val_loader))
    network = weights_to_use(probe.model, probe.optimization)
    timed = evaluate(network, itertools.islice(probe.val_loader, batches), flip_tta)
    return timed.seconds * len(probe.val_loader) / batches


def checkpoint_seconds(probe, out: str) -> float:
    """Writing best.pt, last.pt and the metrics after an epoch: serialized and written atomically (with
    fsync) as the run folder's are, into a scratch folder on the same disk when the runs folder exists."""
    scratch_parent = out if Path(out).is_dir() else None
    with tempfile.TemporaryDirectory(dir=scratch_parent, prefix=".budget-") as scratch:
        start = time.perf_counter()
        state = {"model": probe.model.state_dict(), "optimizer": probe.optimization.optimizer.state_dict()}
        for name in ("probe-best.pt", "probe-last.pt"):  # not the run's names: the kill points count those
            atomic_torch_save(state, Path(scratch) / name)
        atomic_write_bytes(Path(scratch) / "probe-metrics.csv", b"0" * 4096)
        return time.perf_counter() - start
