"""Training to a wall-clock budget (`--time-budget 5m`): measure this machine, then plan the steps.

Users have minutes, not epochs, and CPUs differ by 1.5x or more: an epoch count that fits 30 minutes on
one machine misses on the next. So a budget is planned at the start, and again at each epoch's end
from the time really spent (training/replan.py: this module makes the first plan). A few training steps and
validation batches are timed on a throwaway copy of the run (the run itself then starts from its seed
as if nothing had happened), and the number of steps is chosen so that training, the validation pass
after each epoch and the checkpoints end within the budget. With --compile, the copy is compiled as the
run will be: its steps are timed at the compiled speed, and the run's own compilation is planned for.
The schedule is built for exactly those steps, so the learning rate anneals to its end at the budget
instead of being cut off half-way: the lesson of budgeted training (Li, Yumer and Ramanan, ICLR 2020).
The first plan is saved in config.json; the later ones in each checkpoint.
"""

from __future__ import annotations

import io
import itertools
import logging
import math
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from fmnist.arguments import argument, setting
from fmnist.data.loader import endless
from fmnist.data.splits import Split
from fmnist.errors import ConfigError
from fmnist.faults import kill_point
from fmnist.training.build import build_training
from fmnist.training.config import TrainConfig
from fmnist.training.duration import format_duration, parse_time_budget
from fmnist.training.loop import evaluate, train_one_epoch, weights_to_use
from fmnist.training.runtime import seed_everything

logger = logging.getLogger(__name__)

# What a plan keeps in hand: a share of the whole budget (the jitter of the epoch that ends the run) and a
# share of the time still ahead (a machine that slows down later: the further the end, the more the
# speed can drift). About 5% at the start; at the start of the last epoch, little more than 1%. The plan
# is made again at each epoch's end from the speed measured in that epoch (training/replan.py), so a
# machine slower than at the start (whole runs ran 5-13% slower than their first seconds on this
# lab's VMs: BENCHMARKS.md) costs steps, not the budget.
RESERVE_OF_BUDGET = 0.01
RESERVE_OF_TIME_LEFT = 0.04
# The first steps allocate memory and choose kernels (and compile, with --compile): not timed as steps.
# With --compile, their time beyond that of ordinary steps is the compilation the run will pay again.
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


def epochs_of(total_steps: int, steps_per_epoch: int) -> int:
    """The epochs `total_steps` steps take, the last one perhaps cut short."""
    return math.ceil(total_steps / steps_per_epoch)


def last_epoch_steps_of(total_steps: int, steps_per_epoch: int) -> int:
    return total_steps - (epochs_of(total_steps, steps_per_epoch) - 1) * steps_per_epoch


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
    compile_seconds: float = 0.0  # --compile: the run compiles its model again, inside the budget

    @property
    def epochs(self) -> int:
        return epochs_of(self.total_steps, self.steps_per_epoch)

    @property
    def last_epoch_steps(self) -> int:
        return last_epoch_steps_of(self.total_steps, self.steps_per_epoch)

    def planned_seconds(self) -> float:
        """What the plan expects to spend: measuring, compiling, the steps, and each epoch's validation."""
        return (self.measure_seconds + self.compile_seconds + self.total_steps * self.step_seconds
                + self.epochs * self.epoch_end_seconds)

    def to_dict(self) -> dict:
        return {**asdict(self), "epochs": self.epochs, "last_epoch_steps": self.last_epoch_steps}

    @classmethod
    def from_dict(cls, saved) -> TimePlan:
        """The plan config.json recorded, checked key by key: a hand-edited plan is a ConfigError naming
        the key (field `time_plan.KEY`), never a KeyError or a run that trains to another plan."""
        if not isinstance(saved, dict):
            raise ConfigError(f"time_plan {saved!r}: should be a table of {', '.join(SAVED_PLAN_KEYS)}", "time_plan")
        for name in saved:
            if name not in SAVED_PLAN_KEYS:
                raise ConfigError(f"time_plan.{name}: not a key of a time plan (its keys: "
                                  f"{', '.join(SAVED_PLAN_KEYS)})", f"time_plan.{name}")
        for name in SAVED_PLAN_KEYS:
            if name not in saved and name != "compile_seconds":
                raise ConfigError(f"time_plan.{name}: missing", f"time_plan.{name}")
            if name in saved:
                check_plan_value(name, saved[name])
        # Plans of runs before --compile was planned for have no compile_seconds: they compiled nothing in it.
        plan = cls(**{name: saved[name] for name in PLAN_FIELDS if name in saved})
        plan.check_arithmetic(saved)
        return plan

    def check_arithmetic(self, saved: dict) -> None:
        """What plan_steps guarantees, and the derived keys: a plan edited out of shape says where."""

        def require(condition: bool, name: str, rule: str) -> None:
            if not condition:
                raise ConfigError(f"time_plan.{name} {saved[name]!r}: {rule}", f"time_plan.{name}")

        try:
            budget_seconds = parse_time_budget(self.budget)
        except ValueError as error:
            raise ConfigError(f"time_plan.budget {self.budget!r}: {error}", "time_plan.budget") from None
        require(self.budget_seconds == budget_seconds, "budget_seconds", f"should be {budget_seconds:g}, the "
                f"seconds in its budget {self.budget!r}")
        require(self.measure_seconds < self.budget_seconds, "measure_seconds", "should be less than the budget")
        require(self.total_steps >= MIN_STEPS, "total_steps", f"should be at least {MIN_STEPS}")
        require(saved["epochs"] == self.epochs, "epochs", f"should be {self.epochs}: total_steps / steps_per_epoch, "
                "rounded up")
        require(saved["last_epoch_steps"] == self.last_epoch_steps, "last_epoch_steps",
                f"should be {self.last_epoch_steps}, the steps left for the last epoch")
        require(self.planned_seconds() <= self.budget_seconds, "total_steps",
                f"would take about {self.planned_seconds():.0f} s at the measured costs, more than the budget "
                f"of {self.budget_seconds:g} s")

    def describe(self) -> str:
        last = "" if self.last_epoch_steps == self.steps_per_epoch else f", the last cut to {self.last_epoch_steps}"
        compiling = f", compiled steps; compiling takes {self.compile_seconds:.1f} s" if self.compile_seconds else ""
        return (f"time budget {self.budget}: a step takes {self.step_seconds * 1000:.1f} ms and each epoch's "
                f"validation and checkpoints {self.epoch_end_seconds:.2f} s here (measured in "
                f"{self.measure_seconds:.1f} s{compiling}); planned {self.total_steps:,} steps = {self.epochs} "
                f"epochs of {self.steps_per_epoch}{last}, ending after about {self.planned_seconds():.0f} s")


