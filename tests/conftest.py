"""Shared fixtures: small generated IDX data sets, and the real one where learning is the point."""

from __future__ import annotations

import faulthandler
import fcntl
import gzip
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

from fmnist.cli.main import main
from fmnist.data.fashion import FILES
from fmnist.data.idx import IMAGES_MAGIC, LABELS_MAGIC
from fmnist.data.locate import find_data_dir
from fmnist.experiment import train
from fmnist.training.config import TrainConfig
from work_clock import WorkClock

# Property tests draw the same examples on every run, here and in CI: a failure is a failure every time,
# with its example in the log, and no run meets an example that another never tried (an unbounded epoch
# count once hung CI this way). No example database: CI has none, so a local one would make runs differ.
settings.register_profile("fmnist", derandomize=True, database=None)
settings.load_profile("fmnist")
# pytest-timeout (pyproject.toml) fails a test at 300 s by raising in it; code that takes every exception
# for a result outlives that (Hypothesis shrinks it as a failing example, and goes on). This stops the
# worker for good at HARD_STOP_SECONDS: xdist reports the test as crashed and the run goes on without it.
HARD_STOP_SECONDS = 420


@pytest.fixture(autouse=True)
def stuck_test_ends():
    faulthandler.dump_traceback_later(HARD_STOP_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def pytest_configure(config):
    """Ctrl-C reaches the tests' processes whatever the runner set. Under pytest-xdist (`make test` runs
    a worker per core), one thread per worker, and for the processes its tests start: two workers with
    two OpenMP threads each on two cores would fight for them, and OpenMP threads that lose their core
    slow down many times over."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        # Started in the background by a shell without job control (as some CI runners start it):
        # SIGINT is ignored, and every process a test starts would inherit that and never see its Ctrl-C.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


# The files that keep a worker busy longest (seconds of one worker, from a per-test timeline of a whole
# `make test` on 2 cores, 2026-12-06), in that order. `make test` hands whole files to its workers in the
# order of the collection (--dist loadfile --no-loadscope-reorder): these go first, so that what is left
# for the end are files of seconds, and both workers end together. pytest-xdist's own order (the files
# with the most tests first) handed out the notebook's one-minute test last, with the other worker idle.
# Only the order depends on this list: a file missing from it runs after these, a name no file has is
# ignored.
LONGEST_FILES = (
    "test_sweep_stops.py",  # 190
    "test_distributed.py",  # 110
    "test_recipes.py",  # 90
    "test_mlflow.py",  # 75
    "test_tune.py",  # 70
    "test_notebook.py",  # 60
    "test_nothing_lost.py",  # 55
    "test_serve_live.py",  # 55
    "test_budget.py",  # 50
    "test_sweep_jobs.py",  # 45
    "test_resume.py",  # 35
    "test_model_plugins.py",  # 30
    "test_switches.py",  # 30
    "test_train.py",  # 25
    "test_device_ready.py",  # 25
)


def pytest_collection_modifyitems(items):
    """The longest files first (see LONGEST_FILES); the tests of each file, and the other files, keep their
    order (a stable sort)."""
    rank = {name: position for position, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in array.shape)
    return header + array.astype(np.uint8).tobytes()


def synthetic_split(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is easy to learn: a bright bar at a class-dependent row, plus noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 60, size=(count, 28, 28))
    for index, label in enumerate(labels):
        images[index, 2 + 2 * label : 4 + 2 * label, 4:24] = 250
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_dataset(directory: Path, train_count: int = 600, test_count: int = 200, compress: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    splits = {"train": synthetic_split(train_count, 0), "test": synthetic_split(test_count, 1)}
    for split, (images, labels) in splits.items():
        for kind, array, magic in (("images", images, IMAGES_MAGIC), ("labels", labels, LABELS_MAGIC)):
            stem = FILES[f"{split}_{kind}"]
            content = idx_bytes(array, magic)
            if compress:
                (directory / (stem + ".gz")).write_bytes(gzip.compress(content))
            else:
                (directory / stem).write_bytes(content)
    return directory


def train_tiny_run(root: Path, name: str, limit_batches: int) -> Path:
    """A finished one-epoch run on generated data under `root`, for tests that need a run folder to read:
    its checkpoints, config and summary (no report: test_report.py has those)."""
    config = TrainConfig(epochs=1, batch_size=50, limit_batches=limit_batches, val_size=100, device="cpu",
                         data_dir=str(write_dataset(root / "data")), allow_unverified_data=True,
                         out=str(root / "runs"), name=name, report=False)
    return train(config).path


@pytest.fixture
def work_clock(monkeypatch) -> WorkClock:
    """Time budgets in this test count work, not the seconds that pass (work_clock.py)."""
    return WorkClock().install(monkeypatch.setattr)


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A generated Fashion-MNIST-shaped data set: 600 train and 200 test images."""
    return write_dataset(tmp_path / "tiny-data")


@pytest.fixture(autouse=True)
def isolated_environment(monkeypatch, tmp_path):
    """Tests must not see the developer's $FMNIST_DATA or write into their cache."""
    real = None
    try:
        real = find_data_dir()
    except Exception:
        pass
    monkeypatch.setenv("FMNIST_REAL_DATA", str(real) if real else "")
    monkeypatch.delenv("FMNIST_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def real_data(monkeypatch) -> Path:
    """The real data set. `make test` installs it; a missing copy fails loudly rather than skipping."""
    import os

    location = os.environ.get("FMNIST_REAL_DATA")
    if not location:
        pytest.fail("the real Fashion-MNIST is needed: run `make test`, or `fmnist data ensure` first")
    return Path(location)


README = Path(__file__).parents[1] / "README.md"


@pytest.fixture(scope="session")
def readme_quick_start(tmp_path_factory) -> tuple[list[str], Path]:
    """The README's Python quick start, exactly as written, run once on the real data: what it printed and its run.

    It trains the quick recipe (two epochs of the real data, about 25 s); test_api checks what it prints
    and test_recipes the recipe's accuracy. The two files may run in different pytest workers, so the
    first worker to need it trains it in the folder the workers share, under a lock, and the others
    read what it left: the suite trains it once, not once per worker.
    """
    base = tmp_path_factory.getbasetemp()
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "readme-quick-start"
    printed = shared / "printed.txt"
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this worker dies
        if not printed.exists():
            shutil.rmtree(shared, ignore_errors=True)  # what a worker that failed here left
            lines = run_readme_quick_start(shared)
            written = shared / "printed.tmp"  # renamed when whole: a worker never reads half of it
            written.write_text("".join(line + "\n" for line in lines))
            written.replace(printed)
    [run] = (shared / "runs").iterdir()
    return printed.read_text().splitlines(), run


def run_readme_quick_start(folder: Path) -> list[str]:
    """Run the README's Python quick start in `folder`, as a user would, and return the lines it printed."""
    import contextlib
    import re

    snippet = re.search(r"## Python quick start.*?```python\n(.*?)```", README.read_text(), re.S).group(1)
    folder.mkdir(parents=True)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
        patch.chdir(folder)
        patch.delenv("FMNIST_DATA", raising=False)  # found where a user's would be: the installed data set
        patch.setenv("XDG_CACHE_HOME", str(folder / "cache"))
        try:
            find_data_dir()
        except Exception:
            pytest.fail("the real Fashion-MNIST is needed: run `make test`, or `fmnist data ensure` first")
        exec(compile(snippet, "README.md", "exec"), {})
    return printed.getvalue().splitlines()


def tiny_train_args(data: Path, out: Path, name: str, epochs: int = 3) -> list[str]:
    """`fmnist train` on generated data: 500 training images in batches of 50, cut to 4 batches."""
    return [
        "train", "--data-dir", str(data), "--out", str(out), "--name", name, "--epochs", str(epochs),
        "--val-size", "100", "--batch-size", "50", "--limit-batches", "4", "--eval-batch-size", "40",
        "--seed", "5", "--device", "cpu",  # bit-for-bit equality is promised on the CPU
        "--allow-unverified-data",  # generated data
    ]


def fmnist_process(args: list[str], kill_at: str | None = None, env: dict | None = None,
                   timeout: int = 300, on_work_clock: bool = False) -> subprocess.CompletedProcess:
    """`python -m fmnist ARGS` in a child process; `kill_at` sets FMNIST_KILL_AT (see fmnist.faults);
    `on_work_clock`: the child's time budget counts work, not seconds (work_clock.py)."""
    child_env = {key: value for key, value in os.environ.items() if key != "FMNIST_KILL_AT"}
    child_env.update(env or {})
    if kill_at:
        child_env["FMNIST_KILL_AT"] = kill_at
    command = [str(Path(__file__).with_name("work_clock.py"))] if on_work_clock else ["-m", "fmnist"]
    return subprocess.run([sys.executable, *command, *args], capture_output=True, text=True, env=child_env,
                          timeout=timeout)


def fmnist_here(args: list[str]) -> subprocess.CompletedProcess:
    """`fmnist ARGS` run by the test's own process (the CLI's `main`), its output and exit code as a child's.

    For the checks of what a command says and what it leaves on disk: a child process spends about 1.4 s
    of CPU importing torch before it reads its first argument, and these checks run dozens of commands.
    What only a process shows (signals, FMNIST_KILL_AT, a lock held by another process, exit under
    torchrun, the environment, resource limits) runs in a child: fmnist_process."""
    stdout, stderr = io.StringIO(), io.StringIO()
    with redirect_stdout(stdout), redirect_stderr(stderr):
        try:
            code = main(args)
        except SystemExit as exit_:  # argparse's usage errors; the status a process would exit with
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    return subprocess.CompletedProcess(["fmnist", *args], code, stdout.getvalue(), stderr.getvalue())


def one_line(result: subprocess.CompletedProcess, code: int = 2) -> str:
    """The single stderr line of a failed command, after checking its exit code and the absence of a traceback."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    return result.stderr


@pytest.fixture
def make_read_only():
    """Make folders read-only for the test, also for root (chattr +i), and writable again afterwards."""
    made: list[Path] = []

    def make(path: Path) -> Path:
        path = Path(path)
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        else:
            path.chmod(0o555)
        made.append(path)
        try:
            handle, probe = tempfile.mkstemp(dir=path)
        except OSError:
            return path
        os.close(handle)
        os.unlink(probe)
        pytest.skip("this file system cannot make a folder read-only for this user (chattr +i failed)")

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        else:
            path.chmod(0o755)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a folder and its bytes, to show that a command changed nothing."""
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file() and path.name != ".lock"}  # the lock file only names its last holder
