"""The CLI as a user runs it: results on stdout, mistakes as one line on stderr with exit code 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fmnist.cli import main


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fmnist", *args], capture_output=True, text=True,
        env={**os.environ, **(env or {})}, timeout=300,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["train", "--model", "nope"], "unknown model"),
        (["train", "--epochs", "0"], "--epochs 0"),
        (["train", "--lr", "0"], "--lr 0.0"),
        (["train", "--batch-size", "-3"], "--batch-size -3"),
        (["train", "--epochs", "two"], "--epochs 'two': not a valid int"),
        (["train", "--config", "/no/such/file.toml"], "cannot read"),
        (["evaluate", "/no/such/run"], "no such run folder"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, fragment, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and fragment in captured.err


def test_a_real_process_exits_2_without_traceback(tmp_path):
    assert_one_line_error(run_cli("train", "--epochs", "0"), "--epochs 0")
    assert_one_line_error(run_cli("train", "--data-dir", str(tmp_path)), "missing train-images")


def test_corrupt_data_file_is_one_line_in_a_real_process(tiny_data, tmp_path):
    (tiny_data / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    result = run_cli("data", "info", "--data-dir", str(tiny_data))
    assert_one_line_error(result, "t10k-labels-idx1-ubyte.gz: cannot read")


def test_models_lists_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "affine-cnn" in out and "421,898" in out


def test_train_then_evaluate_as_a_user_would(tiny_data, tmp_path):
    config = tmp_path / "quick.toml"
    config.write_text("epochs = 1\nval_size = 100\nbatch_size = 50\n")
    trained = run_cli(
        "train", "--config", str(config), "--data-dir", str(tiny_data), "--allow-unverified-data", "--out",
            str(tmp_path / "runs"),
        "--name", "cli", "--seed", "1",
    )
    assert trained.returncode == 0, trained.stderr
    assert "test accuracy" in trained.stdout and "run folder:" in trained.stdout
    # Not a terminal: one plain line per epoch, no carriage-return progress bar.
    assert "\r" not in trained.stdout + trained.stderr
    assert trained.stdout.count("epoch 1/1") == 1
    evaluated = run_cli(
        "evaluate", str(tmp_path / "runs" / "cli"), "--data-dir", str(tiny_data), "--allow-unverified-data"
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "test accuracy" in evaluated.stdout and "Ankle boot" in evaluated.stdout


def test_evaluate_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"\x00" * 100)
    assert main(["evaluate", str(bogus)]) == 2
    assert "not a readable checkpoint (Unsupported operand 0)" in capsys.readouterr().err


def test_data_info_reports_location_and_verification(real_data, capsys):
    assert main(["data", "info", "--data-dir", str(real_data)]) == 0
    out = capsys.readouterr().out
    assert f"location: {real_data}" in out
    assert out.count("verified (SHA-256") == 4 and "60,000 images" in out


def test_data_info_flags_files_that_are_not_fashion_mnist(tiny_data, capsys):
    assert main(["data", "info", "--data-dir", str(tiny_data)]) == 1
    assert "verification: FAILED" in capsys.readouterr().out


def test_version_and_json_outputs(tiny_data, tmp_path, capsys):
    from fmnist import __version__

    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"fmnist {__version__}"
    data_info = ["data", "info", "--data-dir", str(tiny_data), "--json"]
    for arguments in (["models", "--json"], ["recipes", "--json"], data_info):
        main(arguments)
        assert json.loads(capsys.readouterr().out)
    assert main(["train", "--data-dir", str(tiny_data), "--allow-unverified-data", "--val-size", "100",
                 "--epochs", "1", "--limit-batches", "2", "--out", str(tmp_path), "--name", "j", "--json"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)  # only the summary on stdout; the epoch lines went to stderr
    assert result["path"] == str(tmp_path / "j") and "epoch 1/1" in captured.err
    assert main(["evaluate", str(tmp_path / "j"), "--allow-unverified-data", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == result["test_accuracy"]


def test_usage_errors_have_a_single_prefix(capsys):
    assert main(["train", "--no-such-option"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmnist: error: ") and err.count("fmnist: error") == 1 and "fmnist train --help" in err


def test_other_libraries_log_one_line_each_and_never_a_traceback(monkeypatch, capfd):
    """Optuna, uvicorn or torch.distributed may log an exception with its traceback before fmnist says
    what went wrong: the terminal shows each as one line, and fmnist's own line last."""
    import importlib
    import logging

    from fmnist.errors import ConfigError

    cli = importlib.import_module("fmnist.cli.main")

    def command(args) -> int:
        try:
            raise RuntimeError("what the library caught\nand its second line")
        except RuntimeError:
            logging.getLogger("somelib.study").warning("Trial 0 failed\nmore detail", exc_info=True)
            logging.getLogger("torch.distributed").error("c10d cleanup failed", exc_info=True)  # torch's own handler
            logging.getLogger("uvicorn.error").info("Started server process")  # below WARNING: not shown
        raise ConfigError("the user's mistake")

    root_handlers, make_record = list(logging.getLogger().handlers), logging.getLogRecordFactory()
    monkeypatch.setitem(cli.COMMANDS, "models", command)
    assert main(["models"]) == 2
    err = capfd.readouterr().err
    assert "Traceback" not in err and "second line" not in err and "more detail" not in err, err
    first, second, last = err.splitlines()
    assert first == "fmnist: warning (somelib.study): Trial 0 failed (RuntimeError: what the library caught)"
    assert "c10d cleanup failed" in second
    assert last == "fmnist: error: the user's mistake"
    # A program that calls main() gets its logging back as it was.
    assert logging.getLogger().handlers == root_handlers and logging.getLogRecordFactory() is make_record
