"""`fmnist` as one torchrun process runs it, then that process's account of how it ends (tests/test_distributed.py).

torchrun starts this file where a user writes `-m fmnist`. When fmnist's main() has returned, the
process writes RANK.json to $FMNIST_RANK_REPORTS: its exit code and the threads it still has. A
process group's gloo threads ("pt_gloo_runloop", "gloo_tcp_loop") still alive then outlive the run
into the interpreter's shutdown, where one that touches a tensor aborts the process.

$FMNIST_LAST_RANK=R: process R exits last, after every other process has exited (rank 0 is
normally the last, as it alone tests and writes the report).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from fmnist.cli import main


def live_threads() -> list[str]:
    """The names of this process's threads, the main one included (Linux: /proc)."""
    return sorted((task / "comm").read_text().strip() for task in Path("/proc/self/task").iterdir())


def has_exited(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie has exited; torchrun reaps it later


def wait_for_the_others_to_exit(reports: Path, rank: int, world_size: int) -> None:
    deadline = time.monotonic() + 240  # a safety net: the others are done training when this one is
    others = [reports / f"{other}.json" for other in range(world_size) if other != rank]
    while not all(report.exists() and has_exited(json.loads(report.read_text())["pid"]) for report in others):
        if time.monotonic() > deadline:
            raise SystemExit(f"torchrun_rank: process {rank} waited in vain for the others to exit")
        time.sleep(0.05)


if __name__ == "__main__":
    code = main(sys.argv[1:])
    reports = Path(os.environ["FMNIST_RANK_REPORTS"])
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    report = {"code": code, "threads": live_threads(), "pid": os.getpid()}
    written = reports / f".{rank}.json.tmp"
    written.write_text(json.dumps(report))
    written.replace(reports / f"{rank}.json")  # whole, as the others read it
    if os.environ.get("FMNIST_LAST_RANK") == str(rank):
        wait_for_the_others_to_exit(reports, rank, world_size)
    raise SystemExit(code)
