"""`fmnist train --resume` of a run whose config.json was edited by hand: every key of config.json, of
its resolved settings and of the time plan, each removed, set to null, given the wrong type, changed,
or joined by an unknown key, is one line that says what is wrong and what to do, exit code 2, and the
run folder stays as it was. With last.pt, any change is refused (resume would train another run than
the one last.pt continues); without it (stopped before its first epoch ended) only what is not a valid,
complete config is."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest

from conftest import snapshot, write_dataset
from fmnist.cli import main
from fmnist.experiment import train
from fmnist.runs.edited import MAY_CHANGE_ON_RESUME
from fmnist.training.budget import MIN_STEPS, plan_steps
from fmnist.training.config import FIELDS, TrainConfig
from fmnist.training.replan import planner_for

MISSING = "<removed>"


@pytest.fixture(scope="module")
def budgeted_run(tmp_path_factory) -> Path:
    """A finished time-budgeted run, its summary.json removed so that it looks stopped. The plan is made
    from fixed costs (no measuring) and not made again: 7 epochs of 4 steps and a last one of 1, whatever
    this machine's speed (planned again from this machine's speed, it would fill the 40 s)."""
    import fmnist.experiment as experiment

    def first_plan_only(plan, training):
        planner = planner_for(plan, training)
        planner.replans = False
        return planner

    root = tmp_path_factory.mktemp("edits")
    config = TrainConfig(model="fast-cnn-16", time_budget="40s", data_dir=str(write_dataset(root / "data")),
                         allow_unverified_data=True, val_size=100, batch_size=50, limit_batches=4, seed=5,
                         device="cpu", out=str(root / "runs"), name="budgeted")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(experiment, "plan_time_budget", lambda config, *splits: plan_steps(config.time_budget, 1.0, 1.0,
                                                                                          1.0, 4))
        patch.setattr(experiment, "planner_for", first_plan_only)
        path = train(config).path
    (path / "summary.json").unlink()
    return path


def saved_config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def edits_of(value) -> dict:
    """Edits of one value: wrong types, and a different value of the same type."""
    edits = {"list": [value], "null": None}
    if isinstance(value, bool):
        edits.update({"number-for-bool": int(value), "flipped": not value})
    elif isinstance(value, (int, float)):
        edits.update({"text": str(value), "changed": value * 2 + 1, "negative": -value - 1})
    elif isinstance(value, str):
        edits.update({"number": 7, "changed": value + "x"})
    elif value is None:
        edits.update({"number": 0.5, "text": "x"})
    return edits


def at(saved: dict, key_path: tuple[str, ...]) -> dict:
    table = saved
    for key in key_path:
        table = table[key]
    return table


def cases(saved: dict) -> list[tuple[tuple[str, ...], str, object]]:
    """(path of the table, key, new value or MISSING) for every key of config.json's tables that resume reads."""
    found = []
    tables = [(), ("config",), ("resolved",), ("resolved", "time_plan")]
    for table_path in tables:
        table = at(saved, table_path)
        for key, value in table.items():
            if table_path == () and key not in ("seed", "data", "environment", "options_given", "resolved", "resumes"):
                continue  # config (below, key by key) and the records resume does not read
            found.append((table_path, key, MISSING))
            found += [(table_path, key, edited) for edited in edits_of(value).values()]
        if table_path != ():  # other top-level keys are details a sweep or a search records: kept as they are
            found.append((table_path, "unknown_key", 1))
    found.append(((), "resumes", {"not": "a list"}))
    found.append(((), "command", "train --epochs 3"))  # the report would shlex.join a list of strings
    return found


def edit_case_id(case) -> str:
    table_path, key, value = case
    return ".".join((*table_path, key)) + "=" + (value if value is MISSING else json.dumps(value))[:30]


def apply(saved: dict, case) -> dict:
    table_path, key, value = case
    edited = copy.deepcopy(saved)
    table = at(edited, table_path)
    if value is MISSING:
        table.pop(key, None)
    else:
        table[key] = value
    return edited


def resume_refuses(run: Path, edited: dict, capsys) -> str:
    (run / "config.json").write_text(json.dumps(edited, indent=2))
    before = snapshot(run)
    code = main(["train", "--resume", str(run)])
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err, captured.out)
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert snapshot(run) == before  # nothing changed: no epoch trained, config.json not rewritten
    assert not (run / "summary.json").exists()
    return captured.err


# The cases come from a config.json of this version's shape: one written by a quick config, not the
# fixture (collection happens before fixtures run); the test checks that the shapes agree.
SHAPE = {"config": TrainConfig(time_budget="40s").to_dict(), "seed": 42, "data": {}, "environment": {},
         "options_given": {}, "resolved": {"amp": "none", "amp_reason": "--amp none", "time_plan": {
             "budget": "40s", "budget_seconds": 40.0, "measure_seconds": 1.0, "step_seconds": 1.0,
             "epoch_end_seconds": 1.0, "steps_per_epoch": 4, "total_steps": 28, "compile_seconds": 0.0, "epochs": 7,
             "last_epoch_steps": 4}},
         "resumes": []}


