"""Time-budgeted training (`--time-budget`): durations, the plan's arithmetic, budgeted runs that end
on time with their schedule finished, resume that keeps the plan, and one-line refusals."""

from __future__ import annotations

import csv
import json
import signal
from pathlib import Path

import pytest
import torch

from conftest import fmnist_here, fmnist_process
from fmnist.arguments import command_line_spelling
from fmnist.cli import main
from fmnist.errors import ConfigError
from fmnist.experiment import budget_record, train
from fmnist.reports.report import budget_section
from fmnist.training.budget import MIN_STEPS, TimePlan, overrun_line, plan_steps, time_in_hand
from fmnist.training.config import TrainConfig, build_config
from fmnist.training.duration import format_duration, parse_duration
from fmnist.training.optim import build_scheduler
from fmnist.training.replan import BudgetPlanner
from test_resume import metric_rows
from work_clock import BATCH_SECONDS, STEP_SECONDS

# The runs here train on the work clock (work_clock.py): seconds are steps and evaluated batches, so a run
# plans and ends the same way at any load, and what it used is known to the step.
VALIDATION_BATCHES = 3  # budgeted(): 100 validation images in batches of 40


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150), ("90", 90), (" 10 S ", 10), (".5s", 0.5),
])
def test_durations_read_as_people_write_them(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m", "-5s", "0s", "0", "inf", "nan", "5m x", "1e400", "1_0", "infinity",
                                  "-0", "0x10"])
def test_what_is_not_a_positive_duration_is_refused(text):
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize("seconds", [42.5, 60, 95, 3600, 5400, 3661])
def test_formatted_durations_read_back(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=0.5)


def test_the_plan_fits_whole_epochs_then_cuts_the_last_one_short():
    # 104 s budget, 4 s measuring: 100 s left, of which 1% of the budget and 4% of those 100 s are kept in
    # hand (5.04 s); an epoch is 10 steps of 1 s + 2 s, so 7 whole epochs (84 s), then a validation pass
    # (2 s) and 8 steps.
    plan = plan_steps("104s", measure_seconds=4.0, step_seconds=1.0, epoch_end_seconds=2.0, steps_per_epoch=10)
    available = (104 - 4) - time_in_hand(104, 100)
    assert available == pytest.approx(94.96)
    assert (plan.epochs, plan.last_epoch_steps, plan.total_steps) == (8, 8, 7 * 10 + 8)
    assert plan.planned_seconds() - plan.measure_seconds <= available
    # One more step would not fit.
    assert plan.planned_seconds() - plan.measure_seconds + 1.0 > available
    assert TimePlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_a_run_that_overran_its_budget_says_by_how_much_and_why(caplog):
    # The case measured on a VM that slowed down mid-run: 167.4 ms a step at the start, 1,847 s of 1,800 used.
    plan = TimePlan("30m", 1800.0, 8.1, 0.1674, 3.69, 215, 8729)
    # That run was planned once, at the start: the speed since is the whole run's.
    planner = BudgetPlanner(plan)
    planner.steps_done, planner.used_seconds = 8729, 1847.5
    history = [{"seconds": 1637.9 / 41}] * 41
    since = planner.speed_since_last_plan([row["seconds"] for row in history])
    assert (since.after_epoch, since.epochs) == (0, 41)
    assert overrun_line(plan, 1800.0, since) is None and overrun_line(plan, 1620.7, since) is None
    line = overrun_line(plan, 1847.5, since)
    assert line == ("time budget 30m: training and validation took 1,847.5 s, 47.5 s (2.6%) over: the plan made at "
                    "the start counted 167.4 ms a step and 3.69 s for each epoch's validation and checkpoints; the "
                    "41 epochs after it took 187.6 ms and 4.91 s; the machine slowed down after that plan was made")
    # (187.6 ms: 1637.9 s / 8729 steps; 4.91 s: (1847.5 - 8.1 - 1637.9) / 41 epochs.) The run records it and
    # says it once.
    record = budget_record(planner, history)
    assert record["budget_used_seconds"] == pytest.approx(1847.5) and record["trained_steps"] == 8729
    assert record["budget_used"] == pytest.approx(1847.5 / 1800)
    assert [entry.getMessage() for entry in caplog.records] == [line]
    caplog.clear()
    # A run resumed by this version from a checkpoint of one that kept no count: its use is unknown, not judged.
    planner.keep_the_first_plan(8729)
    assert budget_record(planner, history)["budget_used_seconds"] is None
    assert not caplog.records