PLAN_FIELDS = ("budget", "budget_seconds", "measure_seconds", "step_seconds", "epoch_end_seconds", "steps_per_epoch",
               "total_steps", "compile_seconds")
SAVED_PLAN_KEYS = (*PLAN_FIELDS, "epochs", "last_epoch_steps")  # the last two follow from the others: to_dict


def check_plan_value(name: str, value) -> None:
    """A saved plan's value of the right type and range (ConfigError naming `time_plan.NAME`)."""
    if name == "budget":
        ok, rule = isinstance(value, str), "should be the budget as written, such as \"5m\""
    elif name in ("steps_per_epoch", "total_steps", "epochs", "last_epoch_steps"):
        # At most 2**53: the plan's arithmetic multiplies them by floats, which hold no larger whole numbers.
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 2**53
        rule = "should be a whole number from 1 to 2**53"
    else:
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if name in ("budget_seconds", "step_seconds"):
            ok, rule = number and value > 0, "should be a finite number of seconds > 0"
        else:
            ok, rule = number and value >= 0, "should be a finite number of seconds >= 0"
    if not ok:
        raise ConfigError(f"time_plan.{name} {value!r}: {rule}", f"time_plan.{name}")


@dataclass(frozen=True)
class SpeedSince:
    """The speed a plan counted on, and the speed of the epochs trained after it: what an overrun is
    explained by. `after_epoch` 0 is the plan made at the start."""

    after_epoch: int
    epochs: int  # trained after the plan
    planned_step_seconds: float
    planned_epoch_end_seconds: float
    step_seconds: float  # on average, over those epochs
    epoch_end_seconds: float  # each epoch's validation and checkpoints, on average


def overrun_line(plan: TimePlan, used_seconds: float, since: SpeedSince) -> str | None:
    """One line for a run that took longer than its budget, None within it. The plan is made again at each
    epoch's end from the speed just measured, so what overruns it is a machine that slowed down after the
    last plan (another tenant of the VM, heat, a busy disk); the user should hear by how much, and the speed
    that plan counted on against the speed it got, rather than find it in summary.json."""
    if used_seconds <= plan.budget_seconds:
        return None
    over = used_seconds - plan.budget_seconds
    which = "the plan made at the start" if since.after_epoch == 0 else \
        f"the last plan, made after epoch {since.after_epoch},"
    after = "the epoch after it" if since.epochs == 1 else f"the {since.epochs} epochs after it"
    slower = (since.step_seconds > since.planned_step_seconds
              or since.epoch_end_seconds > since.planned_epoch_end_seconds)
    return (f"time budget {plan.budget}: training and validation took {used_seconds:,.1f} s, {over:,.1f} s "
            f"({over / plan.budget_seconds:.1%}) over: {which} counted {since.planned_step_seconds * 1000:.1f} ms "
            f"a step and {since.planned_epoch_end_seconds:.2f} s for each epoch's validation and checkpoints; "
            f"{after} took {since.step_seconds * 1000:.1f} ms and {since.epoch_end_seconds:.2f} s"
            + ("; the machine slowed down after that plan was made" if slower else ""))


