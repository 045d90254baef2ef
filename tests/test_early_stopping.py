"""Early stopping (--patience, --min-delta) and a callback's StopTraining end a run like any other: the
best epoch is tested, report.md says why it stopped, and a resumed run stops after the same epoch.

A --min-delta of 0.99 makes every epoch after the first "not an improvement" on any data, so the
epoch that stops is known in advance without depending on what the tiny network learns.
"""

from __future__ import annotations

import csv
import logging
import math

import pytest

import fmnist
import fmnist.experiment
from conftest import fmnist_here, one_line, tiny_train_args
from fmnist import EarlyStopping, StopTraining, TrainConfig, resume, train
from fmnist.runs.folder import read_summary
from fmnist.training.budget import plan_steps

NEVER_BETTER = 0.99  # no accuracy can rise by more than this after the first epoch's


def tiny_config(data, out, name: str, **options) -> TrainConfig:
    options = {"epochs": 6, **options}
    return TrainConfig(batch_size=50, val_size=100, limit_batches=3, data_dir=str(data), device="cpu",
                       allow_unverified_data=True, out=str(out), name=name, seed=3, **options)


def learned(run_path) -> list[tuple]:
    """metrics.csv without its timings: what the network learned, epoch by epoch."""
    with open(run_path / "metrics.csv") as file:
        return [(row["epoch"], row["train_loss"], row["val_loss"], row["val_accuracy"], row["lr"])
                for row in csv.DictReader(file)]


def rows(*accuracies: float) -> list[dict]:
    return [{"epoch": epoch, "val_accuracy": accuracy} for epoch, accuracy in enumerate(accuracies, 1)]


@pytest.mark.parametrize(("accuracies", "patience", "min_delta", "stops"), [
    ((0.5, 0.6, 0.7), 1, 0.0, False),          # improving every epoch
    ((0.5, 0.5), 1, 0.0, True),                # equal is not better
    ((0.5, 0.4, 0.3), 2, 0.0, True),
    ((0.5, 0.4, 0.6, 0.5), 2, 0.0, False),     # epoch 3 improved: one epoch since
    ((0.5, 0.505, 0.509), 2, 0.01, True),      # rises smaller than min_delta do not count
    ((0.5, 0.52, 0.51), 2, 0.01, False),
    ((), 1, 0.0, False),
    ((math.nan, 0.1), 1, 0.0, False),          # NaN is never the best: epoch 2 improves on nothing yet
])
def test_the_stop_is_decided_from_the_history_alone(accuracies, patience, min_delta, stops):
    reason = EarlyStopping(patience, min_delta).reason_to_stop(rows(*accuracies))
    assert (reason is not None) == stops
    if stops:
        assert f"--patience {patience}" in reason and "not improved" in reason


@pytest.mark.parametrize("arguments", [(0,), (-1,), (1.5,), (True,), ("2",), (None,), (1, -0.1), (1, 1.0),
                                       (1, math.nan), (1, "0.1"), (1, True)])
def test_bad_early_stopping_arguments_are_config_errors(arguments):
    with pytest.raises(fmnist.ConfigError, match=r"EarlyStopping\((patience|min_delta)="):
        EarlyStopping(*arguments)


def test_a_run_stops_after_patience_and_finishes_like_any_other(tiny_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="fmnist"):
        result = train(tiny_config(tiny_data, tmp_path, "stops", patience=2, min_delta=NEVER_BETTER))
    assert result.stopped_early.startswith("validation accuracy has not improved by more than 0.99 for 2 epochs")
    assert len(learned(result.path)) == 3 and result.best_epoch in (1, 2, 3)
    summary = read_summary(result.path)
    assert summary["finished"] and summary["epochs"] == 3 and summary["epochs_planned"] == 6
    assert summary["stopped_early"] == result.stopped_early and summary["test_accuracy"] == result.test_accuracy
    report = (result.path / "report.md").read_text()
    assert "## Stopped early" in report and f"after epoch 3 of 6: {result.stopped_early}" in report
    assert "stopping after epoch 3 of 6: validation accuracy" in caplog.text
    # The default OneCycle schedule is planned to the last step: the run said so once, at its start.
    assert caplog.text.count("the onecycle schedule is planned over 6 epochs; a stop before then") == 1


def test_a_schedule_by_epoch_needs_no_warning(tiny_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="fmnist"):
        train(tiny_config(tiny_data, tmp_path, "steplr", patience=1, min_delta=NEVER_BETTER, scheduler="steplr",
                          epochs=3))
    assert "--patience 1:" not in caplog.text and "stopping after epoch 2 of 3" in caplog.text


@pytest.mark.parametrize("crash_after", [2, 3], ids=["before-the-stopping-epoch", "at-the-stopping-epoch"])
def test_a_resumed_run_stops_after_the_same_epoch(tiny_data, tmp_path, crash_after):
    """Crash once epoch `crash_after` is saved (3 is the epoch that stops: the crash comes before the
    final test), resume, and get the run that never stopped: same epochs, same test figure."""
    whole = train(tiny_config(tiny_data, tmp_path, "whole", patience=2, min_delta=NEVER_BETTER))

    def crash(row: dict) -> None:
        if row["epoch"] == crash_after:
            raise RuntimeError("a crash after the epoch was saved")

    with pytest.raises(RuntimeError):
        train(tiny_config(tiny_data, tmp_path, "crashed", patience=2, min_delta=NEVER_BETTER), after_epoch=crash)
    assert not read_summary(tmp_path / "crashed")  # stopped, not finished
    resumed = resume(tmp_path / "crashed")
    assert learned(resumed.path) == learned(whole.path)
    assert (resumed.stopped_early, resumed.best_epoch, resumed.test_accuracy) == (
        whole.stopped_early, whole.best_epoch, whole.test_accuracy)
    assert "## Stopped early" in (resumed.path / "report.md").read_text()