def test_a_budget_without_room_for_the_shortest_run_says_what_it_needs():
    with command_line_spelling(), pytest.raises(
            ConfigError, match=r"--time-budget 10s: too short .* give --time-budget \d+s or more") as caught:
        plan_steps("10s", measure_seconds=2.0, step_seconds=0.5, epoch_end_seconds=1.0, steps_per_epoch=100)
    suggested = parse_duration(str(caught.value).split("give --time-budget ")[1].split()[0])
    with pytest.raises(ConfigError, match=r"^TrainConfig\(time_budget='10s'\): too short .* give time_budget='\d+s'"):
        plan_steps("10s", measure_seconds=2.0, step_seconds=0.5, epoch_end_seconds=1.0, steps_per_epoch=100)
    plan = plan_steps(format_duration(suggested), 2.0, 0.5, 1.0, 100)  # what it suggests is enough
    assert plan.total_steps >= MIN_STEPS


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine", "linear"])
def test_per_batch_schedules_end_at_the_planned_step(scheduler):
    config = TrainConfig(scheduler=scheduler)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=config.lr or config.max_lr)
    schedule = build_scheduler(optimizer, config, total_steps=37)
    rates = []
    for _ in range(37):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    peak = max(rates)
    assert rates[-1] < peak / 25  # annealed by the last planned step, not cut off half-way
    if scheduler == "onecycle":
        assert rates[-1] == pytest.approx(config.max_lr / 25 / 1e4)


def test_a_budget_replaces_the_recipes_epochs_and_refuses_explicit_ones(tmp_path):
    config = TrainConfig.from_recipe("fast", time_budget="2m")
    assert config.epochs is None and config.time_budget == "2m"
    with pytest.raises(ConfigError, match=r"TrainConfig\(epochs=3\): ignored by these settings: time_budget plans") \
            as caught:
        TrainConfig(epochs=3, time_budget="5m")
    assert caught.value.field == "epochs"
    with pytest.raises(ConfigError, match="TrainConfig\\(time_budget='5 minutes'\\): not a duration; write it as 90s"):
        TrainConfig(time_budget="5 minutes")
    toml = tmp_path / "budget.toml"
    toml.write_text('recipe = "quick"\ntime_budget = "90s"\n')
    assert build_config(toml).time_budget == "90s"


@pytest.mark.parametrize("arguments", [
    ["--time-budget", "5x"], ["--time-budget", "0s"], ["--time-budget", "-1m"], ["--time-budget", "1e308"],
    ["--time-budget", "169h"], ["--time-budget", "inf"], ["--time-budget", "nan"], ["--time-budget", "1e400"],
    ["--time-budget", "1_0"], ["--time-budget", ""], ["--time-budget", "99999999999999999999h"],
    ["--time-budget", "1m", "--epochs", "3"], ["--recipe", "fast", "--epochs", "2", "--time-budget", "2m"],
])
def test_bad_budgets_are_one_line_and_exit_2(arguments, tiny_data, tmp_path, capsys):
    code = main(["train", "--data-dir", str(tiny_data), "--allow-unverified-data", "--out", str(tmp_path / "runs"),
                 *arguments])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and "Traceback" not in error
    assert "--time-budget" in error
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_budgets_up_to_a_week_are_planned_and_longer_ones_refused_when_the_config_is_made():
    assert TrainConfig(time_budget="168h").time_budget == "168h"
    with pytest.raises(ConfigError,
                       match=r"TrainConfig\(time_budget='1e308'\): more than a week \(168h\).*give at most 168h"):
        TrainConfig(time_budget="1e308")  # was an OverflowError once the plan was made
    # The longest budget with the fastest step still makes a plan whose arithmetic and line hold.
    plan = plan_steps("168h", measure_seconds=1.0, step_seconds=1e-6, epoch_end_seconds=1e-6, steps_per_epoch=1)
    assert plan.total_steps > 10**11 and plan.planned_seconds() <= plan.budget_seconds
    assert "planned" in plan.describe() and TimePlan.from_dict(plan.to_dict()) == plan
    with pytest.raises(ConfigError, match="more than a week"):
        plan_steps("1e308", 1.0, 1.0, 1.0, 10)  # the library function refuses it too


