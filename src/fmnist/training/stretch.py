"""A learning-rate schedule that can be given more or fewer training steps while it runs.

A time budget's plan is made again at each epoch's end (training/replan.py): a machine that turns out
faster than measured buys more steps, a slower one fewer. The schedule (OneCycle, cosine, linear) was
built for the first plan's steps, and building it again would make the rate jump. Instead, what is
left of the training is laid over what is left of the schedule: from a change on, each training step
moves the schedule on by (schedule steps left) / (training steps left). The curve keeps its shape,
OneCycle's momentum cycle included, and still ends, annealed, at the last training step.

torch's schedulers move in whole steps, so a stretched schedule keeps a rate for one more step now
and then, and a squeezed one moves two steps now and then: with thousands of steps, a staircase too
fine to matter.
"""

from __future__ import annotations

import math

from torch.optim.lr_scheduler import LRScheduler


class StretchedSchedule:
    """`schedule`, built to end after `schedule_steps` steps, over however many training steps the plan
    has now (`stretch_to`). Until the first change it is exactly `schedule`."""

    def __init__(self, schedule: LRScheduler, schedule_steps: int):
        self.schedule = schedule
        self.schedule_steps = schedule_steps
        self.total_steps = schedule_steps  # the training steps the schedule is laid over now
        self.steps = 0  # training steps taken
        self.position = 0.0  # how far along `schedule` they have moved, in its own steps
        self.rate = 1.0  # schedule steps per training step, from the last change on

    @property
    def optimizer(self):
        return self.schedule.optimizer

    def step(self) -> None:
        """After each training step, as for any per-batch schedule. The last training step gets the
        schedule's last rate, exactly, whatever the rounding before it."""
        self.steps += 1
        last_rate_at = float(self.schedule_steps - 1)
        if self.steps >= self.total_steps:
            target = float(self.schedule_steps)  # the schedule's end
        elif self.steps == self.total_steps - 1:
            target = last_rate_at
        else:
            target = min(last_rate_at, self.position + self.rate)
        self.move_to(target)

    def stretch_to(self, total_steps: int) -> None:
        """Lay what is left of the schedule over the training steps left until `total_steps`."""
        if total_steps < self.steps:
            raise ValueError(f"total_steps {total_steps}: {self.steps} steps are taken already")
        self.total_steps = total_steps
        left = total_steps - self.steps - 1  # the steps until the one that takes the schedule's last rate
        self.rate = max(0.0, self.schedule_steps - 1 - self.position) / left if left > 0 else 0.0
        if left == 0:  # the next step is the last: it takes the last rate, so the schedule goes there now
            self.move_to(float(self.schedule_steps - 1))

    def move_to(self, target: float) -> None:
        """Move the wrapped schedule on to `target` (in its own steps; never back)."""
        target = max(target, self.position)
        for _ in range(math.floor(target) - math.floor(self.position)):
            self.schedule.step()
        self.position = target

    def get_last_lr(self) -> list[float]:
        return self.schedule.get_last_lr()

    def state_dict(self) -> dict:
        return {"schedule": self.schedule.state_dict(), "schedule_steps": self.schedule_steps,
                "total_steps": self.total_steps, "steps": self.steps, "position": self.position, "rate": self.rate}

    def load_state_dict(self, state: dict) -> None:
        """A stretched schedule's state, or a plain schedule's (a checkpoint from before schedules could
        stretch: it continues unstretched, exactly as it would have)."""
        if "schedule" not in state:
            self.schedule.load_state_dict(state)
            self.steps = self.schedule.last_epoch
            self.position = float(self.steps)
            return
        check_stretch_state(state, self.schedule_steps)
        self.schedule.load_state_dict(state["schedule"])
        self.total_steps, self.steps = state["total_steps"], state["steps"]
        self.position, self.rate = float(state["position"]), float(state["rate"])


def check_stretch_state(state: dict, schedule_steps: int) -> None:
    """A saved state that this schedule can continue from (ValueError naming the key otherwise)."""
    whole = {name: state.get(name) for name in ("schedule_steps", "total_steps", "steps")}
    for name, value in whole.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"schedule state {name} {value!r}: should be a whole number >= 0")
    if whole["schedule_steps"] != schedule_steps:
        raise ValueError(f"schedule state schedule_steps {whole['schedule_steps']}: the run's schedule has "
                         f"{schedule_steps}")
    if whole["steps"] > whole["total_steps"]:
        raise ValueError(f"schedule state steps {whole['steps']}: more than its total_steps {whole['total_steps']}")
    for name in ("position", "rate"):
        value = state.get(name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= schedule_steps:
            raise ValueError(f"schedule state {name} {value!r}: should be a number from 0 to {schedule_steps}")
