"""One point of a parallel sweep, in a process of its own: `fmnist sweep --jobs N` starts these.

    python -m fmnist.tools.sweep_job SWEEP_DIR RUN_NAME THREADS

The run's config is the one the sweep planned and recorded in SWEEP_DIR/sweep.json, so a point
trains exactly as it would in turn. A run folder that exists is resumed (or left alone when it
finished), one that does not is started. The exit code tells the sweep what happened: 0 finished,
3 diverged (NonFiniteLossError, a result of the study), 128 + signal when stopped, 2 for an error
(its line is the last one of the job's log).

The sweep passes a Ctrl-C or SIGTERM on to its jobs. A job listens from the start (not only once
its training loop runs), so a signal that comes while it loads the data stops it after its first
step at the latest; a second signal stops it at once, its run folder keeping its last saved epoch.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch

from fmnist.arguments import command_line_spelling
from fmnist.errors import CheckpointError, FmnistError
from fmnist.experiment import resume, train
from fmnist.faults import TrainingInterrupted, stop_after_step
from fmnist.runs.folder import is_run_folder, read_json
from fmnist.runs.resume import is_finished
from fmnist.training.config import TrainConfig

SWEEP_KEYS = ("grid", "seeds", "runs", "given")  # sweep.json's own keys; the rest are the sweep's details


def run_job(sweep_dir: Path, name: str) -> None:
    record = read_json(sweep_dir / "sweep.json")
    config = TrainConfig(**record["given"][name])
    if config.to_dict() != record["runs"][name]:  # never train anything but the planned run
        raise CheckpointError(f"{sweep_dir / 'sweep.json'}: the options of {name} do not give its recorded config; "
                              "the file was changed by hand")
    run_dir = sweep_dir / name
    if is_run_folder(run_dir):
        if not is_finished(run_dir):
            resume(run_dir)
        return
    train(config, details={key: value for key, value in record.items() if key not in SWEEP_KEYS})


def main(argv: list[str]) -> int:
    sweep_dir, name, threads = Path(argv[0]), argv[1], int(argv[2])
    torch.set_num_threads(threads)
    # This process's output goes to the job's log file, which the sweep names in its messages.
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    with stop_after_step() as stop:  # training shares this request (see faults.stop_after_step)
        try:
            if stop.requested:
                raise TrainingInterrupted(f"stopped by {stop.signal_name} before {name} began; nothing was written",
                                          stop.signal_number)
            with command_line_spelling():  # a job of `fmnist sweep`: its errors name options as the command does
                run_job(sweep_dir, name)
        except FmnistError as error:
            print(f"fmnist: error: {error}", flush=True)
            return error.exit_code
        except TrainingInterrupted as interruption:
            print(f"fmnist: {interruption}", flush=True)
            return interruption.exit_code
        except KeyboardInterrupt:  # the sweep's second signal: stop without finishing the step
            print(f"fmnist: stopped at once by a second {stop.signal_name}; {name} keeps its last saved epoch",
                  flush=True)
            return 128 + stop.signal_number
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