def test_a_run_killed_while_its_budget_is_measured_leaves_nothing_in_out(tiny_data, tmp_path):
    out = tmp_path / "runs"
    out.mkdir()
    killed = fmnist_process(["train", "--data-dir", str(tiny_data), "--allow-unverified-data", "--out", str(out),
                             "--val-size", "100", "--batch-size", "50", "--limit-batches", "4", "--device", "cpu",
                             "--time-budget", "1m"], kill_at="budget-measure-write:1")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert list(out.iterdir()) == []  # the measuring's files have no name: the kernel freed them with the process
    assert not list(tmp_path.rglob(".budget-*"))  # the scratch folder it once made beside the runs


def test_a_budget_too_short_for_this_machine_is_refused_after_measuring_and_leaves_nothing(tiny_data, tmp_path,
                                                                                           capsys, work_clock):
    runs = tmp_path / "runs"
    code = main(["train", "--data-dir", str(tiny_data), "--allow-unverified-data", "--out", str(runs),
                 "--time-budget", "0.05s", "--val-size", "100"])
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1
    assert "--time-budget 0.05s: too short for this run on this machine" in error and "or more" in error
    assert not runs.exists() or not any(runs.iterdir())


def budgeted(tiny_data: Path, out: Path, **changes) -> TrainConfig:
    return TrainConfig(data_dir=str(tiny_data), allow_unverified_data=True, out=str(out), val_size=100,
                       batch_size=50, eval_batch_size=40, limit_batches=4, seed=5, device="cpu", **changes)


def lr_steps(run: Path) -> list[float]:
    with open(run / "lr_steps.csv") as handle:
        return [float(row["lr"]) for row in csv.DictReader(handle)]


def work_done(plan: TimePlan, steps: int, epochs: int, validation_batches: int = VALIDATION_BATCHES) -> float:
    """The seconds a budgeted run uses on the work clock: its measuring, its steps and each epoch's
    validation; nothing else (checkpoints, a benchmark's test evaluations) is the budget's."""
    return plan.measure_seconds + steps * STEP_SECONDS + epochs * validation_batches * BATCH_SECONDS


