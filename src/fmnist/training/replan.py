"""A time budget's plan, made again at each epoch's end, so that the budget is used and not overrun.

The first plan (training/budget.py) trusts a few seconds of measuring. Over a whole run a machine
drifts: its first seconds were 5-13% faster than its average on this lab's VMs, another tenant can
slow it by a fifth, and a plan that keeps enough in hand for all of that leaves a quarter of a budget
unused on a steady machine. So at each epoch's end the planner takes the time really used so far and
the speed of the epoch just ended, and chooses again how many steps fit in what is left (keeping
less in hand the nearer the end: budget.time_in_hand). The schedule is stretched or squeezed over
the new steps (training/stretch.py), so the learning rate still anneals at the budget's end.

Each decision is kept in the checkpoint. A resumed run starts from the plan as it stood at its
checkpoint, with the time used before it; the time it was stopped for does not count, and from there
it goes on planning with the speed of the machine it resumes on.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from fmnist.training.budget import (
    SpeedSince,
    TimePlan,
    epochs_of,
    last_epoch_steps_of,
    steps_that_fit,
    time_in_hand,
)
from fmnist.training.build import Training
from fmnist.training.stretch import StretchedSchedule

logger = logging.getLogger(__name__)

STATE_KEYS = ("total_steps", "steps_done", "used_seconds", "replans", "decisions")


class BudgetPlanner:
    """The steps a budgeted run trains for, made again after each epoch (`epoch_ended`).

    `schedule`: the run's per-batch schedule, stretched to each new plan (None for a schedule that
    steps per epoch, or none). `clock`: seconds, as time.perf_counter gives them (the default, read
    when the planner is made, so that a test that stands in for the clock everywhere reaches it too).
    """

    def __init__(self, plan: TimePlan, schedule: StretchedSchedule | None = None,
                 clock: Callable[[], float] | None = None):
        self.plan = plan
        self.schedule = schedule
        self.clock = clock or time.perf_counter
        self.total_steps = plan.total_steps
        self.steps_done = 0
        self.used_seconds = plan.measure_seconds  # of the budget: measuring is inside it
        self.decisions: list[dict] = []
        self.replans = True  # False for a run whose checkpoint predates re-planning: it keeps its plan
        self.segment_started = self.used_at_segment_start = self.last_mark = None
        self.epochs_in_segment = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    @property
    def epochs(self) -> int:
        return epochs_of(self.total_steps, self.steps_per_epoch)

    @property
    def last_epoch_steps(self) -> int:
        return last_epoch_steps_of(self.total_steps, self.steps_per_epoch)

    def start(self) -> None:
        """Training starts (or resumes): the budget's clock runs from here, after what was used before."""
        self.segment_started = self.last_mark = self.clock()
        self.used_at_segment_start = self.used_seconds
        self.epochs_in_segment = 0

    def leave_out(self, seconds: float) -> None:
        """Seconds just spent on something the budget does not pay for (a benchmark's test evaluation)."""
        self.segment_started += seconds
        self.last_mark += seconds

    def epoch_ended(self, epoch: int, steps: int, train_seconds: float, validation_seconds: float) -> None:
        """After an epoch of `steps` steps that took `train_seconds`, and its validation pass, before its
        checkpoint is written: choose the steps that fit in what is left of the budget."""
        if self.segment_started is None:
            raise RuntimeError("BudgetPlanner.epoch_ended before start()")
        now = self.clock()
        used = self.used_at_segment_start + (now - self.segment_started)
        # Since the last mark: this epoch's steps and validation, the last epoch's checkpoint, the rest.
        # The first epoch after a start has no checkpoint in it yet: the plan's measured figure stands in.
        epoch_end_seconds = max(0.0, (now - self.last_mark) - train_seconds)
        first_since_start = not self.epochs_in_segment
        if first_since_start:
            epoch_end_seconds = max(epoch_end_seconds, self.plan.epoch_end_seconds)
        checkpoint_seconds = max(0.0, epoch_end_seconds - validation_seconds)  # still to come for this epoch
        self.steps_done += steps
        self.last_mark = now
        self.epochs_in_segment += 1
        if self.replans and self.steps_done < self.total_steps:
            step_seconds = train_seconds / steps
            if first_since_start and self.plan.compile_seconds:
                # This epoch's first step compiled the model (in every process, resumed ones too): that time
                # is in what was used, not in what the steps ahead will take. Count on the compiled speed the
                # plan measured; from the next epoch on, the epochs' own speed decides again.
                step_seconds = self.plan.step_seconds
            left = self.plan.budget_seconds - used - checkpoint_seconds
            future = steps_that_fit(left - time_in_hand(self.plan.budget_seconds, left), step_seconds,
                                    epoch_end_seconds, self.steps_per_epoch)
            self.change_to(self.steps_done + max(0, future), epoch, used, step_seconds, epoch_end_seconds)
        self.used_seconds = used + checkpoint_seconds

    def change_to(self, total_steps: int, epoch: int, used: float, step_seconds: float,
                  epoch_end_seconds: float) -> None:
        before = self.total_steps
        self.total_steps = total_steps
        if self.schedule is not None:
            self.schedule.stretch_to(total_steps)
        self.decisions.append({"epoch": epoch, "used_seconds": round(used, 3), "step_seconds": step_seconds,
                               "epoch_end_seconds": round(epoch_end_seconds, 3), "total_steps": total_steps})
        if total_steps == self.steps_done:
            # Only a slowdown larger than the time kept in hand does this: the epoch just ended ate what the
            # next one needed. Another step and validation would overrun; ending here keeps the budget, at the
            # cost of a schedule that stops short of its last rates (summary.json: schedule_finished false).
            logger.warning("time budget %s: epoch %d ran slower than planned and %.0f s are left: nothing more "
                           "fits, so the run ends here, %s steps before its plan's end, with its learning rate "
                           "short of the schedule's last value", self.plan.budget, epoch,
                           self.plan.budget_seconds - used, f"{before - total_steps:,}")
        elif self.epochs != epochs_of(before, self.steps_per_epoch):  # a few steps more or less: summary.json has it
            logger.info("time budget %s: %.0f s used after epoch %d, a step takes %.1f ms; planned again: %s steps "
                        "= %d epochs (was %s)", self.plan.budget, used, epoch, step_seconds * 1000,
                        f"{total_steps:,}", self.epochs, f"{before:,}")

    def state_dict(self) -> dict:
        return {"total_steps": self.total_steps, "steps_done": self.steps_done, "used_seconds": self.used_seconds,
                "replans": self.replans, "decisions": [dict(decision) for decision in self.decisions]}

    def load_state_dict(self, state: dict) -> None:
        """The plan as a checkpoint left it (ValueError naming what is wrong in a damaged one)."""
        check_planner_state(state, self.plan)
        self.total_steps, self.steps_done = state["total_steps"], state["steps_done"]
        self.used_seconds, self.replans = float(state["used_seconds"]), state["replans"]
        self.decisions = [dict(decision) for decision in state["decisions"]]

    def keep_the_first_plan(self, steps_done: int) -> None:
        """A run from before plans were made again: it resumes on the plan it started with, as it would
        have; the time it used before was not recorded, so its use of the budget stays unknown."""
        self.replans = False
        self.steps_done = steps_done

    def record(self) -> dict:
        """summary.json's account of the plan: the first plan, the steps trained, and each decision."""
        used = self.used_seconds if self.replans else None
        return {"time_budget": self.plan.budget, "time_budget_seconds": self.plan.budget_seconds,
                "planned_steps": self.plan.total_steps, "planned_seconds": self.plan.planned_seconds(),
                "trained_steps": self.steps_done, "budget_used_seconds": used,
                "budget_used": used / self.plan.budget_seconds if used is not None else None,
                "schedule_finished": not self.ended_short(), "replans": self.decisions}

    def speed_since_last_plan(self, epoch_seconds: list[float]) -> SpeedSince:
        """The last plan that had epochs trained after it (the start's if none), the speed it counted on, and
        the speed those epochs ran at. `epoch_seconds`: each epoch's training time, the whole run's. The time
        after a plan also holds the checkpoint of the epoch it was made after."""
        trained = len(epoch_seconds)
        basis = next((decision for decision in reversed(self.decisions) if decision["epoch"] < trained), None)
        if basis is None:
            after, used_then = 0, self.plan.measure_seconds
            planned_step, planned_epoch_end = self.plan.step_seconds, self.plan.epoch_end_seconds
            compiling = self.plan.compile_seconds  # in the first epoch's training time
        else:
            after, used_then = basis["epoch"], basis["used_seconds"]
            planned_step, planned_epoch_end = basis["step_seconds"], basis["epoch_end_seconds"]
            compiling = 0.0
        train_seconds = sum(epoch_seconds[after:])
        epochs = max(1, trained - after)
        steps = max(1, self.steps_done - after * self.steps_per_epoch)
        return SpeedSince(after, trained - after, planned_step, planned_epoch_end,
                          max(0.0, train_seconds - compiling) / steps,
                          max(0.0, self.used_seconds - used_then - train_seconds) / epochs)

    def ended_short(self) -> bool:
        """Whether the last decision ended the run at the epoch it was taken after (see change_to): the
        one decision that leaves no step to plan for."""
        if not self.decisions:
            return False
        last = self.decisions[-1]
        return last["total_steps"] == self.steps_done and last["epoch"] == epochs_of(self.steps_done,
                                                                                      self.steps_per_epoch)


