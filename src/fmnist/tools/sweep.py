"""`fmnist sweep`: train every combination of `--set KEY=V1,V2` values, times `--seeds N`, then compare.

  fmnist sweep --recipe affine-steplr --set lr=1e-3,2e-3 --set scheduler=steplr,cosine --seeds 3

Each --set key is a TrainConfig option; its values are parsed by the config itself, and every
combination is built and validated before the first run starts, so a typo (or an option that a
point's settings would ignore) costs nothing. Runs are named after their grid point and seed inside
one sweep folder; the comparison (mean ± std over seeds per grid point) is written there at the end.

A stopped sweep continues when the same command runs again: finished runs are kept, a run that was
stopped is resumed from its last completed epoch, and the rest are started. A different sweep
(another grid, seeds or options) in the same folder is refused.

`--jobs N` trains N runs at once, each in a process of its own (tools/sweep_job.py) with
`--threads-per-job` torch threads (default: the cores divided among the jobs; runs in turn keep this
process's threads, as `fmnist train` does, unless `--threads-per-job` is given). The sweep folder's
lock keeps a second sweep out, and each run folder's lock (held by its job) keeps two processes
from ever training one run. Each job's output goes to SWEEP_DIR/logs/RUN_NAME.log.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from fmnist.errors import CheckpointError, ConfigError, FmnistError
from fmnist.experiment import resume, train
from fmnist.faults import StopRequest, TrainingInterrupted, kill_point, stop_after_step
from fmnist.files import atomic_write_json, exclusive_lock
from fmnist.reports.compare import compare_grid
from fmnist.reports.mlflow_log import mlflow_group
from fmnist.runs.folder import is_run_folder, read_json
from fmnist.runs.resume import is_finished
from fmnist.training.config import FIELDS, TrainConfig, build_config, parse_text
from fmnist.training.loop import NonFiniteLossError

logger = logging.getLogger(__name__)
SWEEP_OWNS = ("out", "name")  # the sweep names and places its runs itself


@dataclass
class PlannedRun:
    name: str
    config: TrainConfig


def parse_set(argument: str) -> tuple[str, list]:
    """'lr=1e-3,2e-3' -> ('lr', [0.001, 0.002])."""
    key, separator, values = argument.partition("=")
    key = key.strip().replace("-", "_")
    if not separator or not values.strip():
        raise ConfigError(f"--set {argument}: expected KEY=VALUE[,VALUE...], e.g. --set lr=1e-3,2e-3")
    if key not in FIELDS:
        raise ConfigError(f"--set {argument}: unknown key {key!r}; valid keys: {', '.join(FIELDS)}")
    if key in SWEEP_OWNS:
        raise ConfigError(f"--set {argument}: the sweep names its runs itself; give --out and --name instead")
    try:
        return key, [parse_text(key, text.strip()) for text in values.split(",")]
    except ConfigError as error:
        raise ConfigError(f"--set {argument}: {error}", key) from None


def parse_grid(arguments: list[str]) -> dict[str, list]:
    grid: dict[str, list] = {}
    for argument in arguments:
        key, values = parse_set(argument)
        if key in grid:
            raise ConfigError(f"--set {argument}: {key} is set twice; list all its values in one --set")
        grid[key] = values
    return grid


def folder_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=,+-]", "_", text)


def plan_sweep(
    config_file: str | None, overrides: dict, set_arguments: list[str], seeds: int
) -> tuple[Path, dict, list[PlannedRun]]:
    """The sweep folder, the grid, and every run's validated config, before anything runs."""
    grid = parse_grid(set_arguments)
    if seeds < 1:
        raise ConfigError(f"--seeds {seeds}: must be at least 1")
    if seeds > 1 and "seed" in grid:
        raise ConfigError("--seeds and --set seed=... both choose seeds; use one of them")
    base = build_config(config_file, overrides)
    sweep_dir = Path(base.out) / (base.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    planned = []
    for values in itertools.product(*grid.values()):
        point = dict(zip(grid, values, strict=True))
        for offset in range(seeds):
            seed = point.get("seed", base.seed + offset)
            label = ",".join([*(f"{key}={value}" for key, value in point.items() if key != "seed"), f"seed={seed}"])
            name = folder_safe(label)
            run_overrides = {**overrides, **point, "seed": seed, "out": str(sweep_dir), "name": name,
                             **mlflow_group(base, f"sweep {sweep_dir.name}")}
            try:
                planned.append(PlannedRun(name, build_config(config_file, run_overrides)))
            except ConfigError as error:
                raise ConfigError(f"sweep point {label}: {error}", error.field) from None
    names = [run.name for run in planned]
    if len(set(names)) != len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise ConfigError(f"--set lists a value twice (runs {', '.join(repeated)}); give each value once")
    return sweep_dir, grid, planned


def sweep_record(grid: dict, seeds: int, planned: list[PlannedRun]) -> dict:
    """What identifies a sweep: re-running the same command must plan exactly this again."""
    return {"grid": grid, "seeds": seeds, "runs": {run.name: run.config.to_dict() for run in planned}}


def prepare_folder(sweep_dir: Path, record: dict) -> bool:
    """Create the sweep folder, or check that the one there holds this very sweep; True if continuing.

    A folder that holds nothing (but a lock) is a sweep stopped before it wrote sweep.json: it starts.
    """
    if sweep_dir.exists():
        saved = read_json(sweep_dir / "sweep.json")
        if not saved and sweep_dir.is_dir() and {path.name for path in sweep_dir.iterdir()} <= {".lock"}:
            return False
        if not saved:
            raise CheckpointError(f"sweep folder {sweep_dir} exists but holds no sweep.json; choose another --name")
        if {key: saved.get(key) for key in record} != record:
            raise CheckpointError(f"sweep folder {sweep_dir} holds a different sweep (another grid, seeds or "
                                  "options); choose another --name, or re-run that sweep's own command")
        return True
    try:
        sweep_dir.mkdir(parents=True)
    except OSError as error:
        raise CheckpointError(f"cannot create the sweep folder {sweep_dir} ({error.strerror})") from None
    return False


class SweepJobFailed(FmnistError):
    """A job of a parallel sweep failed; the sweep stopped, and the same command continues it."""

    sweep_path: Path | None = None


def run_sweep(config_file: str | None, overrides: dict, set_arguments: list[str], seeds: int,
              details: dict | None = None, progress: bool = False, jobs: int = 1,
              threads_per_job: int | None = None) -> tuple[Path, str]:
    """Train the planned runs, `jobs` at a time, then write the comparison; returns (folder, table).

    With `jobs` > 1 each run is a process of its own with `threads_per_job` torch threads (default:
    the cores divided among the jobs); runs in turn train with this process's threads unless
    `threads_per_job` is given. Stopped (Ctrl-C, SIGTERM, at any point), it raises
    TrainingInterrupted; a failed job raises SweepJobFailed; the same call continues either.
    """
    sweep_dir, grid, planned = plan_sweep(config_file, overrides, set_arguments, seeds)
    threads = threads_for(jobs, threads_per_job, len(planned))
    record = sweep_record(grid, seeds, planned)
    prepare_folder(sweep_dir, record)  # another sweep's folder is refused before anything is written there
    with exclusive_lock(sweep_dir, "sweep folder"), stop_after_step() as stop:
        try:
            continuing = prepare_folder(sweep_dir, record)  # again, now that no other sweep can be starting it
            if not continuing:
                # `given`: the options each run was given, so that a job rebuilds its config as planned.
                given = {run.name: {name: getattr(run.config, name) for name in sorted(run.config.given)}
                         for run in planned}
                atomic_write_json(sweep_dir / "sweep.json", {**record, "given": given, **(details or {})})
            to_do = runs_to_do(sweep_dir, planned)
            if jobs == 1:
                run_in_turn(sweep_dir, to_do, len(planned), details, progress, threads, stop)
            else:
                run_in_parallel(sweep_dir, to_do, len(planned), jobs, threads, stop)
            stop_if_requested(stop, "every run has ended; the comparison is not written yet")
            table = compare_grid([sweep_dir], [key for key in grid if key != "seed"], sweep_dir)
            stop_if_requested(stop, "every run has ended and the comparison is written")
        except KeyboardInterrupt:  # a second signal where no run was there to stop (see the run_in_* functions)
            raise with_sweep_path(TrainingInterrupted(f"sweep stopped at once by a second {stop.signal_name}",
                                                      stop.signal_number), sweep_dir) from None
        except (TrainingInterrupted, SweepJobFailed) as stopped:
            raise with_sweep_path(stopped, sweep_dir) from None
    return sweep_dir, table


def with_sweep_path(error: Exception, sweep_dir: Path) -> Exception:
    error.sweep_path = sweep_dir  # for the CLI's "continue with" line
    return error


def stop_if_requested(stop: StopRequest, where: str) -> None:
    if stop.requested:
        raise TrainingInterrupted(f"sweep stopped by {stop.signal_name}: {where}", stop.signal_number)


def available_cores() -> int:
    """The cores this process may run on (a container's or taskset's limit, not the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_for(jobs: int, threads_per_job: int | None, runs: int) -> int | None:
    """Torch threads per job: --threads-per-job, else the cores divided among the jobs; None for runs in turn
    without --threads-per-job, which train with this process's threads as `fmnist train` would (what
    OMP_NUM_THREADS or torch.set_num_threads chose stays chosen)."""
    if jobs < 1:
        raise ConfigError(f"--jobs {jobs}: must be at least 1 (the number of runs trained at once)")
    if jobs > runs:
        raise ConfigError(f"--jobs {jobs}: the sweep has {runs} run{'s' if runs > 1 else ''}; "
                          f"use --jobs {runs} or fewer")
    if threads_per_job is not None:
        if threads_per_job < 1:
            raise ConfigError(f"--threads-per-job {threads_per_job}: must be at least 1")
        return threads_per_job
    if jobs == 1:
        return None
    cores = available_cores()
    if jobs > cores:
        raise ConfigError(f"--jobs {jobs}: more jobs than the {cores} core{'s' if cores > 1 else ''} here would "
                          "leave no thread per job; "
                          f"use --jobs {cores} or fewer, or give --threads-per-job 1 to share cores anyway")
    return cores // jobs


def runs_to_do(sweep_dir: Path, planned: list[PlannedRun]) -> list[tuple[int, PlannedRun]]:
    """(number, run) of every planned run that has not finished, in the planned order."""
    to_do = []
    for index, run in enumerate(planned, start=1):
        run_dir = sweep_dir / run.name
        if is_run_folder(run_dir) and is_finished(run_dir):
            logger.info("sweep run %d/%d: %s (finished earlier)", index, len(planned), run.name)
        else:
            to_do.append((index, run))
    return to_do


def run_in_turn(sweep_dir: Path, to_do: list[tuple[int, PlannedRun]], total: int, details: dict | None,
                progress: bool, threads: int | None, stop: StopRequest) -> None:
    """One run after another in this process, with `threads` torch threads (None: as they are); each run's
    training shares the sweep's stop request."""
    threads_before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for position, (index, run) in enumerate(to_do):
            later = len(to_do) - position - 1
            kill_point("sweep-run-start")  # test-only: a signal before a run starts
            if stop.requested:
                raise TrainingInterrupted(f"sweep stopped by {stop.signal_name} before run {index}/{total} "
                                          f"({run.name}); {not_started(later + 1)}", stop.signal_number)
            run_dir = sweep_dir / run.name
            logger.info("sweep run %d/%d: %s", index, total, run.name)
            try:
                if is_run_folder(run_dir):
                    resume(run_dir, progress=progress)
                else:
                    train(run.config, progress=progress, details=details)
            except NonFiniteLossError as error:
                # A diverging learning rate is a result of the study, not a reason to drop the others.
                logger.info("sweep run %s stopped: %s", run.name, error)
            except TrainingInterrupted as interruption:
                raise TrainingInterrupted(f"sweep stopped in run {index}/{total} ({run.name}): {interruption}; "
                                          f"{not_started(later)}", interruption.signal_number) from None
            except KeyboardInterrupt:  # a second signal: the step in flight is dropped, the saved epochs stay
                raise TrainingInterrupted(f"sweep stopped at once by a second {stop.signal_name} in run "
                                          f"{index}/{total} ({run.name}), which keeps its last saved epoch; "
                                          f"{not_started(later)}", stop.signal_number) from None
            kill_point("sweep-run-end")  # test-only: a signal after a run ended
    finally:
        torch.set_num_threads(threads_before)


