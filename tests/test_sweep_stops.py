"""A stopped sweep always ends, and its printed command always finishes it.

Every state a sweep can be in (nothing started; a run running while others wait; a run finished
while others wait; every run ended) meets every way of stopping it (a first and a second signal,
SIGINT and SIGTERM, sent to the sweep's process group as a terminal does or to the sweep process
alone; a job that fails). FMNIST_KILL_AT puts each signal at an exact point (see fmnist.faults):
`sweep-run-start:N` just before the N-th run starts, `sweep-run-end:N` just after the N-th run
ended, `sweep-job-started:N` kills the N-th job as it starts. Each sweep runs under a timeout (the
bug this guards against was a sweep that never exited), then its `continue with:` command runs
to the end (in the test's own process, as nothing is sent to it): every run finished, the comparison
written, and no run's report, as the sweep was told (`--no-report`: a report is two seconds of
drawing per run, and what these tests check is the sweep).

The signal kinds and targets are spread over the states so that each state meets SIGINT and
SIGTERM, the group and the process, a first and a second signal, and each pair of those meets too.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import fmnist_here, write_dataset

EXIT_CODES = {"SIGINT": 130, "SIGTERM": 143}
SEEDS = ("seed=5", "seed=6", "seed=7")  # --jobs 2 needs three runs for one to wait while two run; in turn, two do
TIMEOUT = 300  # seconds; these sweeps end in seconds, but a loaded machine may take a minute


def runs_of(jobs: int) -> tuple[str, ...]:
    """The runs of a sweep with `jobs` at a time."""
    return SEEDS if jobs > 1 else SEEDS[:2]


def sweep_args(data: Path, out: Path, jobs: int) -> list[str]:
    """Tiny two-epoch runs (one step an epoch) without reports, `jobs` at a time: three, or two in turn."""
    return [
        "sweep", "--seeds", str(len(runs_of(jobs))), "--epochs", "2", "--model", "lenet", "--batch-size", "50",
        "--limit-batches", "1", "--val-size", "100", "--data-dir", str(data), "--allow-unverified-data",
        "--device", "cpu", "--seed", "5", "--out", str(out), "--name", "s", "--jobs", str(jobs),
        "--threads-per-job", "1", "--no-report",
    ]


def fmnist(args: list[str], kill_at: str | None = None) -> subprocess.CompletedProcess:
    """`python -m fmnist ARGS` in a session of its own, so that a signal to its process group reaches it
    (and whatever shares its group) and nothing else."""
    env = {key: value for key, value in os.environ.items() if key != "FMNIST_KILL_AT"}
    if kill_at:
        env["FMNIST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-m", "fmnist", *args], capture_output=True, text=True, env=env,
                          timeout=TIMEOUT, start_new_session=True)


def signals_at(point: str, signal_name: str, target: str, second: bool) -> str:
    """FMNIST_KILL_AT for a first (and a second) signal at `point`."""
    one = f"{point}:{signal_name}" + (":group" if target == "group" else "")
    return f"{one},{one}" if second else one


def stopped_then_continued(args: list[str], kill_at: str, code: int, sweep: Path, seeds: tuple[str, ...],
                           look=lambda folder: None) -> list[str]:
    """Run the sweep with the fault, check that it ended with `code` and the continue line, `look` at the
    sweep folder, run the printed command, and check that it finished everything. Returns the stopped
    sweep's stderr lines."""
    stopped = fmnist(args, kill_at)
    lines = stopped.stderr.strip().splitlines()
    assert stopped.returncode == code and "Traceback" not in stopped.stderr, (stopped.returncode, stopped.stderr)
    assert lines[-1] == "continue with: " + shlex.join(["fmnist", *args]), stopped.stderr
    assert not (sweep / "comparison.csv").exists()
    look(sweep)
    continued = fmnist_here(shlex.split(lines[-1].removeprefix("continue with: "))[1:])
    assert continued.returncode == 0, continued.stderr
    for seed in seeds:
        summary = json.loads((sweep / seed / "summary.json").read_text())
        assert summary["finished"] is True and summary["epochs"] == 2
        assert not (sweep / seed / "report.md").exists() and not list((sweep / seed).glob("*.png"))
    assert (sweep / "comparison.csv").is_file() and (sweep / "runs.csv").is_file()
    return lines


def started_runs(sweep: Path) -> list[str]:
    return sorted(seed for seed in SEEDS if (sweep / seed).exists())


def finished_runs(sweep: Path) -> list[str]:
    return sorted(seed for seed in SEEDS if (sweep / seed / "summary.json").exists())


# (state, where its signal comes, the signal and its target as a first signal, and as a second one)
# For --jobs 2: `sweep-run-start:2` comes as run 2 would start, with run 1's job just started (told to
# stop as its process starts); `sweep-run-end:1` as the first job ended, with the other one running
# (or ended too) and run 3 waiting.
PARALLEL = {
    "nothing started": ("sweep-run-start:1", ("SIGINT", "process"), ("SIGTERM", "group")),
    "some run, some wait": ("sweep-run-start:2", ("SIGTERM", "process"), ("SIGINT", "group")),
    "some finished, some wait": ("sweep-run-end:1", ("SIGINT", "group"), ("SIGTERM", "process")),
    "all ended": ("sweep-run-end:3", ("SIGTERM", "group"), ("SIGINT", "process")),
}
# For --jobs 1 (two runs in turn, in the sweep's process): `train-step:2` is run 1's step in epoch 2.
IN_TURN = {
    "nothing started": ("sweep-run-start:1", ("SIGTERM", "group"), ("SIGINT", "process")),
    "some run, some wait": ("train-step:2", ("SIGINT", "group"), ("SIGTERM", "process")),
    "some finished, some wait": ("sweep-run-end:1", ("SIGTERM", "process"), ("SIGINT", "group")),
    "all ended": ("sweep-run-end:2", ("SIGINT", "process"), ("SIGTERM", "group")),
}