def planner_for(plan: TimePlan, training: Training) -> BudgetPlanner:
    """The planner of a run built for `plan`; its per-batch schedule, if it has one, is stretched over
    whatever steps the planner chooses (training/stretch.py)."""
    schedule = None
    if training.optimization.scheduler_interval == "batch":
        schedule = StretchedSchedule(training.optimization.scheduler, plan.total_steps)
        training.optimization.scheduler = schedule
    return BudgetPlanner(plan, schedule)


def check_planner_state(state, plan: TimePlan) -> None:
    if not isinstance(state, dict) or set(state) != set(STATE_KEYS):
        raise ValueError(f"time plan state should hold {', '.join(STATE_KEYS)}")
    for name in ("total_steps", "steps_done"):
        value = state[name]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"time plan state {name} {value!r}: should be a whole number >= 0")
    if state["steps_done"] > state["total_steps"]:
        raise ValueError(f"time plan state steps_done {state['steps_done']}: more than total_steps "
                         f"{state['total_steps']}")
    if not isinstance(state["replans"], bool):
        raise ValueError(f"time plan state replans {state['replans']!r}: should be true or false")
    used = state["used_seconds"]
    if not isinstance(used, (int, float)) or isinstance(used, bool) or not 0 <= used < math.inf:
        raise ValueError(f"time plan state used_seconds {used!r}: should be a number of seconds >= 0")
    if not isinstance(state["decisions"], list) or not all(isinstance(item, dict) for item in state["decisions"]):
        raise ValueError("time plan state decisions: should be a list of tables")
    if state["steps_done"] % plan.steps_per_epoch and state["steps_done"] != state["total_steps"]:
        raise ValueError(f"time plan state steps_done {state['steps_done']}: not at an epoch's end")
