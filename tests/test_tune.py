"""`fmnist tune`: Optuna studies shared by worker processes through a journal file or SQLite, every trial
a run folder judged on validation accuracy, pruning after a saved epoch, dead workers' trials marked
failed, and a bad space file refused in one line before anything starts."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fmnist_here, fmnist_process, one_line, snapshot, write_dataset
from fmnist.cli import main

optuna = pytest.importorskip("optuna", reason="the optional extra: pip install -e '.[tune]'")

SPACE = """
[max_lr]
low = 1e-3
high = 3e-2
log = true

[optimizer]
choices = ["adamw", "sgd"]
"""


def tune_args(data: Path, out: Path, space: Path, storage: str, trials: int, report: bool = False) -> list[str]:
    """Tiny trials; without their reports unless `report` (two seconds of drawing each, and what these tests
    check is the study)."""
    return [
        "tune", "--space", str(space), "--trials", str(trials), "--storage", storage, "--study", "search",
        "--model", "lenet", "--epochs", "2", "--batch-size", "50", "--limit-batches", "2", "--val-size", "100",
        "--data-dir", str(data), "--allow-unverified-data", "--device", "cpu", "--out", str(out),
        *([] if report else ["--no-report"]),
    ]


def worker(args: list[str], kill_at: str | None = None) -> subprocess.Popen:
    environment = {key: value for key, value in os.environ.items() if key != "FMNIST_KILL_AT"}
    if kill_at:
        environment["FMNIST_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "-m", "fmnist", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=environment)


def finished(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=300)
    return process.returncode, out, err


def storage_url(kind: str, folder: Path) -> str:
    return f"journal:{folder / 'search.log'}" if kind == "journal" else f"sqlite:///{folder / 'search.db'}"


def load_study(url: str):
    from fmnist.tools.tune import open_storage

    return optuna.load_study(study_name="search", storage=open_storage(url))


def reported_trials(output: str) -> list[int]:
    return [int(line.split()[1].rstrip(":")) for line in output.splitlines() if line.startswith("trial ")]


@pytest.fixture
def search(tmp_path) -> tuple[Path, Path]:
    (tmp_path / "space.toml").write_text(SPACE)
    return write_dataset(tmp_path / "data"), tmp_path / "space.toml"


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_two_workers_share_one_study_and_no_trial_is_lost_or_run_twice(kind, search, tmp_path, capsys):
    data, space = search
    url = storage_url(kind, tmp_path)
    report = kind == "journal"  # the trials' reports are written by default, and left out with --no-report
    args = tune_args(data, tmp_path / "runs", space, url, trials=2, report=report)
    outcomes = [finished(process) for process in [worker(args), worker(args)]]
    for code, _, err in outcomes:
        assert code == 0, err
    # Each worker ran two trials, and no trial was run by both.
    by_worker = [reported_trials(out) for _, out, _ in outcomes]
    assert [len(numbers) for numbers in by_worker] == [2, 2]
    assert sorted(by_worker[0] + by_worker[1]) == [0, 1, 2, 3]

    study = load_study(url)
    assert [(trial.number, trial.state.name) for trial in study.trials] == [(n, "COMPLETE") for n in range(4)]
    study_dir = tmp_path / "runs" / "search"
    assert sorted(path.name for path in study_dir.iterdir()) == [f"trial-{n:04d}" for n in range(4)]
    for trial in study.trials:
        run = study_dir / f"trial-{trial.number:04d}"
        saved = json.loads((run / "config.json").read_text())["config"]
        assert (saved["max_lr"], saved["optimizer"]) == (trial.params["max_lr"], trial.params["optimizer"])
        with open(run / "metrics.csv", newline="") as handle:
            validation = [float(row["val_accuracy"]) for row in csv.DictReader(handle)]
        # The objective is the best validation accuracy (never the test set), reported every epoch.
        assert trial.intermediate_values == {1: validation[0], 2: validation[1]}
        assert trial.value == max(validation) == json.loads((run / "summary.json").read_text())["best_val_accuracy"]
        assert json.loads((run / "trial.json").read_text())["state"] == "complete"
        assert trial.user_attrs["run_dir"] == str(run)
        assert (run / "report.md").is_file() == report and (run / "misclassified.png").is_file() == report

    if kind == "journal":
        capsys.readouterr()
        assert main(["tune", "--show", "--storage", url, "--study", "search", "--out", str(tmp_path / "runs")]) == 0
        printed = capsys.readouterr().out
        assert printed.startswith("study search: 4 trials (4 complete)")
        assert "| rank | trial | best val acc | max_lr | optimizer | epochs | run folder |" in printed
        for name in ("optimization_history.png", "param_importances.png"):
            assert (study_dir / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_a_killed_workers_trial_is_marked_failed_and_the_study_goes_on(search, tmp_path):
    data, space = search
    url = storage_url("journal", tmp_path)
    args = tune_args(data, tmp_path / "runs", space, url, trials=1)
    code, _, _ = finished(worker(args, kill_at="train-step:1"))  # SIGKILL in its first trial's first step
    assert code == -9
    assert [trial.state.name for trial in load_study(url).trials] == ["RUNNING"]

    code, out, err = finished(worker(args))
    assert code == 0, err
    assert "trial 0 marked failed: its worker (process" in out
    assert [(trial.number, trial.state.name) for trial in load_study(url).trials] == [(0, "FAIL"), (1, "COMPLETE")]
    assert (tmp_path / "runs" / "search" / "trial-0001" / "summary.json").is_file()


def test_a_pruned_trial_stops_after_its_epoch_is_saved(tmp_path):
    from fmnist.tools.tune import Parameter, objective_for, record_trial

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return True

    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    overrides = {"model": "lenet", "epochs": 3, "batch_size": 50, "limit_batches": 2, "val_size": 100,
                 "data_dir": str(write_dataset(tmp_path / "data")), "allow_unverified_data": True, "device": "cpu"}
    study_dir = tmp_path / "search"
    objective = objective_for(optuna, study_dir, [Parameter("max_lr", 1e-3, 1e-2, log=True)], None, overrides, {})
    study.optimize(objective, n_trials=1, callbacks=[record_trial(optuna, study_dir)])
    [trial] = study.trials
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [1]
    run = study_dir / "trial-0000"
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # the header and epoch 1
    assert (run / "last.pt").is_file() and not (run / "summary.json").exists()
    assert json.loads((run / "trial.json").read_text())["state"] == "pruned"


BAD_SPACES = [
    ("[lrr]\nlow = 1e-3\nhigh = 1e-2\n", "[lrr]: unknown option"),
    ("[max_lr]\nlow = 1e-2\nhigh = 1e-3\n", "[max_lr]: low 0.01 must be below high 0.001"),
    ("[max_lr]\nlow = 0.0\nhigh = 1e-2\nlog = true\n", "log = true needs low > 0"),
    ("[max_lr]\nlow = 1e-3\nhigh = 1e-2\nstep = 1e-3\n", "[max_lr]: unknown key(s) step"),
    ("[epochs]\nlow = 1.5\nhigh = 3\n", "[epochs]: low 1.5 is not of the option's type, int"),
    ("[optimizer]\nchoices = [\"adamw\", 3]\n", "[optimizer]: choice 3 is not of the option's type, str"),
    ("[optimizer]\nlow = 1\nhigh = 2\n", "[optimizer]: a str option; give choices"),
    ("[name]\nchoices = [\"a\", \"b\"]\n", "[name]: tune names and places the trials' run folders itself"),
    ("[step_size]\nlow = 1\nhigh = 3\n", "with step_size = 1: --step-size 1: ignored by these settings"),
    ("[optimizer]\nchoices = [\"sgd\", \"adamw\"]\n[nesterov]\nchoices = [true, false]\n",
     'with optimizer = "adamw", nesterov = true: --nesterov: ignored by these settings'),
    ("[max_lr\n", "not valid TOML"),
    ("", "no options to search"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_SPACES)
def test_a_bad_space_file_is_one_line_before_anything_starts(text, fragment, tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text(text)
    status = main(["tune", "--space", str(space), "--trials", "1", "--storage", f"journal:{tmp_path / 'j.log'}",
                   "--study", "s", "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and fragment in err and f"--space {space}" in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "j.log").exists()


TRIAL = ["--study", "s", "--space", "{tmp}/space.toml", "--trials", "1"]


@pytest.mark.parametrize(
    ("arguments", "fragment"),
    [
        (["--storage", "search.db", "--study", "s", "--show"], "give journal:PATH (a journal file) or an SQLAlchemy"),
        (["--storage", "journal:{tmp}/j.log", "--study", "nope", "--show"], "--study nope: no such study"),
        (["--storage", "journal:{tmp}/j.log", "--study", "s", "--show", "--lr", "0.1"], "drop --lr"),
        (["--storage", "journal:{tmp}/j.log", "--study", "s"], "give --space SPACE.toml and --trials N"),
        (["--study", "s"], "the following arguments are required: --storage"),
        # An option that the chosen mode ignores is refused, not dropped.
        (["--storage", "journal:{tmp}/j.log", *TRIAL, "--top", "3"], "--top applies to --show only"),
        (["--storage", "journal:{tmp}/j.log", "--study", "s", "--show", "--pruner", "none"], "drop --pruner"),
        (["--storage", "journal:{tmp}/j.log", "--study", "s", "--show", "--no-report"], "drop --no-report"),
        (["--storage", "journal:{tmp}/j.log", "--study", "s", "--show", "--hflip"], "drop --hflip"),
        (["--storage", "journal:", "--study", "s", "--show"], "give the journal file's path"),
        (["--storage", "journal:{tmp}", "--study", "s", "--show"], "is a folder; give a file in it"),
        (["--storage", "journal:{tmp}", *TRIAL], "is a folder; give a file in it"),
        (["--storage", "journal:{tmp}/missing/j.log", *TRIAL], "missing does not exist; create it first"),
        (["--storage", "nosuch:{tmp}/j.log", *TRIAL], "give journal:PATH (a journal file) or an SQLAlchemy URL"),
        (["--storage", "journal:{tmp}/space.toml", *TRIAL], "space.toml is not an Optuna journal"),
        (["--storage", "journal:{tmp}/space.toml", "--study", "s", "--show"], "space.toml is not an Optuna journal"),
        (["--storage", "sqlite:///{tmp}/space.toml", *TRIAL], "cannot open it ((sqlite3.DatabaseError) file is not"),
        (["--storage", "journal:{tmp}/j.log", *TRIAL[:-2], "--trials", "0"], "--trials 0: must be at least 1"),
        (["--storage", "journal:{tmp}/j.log", *TRIAL[:-2], "--trials", "-2"], "--trials -2: must be at least 1"),
        # The study is also the folder OUT/STUDY of its trials: never OUT itself nor a place outside it.
        (["--storage", "journal:{tmp}/j.log", *TRIAL[2:], "--study", "../elsewhere"], "--study '../elsewhere': give a"),
        (["--storage", "journal:{tmp}/j.log", *TRIAL[2:], "--study", "a/b"], "--study 'a/b': give a plain name"),
        (["--storage", "journal:{tmp}/j.log", *TRIAL[2:], "--study", ""], "--study '': give a plain name"),
        (["--storage", "journal:{tmp}/j.log", "--study", "..", "--show"], "--study '..': give a plain name"),
    ],
)
def test_tune_usage_mistakes_are_one_line(arguments, fragment, tmp_path, capsys):
    (tmp_path / "space.toml").write_text(SPACE)
    status = main(["tune", *(argument.replace("{tmp}", str(tmp_path)) for argument in arguments),
                   "--out", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and fragment in err, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["space.toml"]  # no journal, study or trial folder


def test_a_read_only_storage_or_out_folder_is_one_line(search, tmp_path, make_read_only):
    data, space = search
    (tmp_path / "locked").mkdir()
    locked = make_read_only(tmp_path / "locked")
    for storage, out in [(f"journal:{locked / 'j.log'}", tmp_path / "runs"),
                         (f"sqlite:///{locked / 'j.db'}", tmp_path / "runs"),
                         (f"journal:{tmp_path / 'j.log'}", locked)]:
        error = one_line(fmnist_here(tune_args(data, out, space, storage, trials=1)))
        assert str(locked) in error, error
    assert list(locked.iterdir()) == [] and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("race", [
    ("IntegrityError", "(sqlite3.IntegrityError) UNIQUE constraint failed: alembic_version.version_num"),
    ("OperationalError", "(sqlite3.OperationalError) table study_user_attributes already exists"),
    ("OperationalError", "(sqlite3.OperationalError) database is locked"),
])
def test_storage_another_worker_is_creating_is_tried_again_and_other_failures_are_said_at_once(race, tmp_path,
                                                                                              monkeypatch):
    """Two workers that create a new SQLite study's tables at once collide: a unique row or a table that the
    other has just added (the first two errors: what two processes started together hit here), or its lock
    held past SQLite's wait. The second worker tries again. A file that is not a database fails the same
    way every time: one line, without waiting."""
    import sqlalchemy.exc

    from fmnist.tools import tune

    waits: list[float] = []
    monkeypatch.setattr(tune.time, "sleep", waits.append)
    corrupt = tmp_path / "junk.db"
    corrupt.write_text("not a database")
    with pytest.raises(tune.ConfigError, match=r"cannot open it \(\(sqlite3.DatabaseError\) file is not a database"):
        tune.open_storage(f"sqlite:///{corrupt}")
    assert waits == []

    kind, text = race
    real, attempts = optuna.storages.RDBStorage, []

    def collides_once(*args, **kwargs):
        attempts.append(1)
        if len(attempts) == 1:
            raise getattr(sqlalchemy.exc, kind)(text, None, Exception(text))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", collides_once)
    storage = tune.open_storage(f"sqlite:///{tmp_path / 'search.db'}")
    assert isinstance(storage, real) and len(attempts) == 2 and waits == [0.5]


def test_a_second_worker_with_another_space_is_refused():
    from fmnist.tools.tune import open_study

    storage = optuna.storages.InMemoryStorage()
    record = {"space": [{"name": "max_lr"}], "options": {"epochs": 2}}
    open_study(optuna, storage, "memory", "s", "median", record)
    open_study(optuna, storage, "memory", "s", "none", record)  # the same search: joins
    with pytest.raises(Exception, match="searches with another --epochs"):
        open_study(optuna, storage, "memory", "s", "median", {**record, "options": {"epochs": 3}})


def test_tune_without_optuna_is_one_line_with_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
    status = main(["tune", "--space", str(tmp_path / "space.toml"), "--trials", "1", "--storage",
                   f"journal:{tmp_path / 'j.log'}", "--study", "s"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "pip install -e '.[tune]'" in err


@pytest.mark.parametrize(("signal_name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_mid_trial_is_fmnists_two_lines_and_the_same_command_goes_on(signal_name, code, search, tmp_path):
    data, space = search
    url = storage_url("journal", tmp_path)
    args = tune_args(data, tmp_path / "runs", space, url, trials=1)
    # 2 batches an epoch: the signal comes in epoch 2, after epoch 1 is saved.
    stopped = fmnist_process(args, kill_at=f"train-step:3:{signal_name}")
    # Optuna logs a failed trial with its traceback; only fmnist's stop line and the command show.
    assert stopped.returncode == code and stopped.stderr.count("\n") == 2, stopped.stderr
    stop_line, continue_line = stopped.stderr.splitlines()
    assert "epoch 1 is saved" in stop_line and "that trial is marked failed in the study" in stop_line
    assert continue_line == "continue with: " + " ".join(["fmnist", *args])
    trial_0 = tmp_path / "runs" / "search" / "trial-0000"
    kept = snapshot(trial_0)

    again = fmnist_here(args)
    assert again.returncode == 0 and again.stderr == "", again.stderr
    assert [(trial.number, trial.state.name) for trial in load_study(url).trials] == [(0, "FAIL"), (1, "COMPLETE")]
    assert snapshot(trial_0) == kept  # the stopped trial's saved epoch is kept as it was


# Where the signal comes outside a trial's steps: before the first trial, as trial 0's trial.json is
# written, after the last trial (before the table); and what the study holds after the same command.
OUTSIDE_A_TRIAL = [("tune-start:1", ["COMPLETE"]), ("write-trial.json:1", ["COMPLETE", "COMPLETE"]),
                   ("tune-end:1", ["COMPLETE", "COMPLETE"])]


@pytest.mark.parametrize(("point", "trials_in_the_end"), OUTSIDE_A_TRIAL)
@pytest.mark.parametrize(("signal_name", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_a_signal_outside_a_trials_steps_also_prints_the_command_that_goes_on(point, trials_in_the_end, signal_name,
                                                                              code, search, tmp_path):
    data, space = search
    url = storage_url("journal", tmp_path)
    args = tune_args(data, tmp_path / "runs", space, url, trials=1)
    stopped = fmnist_process(args, kill_at=f"{point}:{signal_name}")
    assert stopped.returncode == code and stopped.stderr.count("\n") == 2, stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.splitlines()[1] == "continue with: " + " ".join(["fmnist", *args])
    assert fmnist_here(args).returncode == 0
    assert [trial.state.name for trial in load_study(url).trials] == trials_in_the_end


def test_show_of_a_study_without_trials_says_so_and_writes_nothing(tmp_path, capsys):
    from fmnist.tools.tune import open_storage, open_study

    url = storage_url("journal", tmp_path)
    open_study(optuna, open_storage(url), url, "search", "median", {"space": [], "options": {}})
    assert main(["tune", "--show", "--storage", url, "--study", "search", "--out", str(tmp_path / "runs")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "study search: 0 trials (none yet)\n" and captured.err == ""
    assert not (tmp_path / "runs").exists()