def test_a_callback_that_raises_stop_training_finishes_the_run(tiny_data, tmp_path):
    def enough(row: dict) -> None:
        if row["epoch"] == 2:
            raise StopTraining("the user had seen enough")

    result = train(tiny_config(tiny_data, tmp_path, "asked", epochs=4), after_epoch=enough)
    assert result.stopped_early == "the user had seen enough" and len(learned(result.path)) == 2
    summary = read_summary(result.path)
    assert summary["finished"] and summary["test_accuracy"] == result.test_accuracy
    assert "after epoch 2 of 4: the user had seen enough" in (result.path / "report.md").read_text()
    assert fmnist.StopTraining is StopTraining


def test_a_run_stopped_by_its_callback_resumes_to_the_final_test_not_to_more_epochs(tiny_data, tmp_path,
                                                                                     monkeypatch):
    def enough(row: dict) -> None:
        if row["epoch"] == 2:
            raise StopTraining("the user had seen enough")

    def process_ends(*args, **kwargs):
        raise MemoryError("the process ended before the final test")

    uninterrupted = train(tiny_config(tiny_data, tmp_path, "whole", epochs=4), after_epoch=enough)
    with monkeypatch.context() as patched:
        patched.setattr(fmnist.experiment, "test_best_weights", process_ends)
        with pytest.raises(MemoryError):
            train(tiny_config(tiny_data, tmp_path, "cut", epochs=4), after_epoch=enough)
    assert not (tmp_path / "cut" / "summary.json").exists()
    result = resume(tmp_path / "cut")  # no callback now: the stop it asked for was saved with the epoch
    assert result.stopped_early == "the user had seen enough"
    assert learned(result.path) == learned(uninterrupted.path) and len(learned(result.path)) == 2
    assert result.test_accuracy == uninterrupted.test_accuracy
    assert read_summary(result.path)["epochs_planned"] == 4


def test_a_stop_at_the_last_epoch_is_no_early_stop(tiny_data, tmp_path):
    def at_the_end(row: dict) -> None:
        if row["epoch"] == 3:
            raise StopTraining("too late to matter")

    result = train(tiny_config(tiny_data, tmp_path, "last", epochs=3), after_epoch=at_the_end)
    assert result.stopped_early is None and "stopped_early" not in read_summary(result.path)


@pytest.mark.parametrize(("options", "message"), [
    (["--patience", "0"], "--patience 0: must be at least 1"),
    (["--patience", "two"], "--patience 'two': not a valid int"),
    (["--patience", "2"], "--patience 2: with --epochs 3 it could never stop before the last epoch"),
    (["--patience", "1", "--epochs", "2"], "early stopping needs --epochs 3 or more"),
    (["--min-delta", "0.01"], "--min-delta 0.01: ignored by these settings: only early stopping (--patience)"),
    (["--patience", "1", "--min-delta", "1"], "--min-delta 1.0: must be in [0, 1)"),
    (["--patience", "1", "--min-delta", "-0.1"], "--min-delta -0.1: must be in [0, 1)"),
    (["--patience", "1", "--min-delta", "nan"], "--min-delta nan: must be a finite number"),
])
def test_bad_early_stopping_options_are_one_line_and_write_nothing(tiny_data, tmp_path, options, message):
    args = tiny_train_args(tiny_data, tmp_path / "runs", "bad")
    result = fmnist_here([*args, *options])
    assert message in one_line(result)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("options", "message"), [
    ({"patience": 0}, "TrainConfig(patience=0): must be at least 1"),
    ({"patience": 1.5}, "TrainConfig(patience=1.5): should be"),
    ({"patience": True}, "TrainConfig(patience=True): should be"),
    ({"min_delta": 0.1}, "only early stopping (patience) uses it"),
    ({"patience": 1, "min_delta": "0.1"}, "TrainConfig(min_delta='0.1'): should be"),
])
def test_bad_early_stopping_options_are_config_errors(options, message):
    with pytest.raises(fmnist.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainConfig(epochs=5, **options)


def test_a_time_budget_too_short_for_the_patience_is_refused_before_the_folder(tiny_data, tmp_path, monkeypatch):
    # This machine's measured speed, fixed: 10 steps of 1 s per epoch and 1 s of validation plan 5 epochs in 60 s.
    plan = plan_steps("60s", 1.0, 1.0, 1.0, 10)
    monkeypatch.setattr(fmnist.experiment, "plan_time_budget", lambda *args: plan)
    config = TrainConfig(time_budget="60s", patience=plan.epochs - 1, batch_size=50, val_size=100, device="cpu",
                         data_dir=str(tiny_data), allow_unverified_data=True, out=str(tmp_path / "runs"))
    with pytest.raises(fmnist.ConfigError, match=rf"TrainConfig\(patience={plan.epochs - 1}\): time_budget='60s' "
                                                 f"plans {plan.epochs} epochs on this machine"):
        train(config)
    assert not (tmp_path / "runs").exists()
