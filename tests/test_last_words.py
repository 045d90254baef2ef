"""A command stopped by a signal always says why, even where nothing stops after a step.

States of a command: working outside a training step (loading, evaluating, writing), an error on its
way out (raised, not yet printed), and printing its last line. Signals: SIGINT and SIGTERM, first and
second. torchrun sends SIGTERM to every process left once one has ended, so "an error on its way out
meets SIGTERM" is an everyday case there, not a corner.
"""

from __future__ import annotations

import importlib
import os
import signal

import pytest

from conftest import fmnist_process, train_tiny_run
from fmnist.errors import FmnistError

cli = importlib.import_module("fmnist.cli.main")  # the module: `fmnist.cli.main` is also its function
LINES = {"SIGINT": ("fmnist: interrupted", 130), "SIGTERM": ("fmnist: stopped by SIGTERM", 143)}


@pytest.fixture(autouse=True)
def ctrl_c_raises():
    """Ctrl-C as in a terminal: KeyboardInterrupt (a test runner's worker may have set it aside)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("last-words"), "run", limit_batches=2)


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_outside_a_training_step_ends_the_command_with_its_line(run, signal_name):
    """`fmnist evaluate` has no step to finish: the signal ends it at once, with a line, not silently."""
    data = run.parent.parent / "data"
    result = fmnist_process(["evaluate", str(run), "--data-dir", str(data), "--allow-unverified-data"],
                            kill_at=f"evaluate-batch:1:{signal_name}")
    line, code = LINES[signal_name]
    assert (result.returncode, result.stderr) == (code, line + "\n")


def command_that_fails_and_meets(signal_name: str, where: str):
    """A command that raises an error, with `signal_name` arriving while the error is on its way out
    ("unwinding": in a finally block it passes) or while its line is being printed ("printing")."""
    def command(args) -> int:
        try:
            raise FmnistError("--thing 3: no such thing; choose 1 or 2")
        finally:
            if where == "unwinding":
                os.kill(os.getpid(), getattr(signal, signal_name))
    return command


@pytest.mark.parametrize("where", ["unwinding", "printing"])
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_while_an_error_is_on_its_way_out_leaves_the_errors_line(signal_name, where, monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "recipes", command_that_fails_and_meets(signal_name, where))
    if where == "printing":  # torchrun's stop arriving as the line is said: called right after the print
        monkeypatch.setattr(cli, "tell_torchrun", lambda line: os.kill(os.getpid(), getattr(signal, signal_name)))
    handlers_before = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    assert cli.main(["recipes"]) == 2
    assert capsys.readouterr().err == "fmnist: error: --thing 3: no such thing; choose 1 or 2\n"
    # main() leaves a Python caller's handlers as they were
    assert {number: signal.getsignal(number) for number in handlers_before} == handlers_before


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_while_a_command_works_is_its_line_and_code(signal_name, monkeypatch, capsys):
    def command(args) -> int:
        os.kill(os.getpid(), getattr(signal, signal_name))
        raise AssertionError("the signal did not stop the command")

    monkeypatch.setitem(cli.COMMANDS, "recipes", command)
    line, code = LINES[signal_name]
    assert cli.main(["recipes"]) == code
    assert capsys.readouterr().err == line + "\n"


@pytest.mark.parametrize("outcome", ["succeeds", "fails"])
@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_a_signal_after_the_command_has_ended_changes_nothing(signal_name, outcome, monkeypatch, capsys):
    """The last moments (the library's log handlers being taken down): no traceback, the same code."""
    def command(args) -> int:
        if outcome == "fails":
            raise FmnistError("--thing 3: no such thing; choose 1 or 2")
        print("done")
        return 0

    take_down = cli.stop_showing_library_logs

    def taken_down_and_signalled() -> None:
        take_down()  # the handlers go (left up, they would write to this test's closed capture later)
        os.kill(os.getpid(), getattr(signal, signal_name))

    monkeypatch.setitem(cli.COMMANDS, "recipes", command)
    monkeypatch.setattr(cli, "stop_showing_library_logs", taken_down_and_signalled)
    assert cli.main(["recipes"]) == (0 if outcome == "succeeds" else 2)
    said = capsys.readouterr()
    assert (said.out, said.err) == (("done\n", "") if outcome == "succeeds" else
                                    ("", "fmnist: error: --thing 3: no such thing; choose 1 or 2\n"))