def time_in_hand(budget_seconds: float, left_seconds: float) -> float:
    """The seconds a plan keeps unspent, when `left_seconds` of the budget are left (see RESERVE_OF_BUDGET)."""
    return RESERVE_OF_BUDGET * budget_seconds + RESERVE_OF_TIME_LEFT * max(0.0, left_seconds)


def steps_that_fit(seconds: float, step_seconds: float, epoch_end_seconds: float, steps_per_epoch: int) -> int:
    """The most training steps that fit in `seconds` with a validation pass after each epoch: whole
    epochs first; then, if time is left for a validation pass and some steps, a last epoch cut short."""
    epoch_seconds = steps_per_epoch * step_seconds + epoch_end_seconds
    full_epochs = max(0, math.floor(seconds / epoch_seconds))
    left_for_last = seconds - full_epochs * epoch_seconds - epoch_end_seconds
    extra_steps = min(steps_per_epoch - 1, math.floor(left_for_last / step_seconds)) if left_for_last > 0 else 0
    return full_epochs * steps_per_epoch + extra_steps


def plan_steps(budget: str, measure_seconds: float, step_seconds: float, epoch_end_seconds: float,
               steps_per_epoch: int, compile_seconds: float = 0.0) -> TimePlan:
    """The first plan: the most steps that fit in what the budget has left after measuring, less the
    time kept in hand. Refused (ConfigError) when fewer than MIN_STEPS fit."""
    try:
        budget_seconds = parse_time_budget(budget)
    except ValueError as error:
        raise ConfigError(f"--time-budget {budget!r}: {error}", "time_budget") from None
    left = budget_seconds - measure_seconds - compile_seconds
    total_steps = steps_that_fit(left - time_in_hand(budget_seconds, left), step_seconds, epoch_end_seconds,
                                 steps_per_epoch)
    if total_steps < MIN_STEPS:
        work = MIN_STEPS * step_seconds + math.ceil(MIN_STEPS / steps_per_epoch) * epoch_end_seconds
        kept = 1 - RESERVE_OF_TIME_LEFT  # solves: (budget - spent) * kept - budget * RESERVE_OF_BUDGET = work
        needed = (work + kept * (measure_seconds + compile_seconds)) / (kept - RESERVE_OF_BUDGET)
        raise ConfigError(
            f"{argument('time_budget', budget, as_typed=True)}: too short for this run on this machine: measuring took "
            f"{measure_seconds:.1f} s, a step takes {step_seconds * 1000:.0f} ms and each validation "
            f"{epoch_end_seconds:.1f} s, so the {MIN_STEPS} steps of the shortest run need about {needed:.0f} s; "
            f"give {setting('time_budget', format_duration(math.ceil(needed)))} or more", "time_budget")
    return TimePlan(budget, budget_seconds, measure_seconds, step_seconds, epoch_end_seconds, steps_per_epoch,
                    total_steps, compile_seconds)


def plan_time_budget(config: TrainConfig, train: Split, val: Split, test: Split) -> TimePlan:
    """Time this run's steps and validation here, on a throwaway copy, and plan config.time_budget.

    The copy is built like the run (model, augmentation, mixing, EMA, precision, compilation) and seeded
    like it, so what is timed is what will run; the caller seeds again before building the run itself.
    """
    started = time.perf_counter()
    budget_seconds = parse_time_budget(config.time_budget)  # checked when the config was made
    seed_everything(config.seed, config.deterministic)
    probe = build_training(config, train, val, test, total_steps=MIN_STEPS)
    optimization = probe.optimization
    optimization.scheduler = None  # the probe's rate does not matter, and its schedule would run out
    # One stream of batches for all that is timed: a new iterator per chunk would time its start as well.
    batches = endless(probe.train_loader)
    network = torch.compile(probe.model) if config.compile else probe.model  # as experiment.run compiles it
    warm_started = time.perf_counter()
    warmed_steps = warm_up_steps(network, probe, batches)
    warmed_batches = warm_up_validation(network, probe, config.tta_flip)
    warm_up_seconds = time.perf_counter() - warm_started
    step_seconds = median_step_seconds(network, probe, batches, min(MEASURE_SECONDS, 0.03 * budget_seconds))
    batch_seconds = validation_batch_seconds(network, probe, config.tta_flip)
    epoch_end_seconds = batch_seconds * len(probe.val_loader) + checkpoint_seconds(probe, config.out)
    compile_seconds = 0.0
    if config.compile:  # what warming up took beyond the same steps and batches at their compiled speed
        compile_seconds = max(0.0, warm_up_seconds - warmed_steps * step_seconds - warmed_batches * batch_seconds)
    plan = plan_steps(config.time_budget, time.perf_counter() - started, step_seconds, epoch_end_seconds,
                      len(probe.train_loader), compile_seconds)
    logger.info("%s", plan.describe())
    return plan


