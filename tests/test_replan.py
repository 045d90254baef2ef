"""A time budget's plan made again at each epoch's end (training/replan.py), driven by a clock that the
test moves: a steady machine, one slower or faster than measured, one that slows down at any moment
after the start, a run stopped and resumed mid-plan, and the schedule stretched over the new steps.

The budgets and speeds are those of the recipes' budgets on this lab's 2-core machines (fast 2m, best
5m, top 30m, top-long 60m; BENCHMARKS.md), and a short budget of few epochs.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.lr_scheduler import OneCycleLR

from fmnist.training.budget import epochs_of, last_epoch_steps_of, overrun_line, plan_steps
from fmnist.training.replan import BudgetPlanner
from fmnist.training.stretch import StretchedSchedule

# (budget, measuring, step seconds, validation and checkpoint seconds, steps per epoch)
BUDGETS = {
    "fast 2m": ("2m", 4.0, 0.047, 1.1, 215),
    "best 5m": ("5m", 6.0, 0.125, 2.4, 215),
    "top 30m": ("30m", 8.1, 0.167, 3.7, 215),
    "top-long 60m": ("60m", 8.1, 0.167, 3.7, 215),
    "few epochs": ("90s", 3.0, 0.05, 1.0, 300),
}
VALIDATION_SHARE = 0.8  # of the epoch's end: the rest is its checkpoint


class Machine:
    """A clock, and the speed of a machine that may change: `slowdown(t)` multiplies every cost from
    second t of the budget on."""

    def __init__(self, measured_at: float, slowdown=lambda t: 1.0):
        self.now = measured_at  # the budget's clock: measuring is over when training starts
        self.slowdown = slowdown
        self.epoch_train_seconds: list[float] = []  # as history.csv's `seconds` would hold them

    def __call__(self) -> float:
        return self.now

    def spend(self, seconds: float) -> float:
        taken = seconds * self.slowdown(self.now)
        self.now += taken
        return taken


def train_with(planner: BudgetPlanner, machine: Machine, step: float, epoch_end: float,
               stop_after_epoch: int | None = None, compiling: float = 0.0) -> list[int]:
    """Drive the planner as fit does, epoch by epoch; returns each epoch's steps. `compiling`: the seconds
    that the first step takes on top of its own (torch.compile, in every process that trains)."""
    planner.start()
    epoch = planner.steps_done // planner.steps_per_epoch
    steps_per_epoch = []
    while epoch < planner.epochs:
        epoch += 1
        steps = planner.last_epoch_steps if epoch == planner.epochs else planner.steps_per_epoch
        train_seconds = sum(machine.spend(step) for _ in range(steps))
        if not steps_per_epoch:
            train_seconds += machine.spend(compiling)
        machine.epoch_train_seconds.append(train_seconds)
        validation = machine.spend(epoch_end * VALIDATION_SHARE)
        planner.epoch_ended(epoch, steps, train_seconds, validation)
        machine.spend(epoch_end * (1 - VALIDATION_SHARE))  # the checkpoint, after the decision
        steps_per_epoch.append(steps)
        if epoch == stop_after_epoch:
            break
    return steps_per_epoch


def first_plan(name: str):
    budget, measuring, step, epoch_end, steps_per_epoch = BUDGETS[name]
    return plan_steps(budget, measuring, step, epoch_end, steps_per_epoch), step, epoch_end


@pytest.mark.parametrize("name", BUDGETS)
def test_on_a_steady_machine_the_run_ends_between_95_and_100_percent_of_its_budget(name):
    plan, step, epoch_end = first_plan(name)
    machine = Machine(plan.measure_seconds)
    planner = BudgetPlanner(plan, clock=machine)
    steps = train_with(planner, machine, step, epoch_end)
    assert 0.95 * plan.budget_seconds <= machine.now <= plan.budget_seconds, machine.now / plan.budget_seconds
    assert sum(steps) == planner.total_steps == planner.steps_done
    assert planner.used_seconds == pytest.approx(machine.now)
    assert len(planner.decisions) == len(steps) - 1  # one decision at each epoch's end but the last


@pytest.mark.parametrize("name", BUDGETS)
@pytest.mark.parametrize("speed", [0.8, 0.9, 1.13, 1.25])
def test_a_machine_faster_or_slower_than_measured_still_fills_its_budget(name, speed):
    plan, step, epoch_end = first_plan(name)
    machine = Machine(plan.measure_seconds, slowdown=lambda t: speed)
    planner = BudgetPlanner(plan, clock=machine)
    train_with(planner, machine, step, epoch_end)
    used = machine.now / plan.budget_seconds
    if name == "few epochs":  # three epochs: the first one, at the wrong speed, is a third of the budget
        assert 0.90 <= used <= 1.0 + max(0.0, speed - 1) / 3, used
    else:
        assert 0.95 <= used <= 1.0, used
    assert (planner.total_steps > plan.total_steps) == (speed < 1)


@pytest.mark.parametrize("name", [name for name in BUDGETS if name != "few epochs"])
@pytest.mark.parametrize("from_share", [0.0, 0.1, 0.3, 0.5, 0.7, 0.85, 0.9, 0.95, 0.98])
def test_a_machine_that_slows_by_a_fifth_at_any_moment_overruns_by_at_most_2_percent(name, from_share):
    plan, step, epoch_end = first_plan(name)
    machine = Machine(plan.measure_seconds, slowdown=lambda t: 1.2 if t >= from_share * plan.budget_seconds else 1.0)
    planner = BudgetPlanner(plan, clock=machine)
    train_with(planner, machine, step, epoch_end)
    assert machine.now <= 1.02 * plan.budget_seconds, machine.now / plan.budget_seconds
    assert machine.now >= 0.93 * plan.budget_seconds, machine.now / plan.budget_seconds


@pytest.mark.parametrize("start_measured", [1.0, 1.6], ids=["fair-start", "slow-start"])
@pytest.mark.parametrize("last_epoch", [1.0, 3.0], ids=["steady-end", "last-epoch-3x-slower"])
@pytest.mark.parametrize("name", ["best 5m", "top 30m"])
def test_an_overrun_is_explained_by_the_speed_the_last_plan_counted_on(name, last_epoch, start_measured):
    """The line compares the epochs after the last plan with the speed that plan counted on, not with the
    start's measure: a run measured while another process held a core (1.6x slower), then steady, had been
    told that its machine slowed down beside a step faster than the start's."""
    plan, step, epoch_end = first_plan(name)
    slow_start = plan_steps(plan.budget, plan.measure_seconds, step * start_measured, epoch_end,
                            plan.steps_per_epoch)
    run = {}
    machine = Machine(plan.measure_seconds, slowdown=lambda t: last_epoch if run["planner"].steps_done >= (
        run["planner"].epochs - 1) * plan.steps_per_epoch else 1.0)
    planner = run["planner"] = BudgetPlanner(slow_start, clock=machine)
    train_with(planner, machine, step, epoch_end)
    since = planner.speed_since_last_plan(machine.epoch_train_seconds)
    epochs = len(machine.epoch_train_seconds)
    assert (since.after_epoch, since.epochs) == (epochs - 1, 1) == (planner.decisions[-1]["epoch"], 1)
    assert since.planned_step_seconds == pytest.approx(step)  # what the epoch before the last took
    assert since.step_seconds == pytest.approx(step * last_epoch)
    line = overrun_line(planner.plan, planner.used_seconds, since)
    if last_epoch == 1.0:
        assert line is None and planner.used_seconds <= plan.budget_seconds
        return
    over = planner.used_seconds - plan.budget_seconds
    assert line == (f"time budget {plan.budget}: training and validation took {planner.used_seconds:,.1f} s, "
                    f"{over:,.1f} s ({over / plan.budget_seconds:.1%}) over: the last plan, made after epoch "
                    f"{epochs - 1}, counted {step * 1000:.1f} ms a step and {since.planned_epoch_end_seconds:.2f} s "
                    "for each epoch's validation and checkpoints; the epoch after it took "
                    f"{step * last_epoch * 1000:.1f} ms and {since.epoch_end_seconds:.2f} s; the machine slowed "
                    "down after that plan was made")