def not_started(count: int) -> str:
    return f"{count} run{'' if count == 1 else 's'} not started"


@dataclass
class Job:
    index: int
    run: PlannedRun
    process: subprocess.Popen
    log: Path
    told_to_stop: bool = False


def start_job(sweep_dir: Path, index: int, run: PlannedRun, threads: int) -> Job:
    """A process that trains (or resumes) one run, its output in SWEEP_DIR/logs/NAME.log.

    It gets a session of its own, so a Ctrl-C at the terminal reaches only the sweep, which passes
    the stop on exactly once (a second signal would stop a job at once, without saving).
    """
    log = sweep_dir / "logs" / f"{run.name}.log"
    log.parent.mkdir(exist_ok=True)
    # OpenMP reads its variable at start-up; torch.set_num_threads in the job covers the rest.
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log, "a") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "fmnist.tools.sweep_job", str(sweep_dir), run.name, str(threads)],
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=environment,
            start_new_session=True,
        )
    return Job(index, run, process, log)


def last_line(path: Path) -> str:
    """The last line a job wrote: its error, or how it stopped."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].removeprefix("fmnist: error: ").removeprefix("fmnist: ") if lines else "(no output)"


def run_in_parallel(sweep_dir: Path, to_do: list[tuple[int, PlannedRun]], total: int, jobs: int,
                    threads: int, stop: StopRequest) -> None:
    """Up to `jobs` runs at once, each in its own process.

    Ctrl-C or SIGTERM to the sweep is passed on to every job, which finishes its step, saves and
    stops like a single run; a second one stops the jobs at once. A job that ends without finishing
    its run (stopped on its own, or failed) starts nothing new either. Whatever stopped it, the
    sweep waits for the jobs that run (never for runs that can no longer start), then says what
    each run did.
    """
    waiting, running, ended = list(to_do), [], []

    def may_start() -> bool:
        return not stop.requested and all(outcome is None for _, outcome in ended)

    try:
        while running or (waiting and may_start()):
            while waiting and len(running) < jobs and may_start():
                kill_point("sweep-run-start")  # test-only: a signal before a run starts
                if not may_start():
                    break
                index, run = waiting.pop(0)
                job = start_job(sweep_dir, index, run, threads)
                logger.info("sweep run %d/%d: %s (job log %s)", index, total, run.name, job.log)
                running.append(job)
                kill_point("sweep-job-started", job.process.pid)  # test-only: the job dies (a failed job)
            pass_stop_on(stop, running)
            reaped = [job for job in running if job.process.poll() is not None]
            for job in reaped:
                running.remove(job)
                ended.append((job, job_outcome(job, total)))
                kill_point("sweep-run-end")  # test-only: a signal after a run ended
            if not reaped:
                time.sleep(0.1)
    except KeyboardInterrupt:  # a second signal: the jobs get theirs too, and stop at once
        ended += stop_at_once(running, stop, total)
        raise sweep_ended(ended, len(waiting), stop, at_once=True) from None
    ending = sweep_ended(ended, len(waiting), stop)
    if ending is not None:
        raise ending


def pass_stop_on(stop: StopRequest, running: list[Job]) -> None:
    """The sweep's stop request, to every running job once (they are in sessions of their own)."""
    for job in running:
        if stop.requested and not job.told_to_stop:
            job.process.send_signal(stop.signal_number)
            job.told_to_stop = True