def test_a_budgeted_run_ends_within_its_budget_with_its_schedule_finished(tiny_data, tmp_path, work_clock):
    result = train(budgeted(tiny_data, tmp_path, time_budget="6s", name="budgeted"))
    saved = json.loads((result.path / "config.json").read_text())
    summary = json.loads((result.path / "summary.json").read_text())
    plan = TimePlan.from_dict(saved["resolved"]["time_plan"])
    # Measured: 5 steps to warm up and 3 chunks of 5 timed; 2 validation batches to warm up (the first, and
    # the shorter last one) and 3 timed. A step is 0.1 s and a validation pass 3 batches.
    assert plan.measure_seconds == pytest.approx(20 * STEP_SECONDS + 5 * BATCH_SECONDS)
    assert plan.step_seconds == pytest.approx(STEP_SECONDS)
    assert plan.epoch_end_seconds == pytest.approx(VALIDATION_BATCHES * BATCH_SECONDS)
    assert plan.budget_seconds == 6 and plan.planned_seconds() <= 6
    # On a steady machine the budget is filled (95-100%, as docs/training.md promises), and what was
    # used is the measuring, the steps and the validations, no more.
    used = summary["budget_used_seconds"]
    assert 0.95 * 6 <= used <= 6 and summary["budget_used"] == pytest.approx(used / 6)
    assert used == pytest.approx(work_done(plan, summary["trained_steps"], summary["epochs"]))
    assert summary["planned_steps"] == plan.total_steps
    rates = lr_steps(result.path)
    assert len(rates) == summary["trained_steps"]  # every step the last plan had ran, and no more
    assert summary["epochs"] == -(-summary["trained_steps"] // plan.steps_per_epoch)
    # One decision at each epoch's end but the last; the last decision's steps are those that were trained.
    decisions, epochs = summary["replans"], summary["epochs"]
    assert [decision["epoch"] for decision in decisions] == list(range(1, epochs))
    assert decisions[-1]["total_steps"] == summary["trained_steps"]
    assert all(decision["step_seconds"] == pytest.approx(STEP_SECONDS) for decision in decisions)
    # The schedule ran to its end: OneCycle's last rate, whatever the plans (max_lr / 25 / 10^4).
    assert summary["schedule_finished"] is True and rates[-1] == pytest.approx(0.01 / 25 / 1e4)
    assert saved["config"]["epochs"] is None and saved["config"]["time_budget"] == "6s"
    report = (result.path / "report.md").read_text()
    assert "## Time budget" in report and f"{plan.total_steps:,} steps = {plan.epochs} epochs" in report
    assert f"{summary['trained_steps']:,} steps = {summary['epochs']} epochs" in report


def test_sigkill_and_resume_go_on_from_the_plan_in_the_checkpoint(tiny_data, tmp_path, work_clock):
    args = ["train", "--data-dir", str(tiny_data), "--allow-unverified-data", "--out", str(tmp_path),
            "--val-size", "100", "--batch-size", "50", "--eval-batch-size", "40", "--limit-batches", "4",
            "--seed", "5", "--device", "cpu", "--scheduler", "linear", "--lr", "0.002", "--time-budget", "8s",
            "--no-report"]  # two seconds of drawing; what this test follows is the plan
    # Killed in epoch 3, after its training and validation, before its metrics were written.
    killed = fmnist_process([*args, "--name", "killed"], kill_at="write-metrics.csv:3", on_work_clock=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run = tmp_path / "killed"
    assert len(metric_rows(run)) == 2
    at_the_kill = torch.load(run / "last.pt", weights_only=True)
    plan_then, rows_then, rates_then = at_the_kill["time_plan_state"], metric_rows(run), lr_steps(run)
    assert plan_then["steps_done"] == len(rates_then) == 8 and len(plan_then["decisions"]) == 2
    resumed = fmnist_here(["train", "--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr
    assert "measured in" not in resumed.stdout  # the first plan is kept, not measured again
    assert "time budget 8s: training and validation took" in resumed.stdout  # and what it used, with the figures
    summary = json.loads((run / "summary.json").read_text())
    # What was decided and trained before the kill stands; the plan went on from there.
    assert summary["replans"][:2] == plan_then["decisions"]
    assert metric_rows(run)[:2] == rows_then and lr_steps(run)[:8] == rates_then
    rates = lr_steps(run)
    assert len(rates) == summary["trained_steps"] == summary["replans"][-1]["total_steps"]
    assert summary["schedule_finished"] is True
    assert rates[-1] == pytest.approx(0.002 / at_the_kill["resolved"]["time_plan"]["total_steps"])  # linear's
    # The time used before the kill counts (the measuring and two epochs); the time between the kill and the
    # resume does not, nor does the work of epoch 3 that the kill lost: the run used what a run that was never
    # stopped would have.
    plan = TimePlan.from_dict(at_the_kill["resolved"]["time_plan"])
    assert plan_then["used_seconds"] == pytest.approx(work_done(plan, 8, 2))
    assert summary["budget_used_seconds"] == pytest.approx(work_done(plan, summary["trained_steps"], summary["epochs"]))
    assert 0.95 * 8 <= summary["budget_used_seconds"] <= 8


def test_amp_auto_resolves_once_and_is_recorded(tiny_data, tmp_path):
    from fmnist.training.runtime import cpu_has_bf16_matrix_instructions

    result = train(budgeted(tiny_data, tmp_path, epochs=1, amp="auto", name="auto"))
    saved = json.loads((result.path / "config.json").read_text())
    assert saved["config"]["amp"] == "auto"
    assert saved["resolved"]["amp"] == ("bf16" if cpu_has_bf16_matrix_instructions() else "none")


def test_bench_time_to_accuracy_and_sweeps_take_a_budget(tiny_data, tmp_path, capsys, work_clock):
    data = ["--data-dir", str(tiny_data), "--allow-unverified-data", "--val-size", "100"]
    assert main(["bench", "--time-to-accuracy", "quick", "--time-budget", "6s", *data, "--json"]) == 0
    run = json.loads(capsys.readouterr().out)["runs"][0]
    plan = TimePlan.from_dict(run["time_plan"])
    trained_steps = run["budget"]["trained_steps"]
    trained_epochs = -(-trained_steps // plan.steps_per_epoch)  # planned again as it went
    assert plan.budget == "6s" and [point["epoch"] for point in run["curve"]] == list(range(1, trained_epochs + 1))
    # The test evaluations after each epoch are the benchmark's, not the budget's time: the budget paid for
    # the measuring, the steps and the validations (`quick` evaluates 100 images in one batch) only.
    used = run["budget"]["budget_used_seconds"]
    assert used == pytest.approx(work_done(plan, trained_steps, trained_epochs, validation_batches=1))
    assert 0.95 * 6 <= used <= 6
    assert main(["sweep", "--set", "time_budget=5s,6s", "--limit-batches", "4", "--batch-size", "50", *data,
                 "--out", str(tmp_path), "--name", "budgets", "--no-report"]) == 0
    budgets = sorted(json.loads(path.read_text())["resolved"]["time_plan"]["budget"]
                     for path in (tmp_path / "budgets").glob("*/config.json"))
    assert budgets == ["5s", "6s"]


def test_recipes_list_their_budget_with_the_command_and_what_it_measured(capsys):
    assert main(["recipes", "--json"]) == 0
    listed = {recipe["name"]: recipe for recipe in json.loads(capsys.readouterr().out)}
    budgeted = {name: recipe for name, recipe in listed.items() if recipe["budget"]}
    assert set(budgeted) == {"fast", "best", "top", "top-long"}
    for name, recipe in budgeted.items():
        assert recipe["budget_command"] == f"fmnist train --recipe {name} --time-budget {recipe['budget']}"
        assert recipe["measured_at_budget"]
        TrainConfig.from_recipe(name, time_budget=recipe["budget"])  # the command's config is valid
    assert main(["recipes", "best"]) == 0
    assert "at budget `fmnist train --recipe best --time-budget 5m`" in " ".join(capsys.readouterr().out.split())


def test_the_report_says_when_a_budget_cut_the_schedule_short():
    plan = plan_steps("5m", 6.0, 0.125, 2.4, 215)
    saved = {"resolved": {"time_plan": plan.to_dict()}}
    decisions = [{"epoch": 1, "total_steps": plan.total_steps}, {"epoch": 2, "total_steps": 430}]
    summary = {"trained_steps": 430, "budget_used_seconds": 290.0, "replans": decisions}
    cut = "\n".join(budget_section(saved, {**summary, "schedule_finished": False}))
    assert "cut short after epoch 2" in cut and "430 steps = 2 epochs, after 2 plans made again" in cut
    for finished in (True, None):  # as planned, or a summary written before it was recorded
        assert "cut short" not in "\n".join(budget_section(saved, {**summary, "schedule_finished": finished}))