@pytest.mark.parametrize("left_after", [0.0, 1.0, 2.6, 3.5])
def test_an_epoch_that_eats_the_next_ones_time_ends_the_run_there_and_says_its_schedule_was_cut(left_after,
                                                                                                 caplog):
    """More than the time in hand lost in one epoch (another tenant took the cores): the planner ends the run
    at that epoch's end rather than overrun, and says that the learning rate stopped short."""
    plan, step, epoch_end = first_plan("best 5m")
    machine = Machine(plan.measure_seconds)
    planner = BudgetPlanner(plan, clock=machine)
    train_with(planner, machine, step, epoch_end, stop_after_epoch=plan.epochs - 2)
    epoch, planned = plan.epochs - 1, planner.total_steps
    assert planner.epochs == plan.epochs  # one more epoch after this one, on a steady machine
    planner.start()
    train_seconds = plan.budget_seconds - left_after - machine.now - epoch_end * VALIDATION_SHARE
    machine.spend(train_seconds)
    validation = machine.spend(epoch_end * VALIDATION_SHARE)
    with caplog.at_level("WARNING", logger="fmnist.training.replan"):
        planner.epoch_ended(epoch, plan.steps_per_epoch, train_seconds, validation)
    assert planner.total_steps == planner.steps_done == epoch * plan.steps_per_epoch < planned
    since = planner.speed_since_last_plan([*machine.epoch_train_seconds, train_seconds])
    assert (since.after_epoch, since.epochs) == (epoch - 1, 1)  # the plan that had an epoch after it
    assert since.step_seconds == pytest.approx(train_seconds / plan.steps_per_epoch)
    assert planner.epochs == epoch and planner.ended_short()
    assert planner.record()["schedule_finished"] is False
    assert f"epoch {epoch} ran slower than planned" in caplog.text
    assert "short of the schedule's last value" in caplog.text