def stop_at_once(running: list[Job], stop: StopRequest, total: int) -> list[tuple[Job, object]]:
    """After a second signal: each job gets another (its second: it stops without finishing its step;
    a job not told yet stops after its step), then the sweep waits for them all."""
    for job in running:
        job.process.send_signal(stop.signal_number)
        job.told_to_stop = True
    ended = []
    for job in running:
        job.process.wait()
        ended.append((job, job_outcome(job, total)))
    return ended


def sweep_ended(ended: list[tuple[Job, object]], not_started_count: int, stop: StopRequest,
                at_once: bool = False) -> TrainingInterrupted | SweepJobFailed | None:
    """Why the sweep stopped, with what each run did; None when every run it started is done."""
    ended = sorted(ended, key=lambda ending: ending[0].index)  # in the planned order, not the order they ended
    finished = [job.run.name for job, outcome in ended if outcome is None]
    stopped = [job.run.name for job, outcome in ended if isinstance(outcome, TrainingInterrupted)]
    failed = [(job, outcome) for job, outcome in ended if isinstance(outcome, FmnistError)]
    account = "; ".join(part for part in (
        f"{len(finished)} finished" if finished else "",
        f"{len(stopped)} stopped ({', '.join(stopped)})" if stopped else "",
        f"{len(failed)} failed ({', '.join(job.run.name for job, _ in failed)})" if failed else "",
        not_started(not_started_count) if not_started_count else "",
    ) if part) or "no run started"
    if stop.requested:
        how = f"at once by a second {stop.signal_name}" if at_once else f"by {stop.signal_name}"
        return TrainingInterrupted(f"sweep stopped {how}: {account}", stop.signal_number)
    if failed:
        return SweepJobFailed(f"{failed[0][1]}; sweep stopped: {account}")
    if stopped:  # a job was stopped on its own (someone signalled that process)
        signal_number = next(outcome.signal_number for _, outcome in ended if isinstance(outcome, TrainingInterrupted))
        return TrainingInterrupted(f"sweep stopped: a job was stopped on its own; {account}", signal_number)
    return None


