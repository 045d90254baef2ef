"""A clock for the tests of time-budgeted runs: its seconds are the work done, not the time that passed.

A budgeted run plans, plans again and stops by the seconds it reads (training/budget.py,
training/replan.py). On the machine's clock those follow the load too: the test runner's other worker,
or any other process, made a 6-second budget "too short for this run on this machine" once. On this
clock each training step costs STEP_SECONDS, each evaluated batch BATCH_SECONDS, and nothing else
costs anything (building, checkpoints, reports), so a run plans, trains and ends the same way on every
machine at any load, and a test can say exactly what it used. The planner's own arithmetic, with a
machine that slows down or speeds up, is tested in test_replan.py.

It stands in for time.perf_counter where the training loop, the plan's measuring and the planner read
it, and counts the work at the loop's test points (fmnist.faults.kill_point, which still fires).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

from fmnist import faults
from fmnist.training import budget, loop, replan

STEP_SECONDS = 0.1
BATCH_SECONDS = 0.02


class WorkClock:
    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def point(self, point: str, process_id: int | None = None) -> None:
        if point == "train-step":
            self.now += STEP_SECONDS
        elif point == "evaluate-batch":
            self.now += BATCH_SECONDS
        faults.kill_point(point, process_id)

    def install(self, set_attribute=setattr) -> WorkClock:
        """Stand in for the clock (`set_attribute`: pytest's monkeypatch.setattr, to be undone after the test)."""
        on_this_clock = SimpleNamespace(perf_counter=self.perf_counter)
        for module in (loop, budget, replan):
            set_attribute(module, "time", on_this_clock)
        set_attribute(loop, "kill_point", self.point)
        return self


if __name__ == "__main__":  # `python tests/work_clock.py ARGS`: `fmnist ARGS` on this clock, for a test's child process
    from fmnist.cli import main

    WorkClock().install()
    raise SystemExit(main(sys.argv[1:]))
