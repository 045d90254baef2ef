"""Progress for someone watching: a bar within each epoch on a terminal (step, images/s, running loss, time
left), none of it in redirected output, and the epoch lines shown once: by logging when it shows them,
else by `progress=True` itself."""

from __future__ import annotations

import io
import logging
import os
import pty
import struct
import subprocess
import sys
import threading

import pytest
import torch

from conftest import tiny_train_args
from fmnist import TrainConfig, train
from fmnist.training import progress as progress_module
from fmnist.training.progress import TrainingProgress, logging_shows


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def one_epoch(progress: TrainingProgress, steps: int) -> None:
    for _ in progress.batches(range(steps)):
        progress.step(torch.tensor(0.5), 10)
    row = {"epoch": progress.epoch, "train_loss": 0.5, "train_accuracy": 0.8, "val_loss": 0.4, "val_accuracy": 0.85,
           "lr": 0.01, "seconds": 1.0, "images_per_second": 30.0}
    progress.log_epoch(row, [])


def test_a_terminal_gets_a_bar_with_step_speed_loss_and_time_left_then_the_epoch_line(monkeypatch):
    monkeypatch.setattr(progress_module, "REFRESH_SECONDS", 0)  # every step drawn, however fast
    terminal = Terminal()
    progress = TrainingProgress(epochs=2, steps_per_epoch=3, stream=terminal)
    one_epoch(progress, 3)
    shown = terminal.getvalue()
    assert "epoch 1/2" in shown and "step 3/3" in shown and "loss 0.5000" in shown and "img/s" in shown
    assert " left" in shown and "\r" in shown
    assert shown.rstrip().endswith("epoch 1/2  train loss 0.5000 acc 0.8000  val loss 0.4000 acc 0.8500  "
                                   "lr 1.00e-02  1.0 s  30 img/s")


def test_redirected_output_gets_the_epoch_lines_and_no_bar():
    log_file = io.StringIO()
    progress = TrainingProgress(epochs=2, steps_per_epoch=3, stream=log_file)
    one_epoch(progress, 3)
    one_epoch(progress, 3)
    assert log_file.getvalue().splitlines() == [
        "epoch 1/2  train loss 0.5000 acc 0.8000  val loss 0.4000 acc 0.8500  lr 1.00e-02  1.0 s  30 img/s",
        "epoch 2/2  train loss 0.5000 acc 0.8000  val loss 0.4000 acc 0.8500  lr 1.00e-02  1.0 s  30 img/s",
    ]


def test_the_epoch_lines_are_not_shown_twice_when_logging_shows_them(caplog):
    terminal = Terminal()
    with caplog.at_level(logging.INFO, logger="fmnist"):
        assert logging_shows("fmnist.training.loop")
        one_epoch(TrainingProgress(epochs=1, steps_per_epoch=2, stream=terminal), 2)
    assert "train loss" not in terminal.getvalue()  # the logger's line is the one shown


def test_logging_shows_only_what_reaches_a_handler():
    logger = logging.getLogger("fmnist.test-progress")
    assert not logging_shows(logger.name)  # Python's default: WARNING and up
    logger.setLevel(logging.INFO)
    logger.propagate = False  # away from the handlers pytest puts on the root logger
    try:
        quiet = logging.NullHandler()
        quiet.setLevel(logging.ERROR)
        logger.addHandler(quiet)
        assert not logging_shows(logger.name)  # enabled, but no handler emits INFO
        quiet.setLevel(logging.INFO)
        assert logging_shows(logger.name)
    finally:
        logger.removeHandler(quiet)
        logger.setLevel(logging.NOTSET)
        logger.propagate = True


def test_the_last_epoch_of_a_time_plan_is_as_short_as_planned(monkeypatch):
    monkeypatch.setattr(progress_module, "REFRESH_SECONDS", 0)
    terminal = Terminal()
    progress = TrainingProgress(epochs=2, steps_per_epoch=5, first_epoch=2, last_epoch_steps=2, stream=terminal)
    one_epoch(progress, 2)
    assert "epoch 2/2" in terminal.getvalue() and "step 2/2" in terminal.getvalue()


def test_train_with_progress_shows_the_epochs_without_logging_set_up(tiny_data, tmp_path, capfd):
    config = TrainConfig(epochs=2, batch_size=50, val_size=100, limit_batches=2, data_dir=str(tiny_data),
                         allow_unverified_data=True, out=str(tmp_path), name="shown")
    train(config, progress=True)
    out, err = capfd.readouterr()
    assert out == "" and "\r" not in err  # pytest's stderr is no terminal: lines, no bar
    assert [line.split("  ")[0] for line in err.splitlines()] == ["epoch 1/2", "epoch 2/2"]


def test_the_cli_draws_the_bar_on_a_terminal_and_keeps_its_epoch_lines(tiny_data, tmp_path):
    """stderr on a pseudo-terminal (the bar goes there), stdout to a pipe (the lines go there, unchanged)."""
    leader, follower = pty.openpty()
    import fcntl
    import termios

    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    received = bytearray()

    def read_terminal() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                return
            if not chunk:
                return
            received.extend(chunk)

    reader = threading.Thread(target=read_terminal, daemon=True)
    reader.start()
    try:
        child = subprocess.run([sys.executable, "-m", "fmnist", *tiny_train_args(tiny_data, tmp_path, "tty", 2)],
                               stdout=subprocess.PIPE, stderr=follower, text=True, timeout=300)
    finally:
        os.close(follower)
        reader.join(timeout=30)
        os.close(leader)
    terminal = received.decode(errors="replace")
    assert child.returncode == 0, terminal
    assert "epoch 1/2" in terminal and "step 4/4" in terminal and "img/s" in terminal and " left" in terminal
    lines = child.stdout.splitlines()
    assert "\r" not in child.stdout
    assert [line.split("  ")[0] for line in lines if line.startswith("epoch ")] == ["epoch 1/2", "epoch 2/2"]


def test_a_notebook_gets_a_notebook_bar_and_the_epoch_lines(tiny_data, tmp_path):
    """A real Jupyter kernel (with ipywidgets): tqdm's widget per epoch, and the lines as plain output."""
    pytest.importorskip("ipywidgets", reason="the notebook extra: pip install -e '.[notebook]'")
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(
        "from fmnist import TrainConfig, train\n"
        f"train(TrainConfig(epochs=2, batch_size=50, val_size=100, limit_batches=2, data_dir={str(tiny_data)!r}, "
        f"allow_unverified_data=True, out={str(tmp_path)!r}, device='cpu'), progress=True)\n"
        "None")]
    NotebookClient(notebook, timeout=240, kernel_name="python3").execute()
    outputs = notebook.cells[0].outputs
    widgets = [output for output in outputs if "application/vnd.jupyter.widget-view+json" in output.get("data", {})]
    assert [widget["data"]["text/plain"].split("  ")[0] for widget in widgets] == ["epoch 1/2", "epoch 2/2"]
    lines = "".join(output["text"] for output in outputs if output.get("name") == "stdout").splitlines()
    assert [line.split("  ")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert not [output for output in outputs if output.get("name") == "stderr"]  # no warning, nothing in red