def test_a_run_that_ends_as_planned_has_its_schedule_finished():
    plan, step, epoch_end = first_plan("best 5m")
    machine = Machine(plan.measure_seconds, slowdown=lambda t: 1.2)
    planner = BudgetPlanner(plan, clock=machine)
    train_with(planner, machine, step, epoch_end)
    assert not planner.ended_short() and planner.record()["schedule_finished"] is True


def test_without_replanning_the_same_slowdown_overruns():
    """What the planner is for: the first plan alone, on a machine a fifth slower after the start."""
    plan, step, epoch_end = first_plan("best 5m")
    machine = Machine(plan.measure_seconds, slowdown=lambda t: 1.2)
    planner = BudgetPlanner(plan, clock=machine)
    planner.replans = False
    train_with(planner, machine, step, epoch_end)
    assert machine.now > 1.1 * plan.budget_seconds


@pytest.mark.parametrize("stop_after", [1, 3, 7])
@pytest.mark.parametrize("speed_after", [1.0, 0.8, 1.2])
def test_a_resumed_run_goes_on_from_the_plan_in_its_checkpoint(stop_after, speed_after):
    plan, step, epoch_end = first_plan("best 5m")
    machine = Machine(plan.measure_seconds, slowdown=lambda t: 1.1)
    planner = BudgetPlanner(plan, clock=machine)
    before = train_with(planner, machine, step, epoch_end, stop_after_epoch=stop_after)
    saved = planner.state_dict()
    # The same run, uninterrupted, on the same machine: the decisions up to the stop are these.
    whole_machine = Machine(plan.measure_seconds, slowdown=lambda t: 1.1)
    whole = BudgetPlanner(plan, clock=whole_machine)
    train_with(whole, whole_machine, step, epoch_end, stop_after_epoch=stop_after)
    assert whole.state_dict() == saved
    # Resumed a day later on a machine of another speed: the pause does not count, the time used does.
    later = Machine(machine.now + 86_400.0, slowdown=lambda t: speed_after)
    resumed = BudgetPlanner(plan, clock=later)
    resumed.load_state_dict(saved)
    after = train_with(resumed, later, step, epoch_end)
    assert resumed.decisions[:len(saved["decisions"])] == saved["decisions"]
    assert resumed.steps_done == sum(before) + sum(after) == resumed.total_steps
    used = saved["used_seconds"] + (later.now - 86_400.0 - machine.now)
    assert resumed.used_seconds == pytest.approx(used)
    assert 0.95 * plan.budget_seconds <= used <= 1.0 * plan.budget_seconds


@pytest.mark.parametrize("name", ["best 5m", "top 30m"])
@pytest.mark.parametrize("stop_after", [None, 1, 4])
def test_a_compiled_run_pays_for_compiling_without_planning_slower_steps(name, stop_after):
    """Each process compiles at its first step, a resumed one again: that time is used (the first plan kept
    it), but the decision after that epoch counts on the compiled speed, not on that epoch's average step."""
    budget, measuring, step, epoch_end, steps_per_epoch = BUDGETS[name]
    compiling = 40.0  # on top of the probe's, which measuring took
    plan = plan_steps(budget, measuring + compiling, step, epoch_end, steps_per_epoch, compile_seconds=compiling)
    machine = Machine(plan.measure_seconds)
    planner = BudgetPlanner(plan, clock=machine)
    train_with(planner, machine, step, epoch_end, stop_after_epoch=stop_after, compiling=compiling)
    assert planner.decisions[0]["step_seconds"] == pytest.approx(step)
    assert planner.total_steps >= plan.total_steps  # nothing was taken off for a compilation planned for
    if stop_after is not None:  # resumed at once: the new process compiles too
        resumed = BudgetPlanner(plan, clock=machine)
        resumed.load_state_dict(planner.state_dict())
        train_with(resumed, machine, step, epoch_end, compiling=compiling)
        planner = resumed
    assert all(decision["step_seconds"] == pytest.approx(step) for decision in planner.decisions)
    assert planner.steps_done == planner.total_steps
    assert 0.95 * plan.budget_seconds <= planner.used_seconds <= plan.budget_seconds