def test_the_cases_cover_every_key_config_json_has(budgeted_run):
    saved = saved_config(budgeted_run)
    assert set(saved["config"]) == set(SHAPE["config"]) == set(FIELDS)
    assert set(saved["resolved"]) == set(SHAPE["resolved"])
    assert set(saved["resolved"]["time_plan"]) == set(SHAPE["resolved"]["time_plan"])
    assert saved["resolved"]["time_plan"]["total_steps"] >= MIN_STEPS


@pytest.mark.parametrize("case", cases(SHAPE), ids=edit_case_id)
def test_every_edit_of_a_run_with_last_pt_is_one_line_that_says_what_to_do(budgeted_run, case, capsys, tmp_path):
    run = Path(shutil.copytree(budgeted_run, tmp_path / "run"))
    saved = saved_config(run)
    saved.setdefault("resumes", [])
    table_path, key, value = case
    original = at(saved, table_path).get(key, MISSING) if table_path != () or key in saved else MISSING
    if value is not MISSING and original is not MISSING and json.dumps(value) == json.dumps(original):
        pytest.skip("not an edit of this run's value")
    if table_path == ("config",) and key in MAY_CHANGE_ON_RESUME and (isinstance(value, str) or value is None) \
            and key == "data_dir":
        pytest.skip("another valid data folder: may change on resume")
    if table_path == () and key == "resumes" and value is MISSING:
        pytest.skip("a run not resumed yet has no resumes")
    error = resume_refuses(run, apply(saved, case), capsys)
    assert error.startswith(f"fmnist: error: --resume {run}: config.json"), error
    assert "; put" in error or "; remove it" in error or "; restore config.json" in error, error
    assert "or start a new run" in error, error
    assert ".py" not in error  # says what to do, not where in the source


@pytest.mark.parametrize("case", [case for case in cases(SHAPE) if case[2] is MISSING or case[1] == "unknown_key"
                                  or isinstance(case[2], list) and case[0] != ()], ids=edit_case_id)
def test_without_last_pt_what_is_not_a_complete_valid_config_is_refused(budgeted_run, case, capsys, tmp_path):
    run = tmp_path / "run"
    run.mkdir()  # stopped before its first epoch ended: config.json only
    saved = saved_config(budgeted_run)
    table_path, key, value = case
    if table_path == () and key == "resumes":
        pytest.skip("a run not resumed yet has no resumes")
    if value is MISSING and (*table_path, key) in OLDER_RUNS_LACK:
        pytest.skip("runs of older versions lack this key, and resume")
    error = resume_refuses(run, apply(saved, case), capsys)
    assert error.startswith(f"fmnist: error: --resume {run}: config.json"), error
    assert ".py" not in error


# Keys added after runs were made without them: such a run (no last.pt to compare with) still resumes.
OLDER_RUNS_LACK = {("resolved", "amp_reason"), ("resolved", "time_plan", "compile_seconds")}


def test_a_hand_edited_time_plan_says_which_key_and_the_value_to_put_back(budgeted_run, capsys, tmp_path):
    run = Path(shutil.copytree(budgeted_run, tmp_path / "run"))
    original = saved_config(run)
    saved = copy.deepcopy(original)
    saved["resolved"]["time_plan"] = {"budget": "15s"}  # was a KeyError
    error = resume_refuses(run, saved, capsys)
    assert 'config.json says resolved.time_plan.budget = "15s" but last.pt was trained with "40s"; put back "40s"' \
        in error
    saved = copy.deepcopy(original)
    del saved["resolved"]["time_plan"]["step_seconds"]
    assert "config.json has no resolved.time_plan.step_seconds but last.pt was trained with 1.0; put back 1.0" \
        in resume_refuses(run, saved, capsys)
    saved = copy.deepcopy(original)
    saved["resolved"]["time_plan"]["total_steps"] = 60
    planned = original["resolved"]["time_plan"]["total_steps"]
    assert f"resolved.time_plan.total_steps = 60 but last.pt was trained with {planned}; put back {planned}" in \
        resume_refuses(run, saved, capsys)
    saved = copy.deepcopy(original)
    saved["config"]["max_lr"] = "fast"
    error = resume_refuses(run, saved, capsys)
    assert "config.json's config.max_lr is not valid (--max-lr 'fast': should be of type float" in error
    assert "put back 0.01, what last.pt was trained with" in error


def test_the_run_still_resumes_once_config_json_is_put_back(budgeted_run, capsys, tmp_path):
    run = Path(shutil.copytree(budgeted_run, tmp_path / "run"))
    original = (run / "config.json").read_text()
    saved = saved_config(run)
    saved["seed"] = 6
    assert "put back 5" in resume_refuses(run, saved, capsys)
    (run / "config.json").write_text(original)
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["finished"] is True