def job_outcome(job: Job, total: int) -> FmnistError | TrainingInterrupted | None:
    """Log how a job ended; None when its run is done (finished, or diverged: a result too)."""
    code, name = job.process.returncode, job.run.name
    if code == 0:
        logger.info("sweep run %d/%d: %s finished", job.index, total, name)
        return None
    if code == NonFiniteLossError.exit_code:
        logger.info("sweep run %s stopped: %s", name, last_line(job.log))
        return None
    stopped_by = code - 128 if code > 128 else -code if code < 0 else None
    if stopped_by in (signal.SIGINT, signal.SIGTERM):
        logger.info("sweep run %d/%d: %s stopped (%s)", job.index, total, name, how_it_stopped(job.log))
        return TrainingInterrupted(f"run {name} stopped", stopped_by)
    # A job killed by a signal (the out-of-memory killer's SIGKILL) had no last word: its last line is a log line.
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}: {last_line(job.log)}"
    logger.info("sweep run %d/%d: %s failed (%s)", job.index, total, name, how)
    return FmnistError(f"sweep run {name} failed ({how}); its log: {job.log}")


def how_it_stopped(log: Path) -> str:
    """The job's own stop line; a job that had no line to say was stopped while Python started it."""
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    if lines and lines[-1].startswith("fmnist: "):
        return lines[-1].removeprefix("fmnist: ")
    return "stopped as its process started, before it wrote anything"