def test_a_run_saved_before_plans_were_made_again_keeps_its_first_plan():
    plan, step, epoch_end = first_plan("best 5m")
    machine = Machine(plan.measure_seconds, slowdown=lambda t: 0.8)
    planner = BudgetPlanner(plan, clock=machine)
    planner.keep_the_first_plan(steps_done=2 * plan.steps_per_epoch)
    steps = train_with(planner, machine, step, epoch_end)
    assert planner.total_steps == plan.total_steps == 2 * plan.steps_per_epoch + sum(steps)
    assert planner.decisions == [] and planner.record()["budget_used_seconds"] is None


@pytest.mark.parametrize(("change", "named"), [
    ({"total_steps": -1}, "total_steps"), ({"steps_done": "3"}, "steps_done"), ({"steps_done": 10**6}, "steps_done"),
    ({"used_seconds": math.nan}, "used_seconds"), ({"used_seconds": -1.0}, "used_seconds"),
    ({"replans": 1}, "replans"), ({"decisions": {}}, "decisions"), ({"steps_done": 7}, "steps_done"),
    ({"extra": 1}, "should hold"),
])
def test_a_damaged_plan_state_is_refused_naming_what_is_wrong(change, named):
    plan, step, epoch_end = first_plan("best 5m")
    machine = Machine(plan.measure_seconds)
    planner = BudgetPlanner(plan, clock=machine)
    train_with(planner, machine, step, epoch_end, stop_after_epoch=2)
    with pytest.raises(ValueError, match=named):
        BudgetPlanner(plan, clock=machine).load_state_dict({**planner.state_dict(), **change})


def onecycle(total_steps: int) -> tuple[torch.optim.Optimizer, OneCycleLR]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1, momentum=0.9)
    return optimizer, OneCycleLR(optimizer, max_lr=0.1, total_steps=total_steps)


def rates(optimizer, schedule, steps: int) -> list[tuple[float, float]]:
    seen = []
    for _ in range(steps):
        seen.append((optimizer.param_groups[0]["lr"], optimizer.param_groups[0]["momentum"]))
        optimizer.step()
        schedule.step()
    return seen


def plain_run(total_steps: int):
    return onecycle(total_steps)


def test_an_unstretched_schedule_is_exactly_the_one_it_wraps():
    plain_optimizer, plain = onecycle(100)
    optimizer, inner = onecycle(100)
    assert rates(optimizer, StretchedSchedule(inner, 100), 100) == rates(plain_optimizer, plain, 100)


@pytest.mark.parametrize("new_total", [31, 32, 33, 60, 99, 100, 101, 180, 400])
def test_a_stretched_or_squeezed_schedule_keeps_its_shape_and_ends_annealed(new_total):
    optimizer, inner = onecycle(100)
    schedule = StretchedSchedule(inner, 100)
    seen = rates(optimizer, schedule, 30)
    schedule.stretch_to(new_total)
    seen += rates(optimizer, schedule, new_total - 30)
    assert schedule.position == 100 and inner.last_epoch == 100  # the wrapped schedule's end, exactly
    assert seen[-1][0] == pytest.approx(rates(*plain_run(100), 100)[-1][0])  # OneCycle's own last rate
    peak = max(range(len(seen)), key=lambda index: seen[index][0])
    assert seen[peak][0] == pytest.approx(0.1, rel=1e-3)
    # Momentum still cycles against the rate: lowest at the peak rate, back to 0.95 at the end.
    assert seen[peak][1] == pytest.approx(0.85, abs=0.01) and seen[-1][1] == pytest.approx(0.95, abs=0.01)
    assert all(later[0] <= earlier[0] + 1e-12 for earlier, later in zip(seen[peak:-1], seen[peak + 1:], strict=True))