def cases(states: dict) -> list:
    return [pytest.param(state, second, id=f"{state}-{'second' if second else 'first'}".replace(" ", "_"))
            for state in states for second in (False, True)]


def stop_line_and_continue(tmp_path: Path, jobs: int, states: dict, state: str,
                           second: bool) -> tuple[str, str, dict]:
    """The stopped sweep's last line but one (fmnist's own), how it was stopped, and its run folders then."""
    point, first_signal, second_signal = states[state]
    signal_name, target = second_signal if second else first_signal
    sweep = tmp_path / "s"
    args = sweep_args(write_dataset(tmp_path / "data"), tmp_path, jobs)
    before: dict[str, list[str]] = {}

    def look(folder: Path) -> None:  # the run folders as the stopped sweep left them
        before["started"], before["finished"] = started_runs(folder), finished_runs(folder)

    stop_line = stopped_then_continued(args, signals_at(point, signal_name, target, second),
                                       EXIT_CODES[signal_name], sweep, runs_of(jobs), look)[-2]
    said = "Ctrl-C" if signal_name == "SIGINT" else "SIGTERM"
    how = f"at once by a second {said}" if second else f"by {said}"
    return stop_line.removeprefix("fmnist: "), how, before


@pytest.mark.parametrize(("state", "second"), cases(PARALLEL))
def test_a_signal_ends_a_parallel_sweep_in_any_state_and_its_command_finishes_it(state, second, tmp_path):
    line, how, before = stop_line_and_continue(tmp_path, 2, PARALLEL, state, second)
    if state == "nothing started":
        assert line == f"sweep stopped {how}: 3 runs not started" and before["started"] == []
    elif state == "some run, some wait":  # run 1's job was told to stop as it started
        assert line == f"sweep stopped {how}: 1 stopped (seed=5); 2 runs not started", line
        assert before["finished"] == [] and before["started"] in ([], ["seed=5"])
    elif state == "some finished, some wait":
        assert line.startswith(f"sweep stopped {how}: ") and line.endswith("; 1 run not started"), line
        assert "seed=7" not in before["started"] and before["finished"]
    else:
        assert line == f"sweep stopped {how}: 3 finished", line
        assert before["finished"] == list(SEEDS)


@pytest.mark.parametrize(("state", "second"), cases(IN_TURN))
def test_a_signal_ends_a_sweep_in_turn_in_any_state_and_its_command_finishes_it(state, second, tmp_path):
    line, how, before = stop_line_and_continue(tmp_path, 1, IN_TURN, state, second)
    if state == "nothing started":
        assert line.startswith("sweep stopped ") and before["started"] == [], line
        assert line.endswith(f"{how}" if second else f"{how} before run 1/2 (seed=5); 2 runs not started"), line
    elif state == "some run, some wait":
        said = how.removeprefix("by ").removeprefix("at once by a second ")
        expected = (f"sweep stopped {how} in run 1/2 (seed=5), which keeps its last saved epoch; "
                    "1 run not started") if second else \
            f"sweep stopped in run 1/2 (seed=5): stopped by {said} in epoch 2 after batch 1; epoch 1 is saved in "
        assert line.startswith(expected.split("; epoch 1")[0]), line
        assert line.endswith("1 run not started") and before == {"started": ["seed=5"], "finished": []}
    elif state == "some finished, some wait":
        assert line.startswith("sweep stopped ") and before == {"started": ["seed=5"], "finished": ["seed=5"]}
        assert line.endswith(f"{how}" if second else f"{how} before run 2/2 (seed=6); 1 run not started"), line
    else:
        assert line == (f"sweep stopped {how}" if second else
                        f"sweep stopped {how}: every run has ended; the comparison is not written yet"), line
        assert before["finished"] == list(runs_of(1))


# A job that fails (FMNIST_KILL_AT: SIGKILLed, as the out-of-memory killer would) while another runs
# and a run waits; while no other runs (every job died in its first step) and a run waits; and as
# the last run, the others finished.
FAILURES = {
    "some run, some wait": ("sweep-job-started:2", "1 finished; 1 failed (seed=6); 1 run not started"),
    "none run, some wait": ("train-step:1", "2 failed (seed=5, seed=6); 1 run not started"),
    "all ended": ("sweep-job-started:3", "2 finished; 1 failed (seed=7)"),
}


@pytest.mark.parametrize("state", FAILURES)
def test_a_failed_job_ends_a_parallel_sweep_in_any_state_and_its_command_finishes_it(state, tmp_path):
    point, account = FAILURES[state]
    args = sweep_args(write_dataset(tmp_path / "data"), tmp_path, jobs=2)
    line = stopped_then_continued(args, f"{point}:SIGKILL", 2, tmp_path / "s", runs_of(2))[-2]
    assert line.startswith("fmnist: error: sweep run ") and " failed (killed by SIGKILL); its log: " in line, line
    assert line.endswith(f"; sweep stopped: {account}"), line
