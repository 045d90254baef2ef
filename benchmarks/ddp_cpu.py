"""One run on the CPU: 2 processes x 1 thread (torchrun, gloo) against 1 process x 2 threads.

    python benchmarks/ddp_cpu.py                           # recipe fast, 2 repeats
    python benchmarks/ddp_cpu.py --recipe quick --repeats 3
    python benchmarks/ddp_cpu.py --repeats 1 -- --epochs 1 --limit-batches 5   # a smoke test of the script

Both train the same recipe with the same global batch, as a user runs them (`torchrun --standalone
--nproc-per-node 2 -m fmnist train` with OMP_NUM_THREADS=1, and `fmnist train` with 2 threads), in
turns. Reported per layout: the training images per second over all processes (from metrics.csv),
the wall time of the command, and the test accuracy (the same recipe should land in the same
place). Options after `--` go to every run. Run it on an idle machine with at least 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
LAYOUTS = {"2 processes x 1 thread": (TORCHRUN, 1), "1 process x 2 threads": ([sys.executable], 2)}


def train(launcher: list[str], threads: int, recipe: str, out: Path, name: str, extra: list[str]) -> dict:
    command = [*launcher, "-m", "fmnist", "train", "--recipe", recipe, "--device", "cpu", "--out", str(out),
               "--name", name, *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.perf_counter() - start
    summary = json.loads((out / name / "summary.json").read_text())
    return {"wall": wall, "images_per_second": summary["images_per_second"], "test": summary["test_accuracy"]}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="where the runs go (default: a temporary folder)")
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="-- then options for every run")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    out = args.out or Path(tempfile.mkdtemp(prefix="ddp-cpu-"))
    results = {layout: [] for layout in LAYOUTS}
    for repeat in range(args.repeats):
        for layout, (launcher, threads) in LAYOUTS.items():
            result = train(launcher, threads, args.recipe, out, f"{threads}-{repeat}", extra)
            results[layout].append(result)
            print(f"{layout}: {result['images_per_second']:,.0f} img/s, {result['wall']:.1f} s", flush=True)
    print(f"\nrecipe {args.recipe} {' '.join(extra)}, {os.cpu_count()} cores, {args.repeats} repeat(s); runs in {out}")
    print("| layout | training img/s (median) | wall s (median) | test acc (mean) |")
    print("| --- | --- | --- | --- |")
    for layout, runs in results.items():
        print(f"| {layout} | {statistics.median(run['images_per_second'] for run in runs):,.0f} | "
              f"{statistics.median(run['wall'] for run in runs):.1f} | "
              f"{statistics.mean(run['test'] for run in runs):.4f} |")
