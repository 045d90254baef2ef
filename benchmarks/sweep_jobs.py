"""Sweep points per hour on this machine: `--jobs 2 --threads-per-job 1` against `--jobs 1 --threads-per-job 2`.

    python benchmarks/sweep_jobs.py                        # recipe quick, 4 seeds, 2 repeats (about 10 min)
    python benchmarks/sweep_jobs.py --recipe fast --points 4 --repeats 3
    python benchmarks/sweep_jobs.py --repeats 1 -- --epochs 1 --limit-batches 5   # a smoke test of the script

Each layout runs the same sweep (--points seeds of one recipe on the real data) exactly as a user
runs it: `fmnist sweep` in a fresh process, into a new folder, timed from start to exit, so process
start-up, data loading, the test evaluation and the reports are all in the figure. The layouts take
turns, so a change in the machine's load hits both. Options after `--` go to every sweep. Run it on
an idle machine; the points-per-hour figures go into BENCHMARKS.md with the machine's core count.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LAYOUTS = {"2 jobs x 1 thread": (2, 1), "1 job x 2 threads": (1, 2)}


def run_sweep(recipe: str, points: int, jobs: int, threads: int, out: Path, name: str, extra: list[str]) -> float:
    command = [sys.executable, "-m", "fmnist", "sweep", "--recipe", recipe, "--seeds", str(points), "--device", "cpu",
               "--jobs", str(jobs), "--threads-per-job", str(threads), "--out", str(out), "--name", name, *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return time.perf_counter() - start


def test_accuracies(sweep_dir: Path) -> list[float]:
    with open(sweep_dir / "runs.csv", newline="") as handle:
        return [float(row["test_accuracy"]) for row in csv.DictReader(handle) if row["test_accuracy"]]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="quick")
    parser.add_argument("--points", type=int, default=4, help="sweep points (seeds), an even number")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="where the sweeps go (default: a temporary folder)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options for every sweep")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    out = args.out or Path(tempfile.mkdtemp(prefix="sweep-jobs-"))
    seconds = {layout: [] for layout in LAYOUTS}
    accuracies = {layout: [] for layout in LAYOUTS}
    for repeat in range(args.repeats):
        for layout, (jobs, threads) in LAYOUTS.items():
            name = f"{jobs}x{threads}-{repeat}"
            seconds[layout].append(run_sweep(args.recipe, args.points, jobs, threads, out, name, extra))
            accuracies[layout] += test_accuracies(out / name)
            print(f"{layout}: {seconds[layout][-1]:.1f} s", flush=True)
    print(f"\n{args.points} points of recipe {args.recipe} {' '.join(extra)}, {os.cpu_count()} cores, "
          f"{args.repeats} repeat(s); sweeps in {out}")
    print("| layout | wall s (median) | points per hour | mean test acc |")
    print("| --- | --- | --- | --- |")
    for layout, values in seconds.items():
        median = statistics.median(values)
        print(f"| {layout} | {median:.1f} | {args.points * 3600 / median:.0f} | "
              f"{statistics.mean(accuracies[layout]):.4f} |")