@pytest.mark.parametrize(("first_total", "taken", "left"), [
    (first_total, taken, left) for first_total in (60, 100, 150) for taken in (1, 29, 30, 70, 98, 99)
    for left in (1, 2, 3) if taken < first_total  # made again before the first plan ended
])
def test_whatever_steps_a_plan_leaves_the_last_one_gets_the_schedules_last_rate(first_total, taken, left):
    """A plan made again can leave one step, or two, after any step: the last still gets the last rate."""
    optimizer, inner = onecycle(100)
    schedule = StretchedSchedule(inner, 100)
    schedule.stretch_to(first_total)
    rates(optimizer, schedule, taken)
    schedule.stretch_to(taken + left)
    seen = rates(optimizer, schedule, left)
    assert seen[-1][0] == pytest.approx(rates(*plain_run(100), 100)[-1][0])
    assert schedule.position == 100 and inner.last_epoch == 100


def test_a_stretched_schedule_resumes_exactly_from_its_state():
    optimizer, inner = onecycle(100)
    schedule = StretchedSchedule(inner, 100)
    rates(optimizer, schedule, 40)
    schedule.stretch_to(137)
    rates(optimizer, schedule, 20)
    state, optimizer_state = schedule.state_dict(), optimizer.state_dict()
    rest = rates(optimizer, schedule, 77)
    optimizer_again, inner_again = onecycle(100)
    again = StretchedSchedule(inner_again, 100)
    optimizer_again.load_state_dict(optimizer_state)  # as resume restores both
    again.load_state_dict(state)
    assert rates(optimizer_again, again, 77) == rest
    with pytest.raises(ValueError, match="schedule_steps"):
        StretchedSchedule(onecycle(90)[1], 90).load_state_dict(state)
    with pytest.raises(ValueError, match="taken already"):
        again.stretch_to(10)


def test_a_plain_schedule_state_from_an_older_checkpoint_continues_unstretched():
    optimizer, plain = onecycle(100)
    rates(optimizer, plain, 25)
    state = plain.state_dict()
    optimizer_state = optimizer.state_dict()
    expected = rates(optimizer, plain, 75)
    optimizer_again, inner = onecycle(100)
    schedule = StretchedSchedule(inner, 100)
    optimizer_again.load_state_dict(optimizer_state)
    schedule.load_state_dict(state)
    assert schedule.steps == 25 and schedule.position == 25.0
    assert rates(optimizer_again, schedule, 75) == expected


class ScriptedPlanner:
    """A planner whose plans are given in advance: after epoch k, `totals[k - 1]` steps in all."""

    def __init__(self, steps_per_epoch: int, first_total: int, totals: list[int]):
        self.steps_per_epoch, self.total_steps, self.totals = steps_per_epoch, first_total, totals
        self.epochs_seen: list[tuple[int, int]] = []
        self.starts = 0

    @property
    def epochs(self) -> int:
        return epochs_of(self.total_steps, self.steps_per_epoch)

    @property
    def last_epoch_steps(self) -> int:
        return last_epoch_steps_of(self.total_steps, self.steps_per_epoch)

    def start(self) -> None:
        self.starts += 1

    def epoch_ended(self, epoch: int, steps: int, train_seconds: float, validation_seconds: float) -> None:
        assert train_seconds > 0 and validation_seconds > 0
        self.epochs_seen.append((epoch, steps))
        self.total_steps = self.totals[epoch - 1]


@pytest.mark.parametrize(("totals", "trained"), [
    ([11, 11, 11, 11], [(1, 3), (2, 3), (3, 3), (4, 2)]),  # more epochs, the last one cut short
    ([3], [(1, 3)]),  # no time left after the first: training ends there
    ([5, 5], [(1, 3), (2, 2)]),  # fewer steps: the second epoch cut short
])
def test_fit_trains_the_epochs_and_steps_its_planner_chooses_as_it_goes(totals, trained):
    from fmnist import Optimization, create_model, fit

    torch.manual_seed(0)
    model = create_model("mlp")
    optimization = Optimization(torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01))
    batches = [(torch.randn(4, 1, 28, 28), torch.arange(4)) for _ in range(3)]
    planner = ScriptedPlanner(steps_per_epoch=3, first_total=6, totals=totals)
    history = fit(model, batches, batches[:1], optimization, epochs=2, planner=planner)
    assert planner.epochs_seen == trained and planner.starts == 1
    assert [row["epoch"] for row in history] == [epoch for epoch, _ in trained]