def warm_up_steps(network, probe, batches) -> int:
    """WARMUP_STEPS steps, then one on a batch of the size that ends each epoch, if it differs: compiled code
    and autotuned kernels are made per batch shape, on the probe as in the run. Returns the steps taken."""
    train_one_epoch(network, itertools.islice(batches, WARMUP_STEPS), probe.optimization)
    last = last_batch_size(len(probe.train_loader.split), probe.train_loader.batch_size, len(probe.train_loader))
    if last == probe.train_loader.batch_size:
        return WARMUP_STEPS
    images, labels = next(batches)
    train_one_epoch(network, [(images[:last], labels[:last])], probe.optimization)
    return WARMUP_STEPS + 1


def warm_up_validation(network, probe, flip_tta: bool) -> int:
    """The first validation batch, and one of the size that ends the pass if it differs (see warm_up_steps);
    returns the batches evaluated."""
    loader = probe.val_loader
    images, labels = next(iter(loader))
    shapes = [len(labels), last_batch_size(len(loader.split), loader.batch_size, len(loader))]
    batches = [(images[:size], labels[:size]) for size in dict.fromkeys(shapes)]
    evaluate(weights_to_use(network, probe.optimization), batches, flip_tta)
    return len(batches)


def last_batch_size(images: int, batch_size: int, batches: int) -> int:
    return min(batch_size, images - (batches - 1) * batch_size)


def median_step_seconds(network, probe, batches, measure_for: float) -> float:
    """A training step's time: the median of CHUNK_STEPS-step chunks timed for about `measure_for` seconds."""
    chunks = []
    started = time.perf_counter()
    while len(chunks) < MIN_CHUNKS or time.perf_counter() - started < measure_for:
        stats = train_one_epoch(network, itertools.islice(batches, CHUNK_STEPS), probe.optimization)
        chunks.append(stats.seconds / len(stats.learning_rates))
    return statistics.median(chunks)


def validation_batch_seconds(network, probe, flip_tta: bool) -> float:
    """One validation batch's time, from the first EVAL_PROBE_BATCHES batches (after warm_up_validation)."""
    batches = min(EVAL_PROBE_BATCHES, len(probe.val_loader))
    timed = evaluate(weights_to_use(network, probe.optimization), itertools.islice(probe.val_loader, batches),
                     flip_tta)
    return timed.seconds / batches


def checkpoint_seconds(probe, out: str) -> float:
    """Writing best.pt, last.pt and the metrics after an epoch: serialized and written with fsync as the
    run folder's are, on the disk of --out (its nearest existing folder), into files that have no name.

    Nameless (O_TMPFILE on Linux; elsewhere unlinked the moment they are made) so that a run killed while
    measuring, SIGKILL included, leaves nothing in --out: the kernel frees such a file with the process.
    """
    folder = nearest_existing_folder(Path(out))
    start = time.perf_counter()
    state = {"model": probe.model.state_dict(), "optimizer": probe.optimization.optimizer.state_dict()}
    for _ in range(2):  # best.pt and last.pt
        buffer = io.BytesIO()
        torch.save(state, buffer)
        timed_write(buffer.getvalue(), folder)
    timed_write(b"0" * 4096, folder)  # metrics.csv and lr_steps.csv
    return time.perf_counter() - start


def nearest_existing_folder(path: Path) -> Path | None:
    """`path` or its closest existing parent folder (the disk a new --out will be on); None if none is found."""
    for candidate in (path, *path.absolute().parents):
        if candidate.is_dir():
            return candidate
    return None


def timed_write(data: bytes, folder: Path | None) -> None:
    """Write and fsync `data` into a nameless file in `folder` (the system's temporary folder if None)."""
    try:
        handle = tempfile.TemporaryFile(dir=folder)
    except OSError:  # --out's disk takes no new file (read-only, full): train() says so; time the temp folder
        handle = tempfile.TemporaryFile()
    with handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
        kill_point("budget-measure-write")  # test-only: a SIGKILL while measuring, with the file written
