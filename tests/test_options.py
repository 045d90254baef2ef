"""Every numeric option is range-checked and every path option checked, each as one line with exit 2."""

from __future__ import annotations

import argparse

import pytest

from fmnist.arguments import argument, command_line_spelling
from fmnist.cli import main
from fmnist.cli.options import add_train_options
from fmnist.training.config import FIELDS, declared_type

OUT_OF_RANGE = [
    ("--epochs", "0"), ("--batch-size", "0"), ("--eval-batch-size", "0"), ("--limit-batches", "0"),
    ("--lr", "0"), ("--lr", "inf"), ("--lr", "nan"), ("--max-lr", "-1"), ("--max-lr", "inf"),
    ("--weight-decay", "-0.1"), ("--weight-decay", "inf"), ("--momentum", "1"), ("--momentum", "-0.5"),
    ("--step-size", "0"), ("--gamma", "0"), ("--gamma", "1.5"), ("--label-smoothing", "-0.1"),
    ("--label-smoothing", "1"), ("--mean", "2"), ("--mean", "nan"), ("--std", "0"), ("--std", "inf"),
    ("--val-size", "0"), ("--seed", "-1"), ("--split-seed", "-1"),
]


def one_line_error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(("flag", "value"), OUT_OF_RANGE)
def test_numeric_train_options_are_range_checked(capsys, tmp_path, flag, value):
    err = one_line_error(capsys, ["train", flag, value, "--out", str(tmp_path)])
    assert f"{flag} " in err
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_validation_split_larger_than_the_data(capsys, tiny_data, tmp_path):
    err = one_line_error(capsys, ["train", "--data-dir", str(tiny_data), "--allow-unverified-data",
        "--val-size", "600", "--out", str(tmp_path)])
    assert "--val-size 600: must be less than the 600 training images" in err


def test_numeric_options_of_other_commands(capsys, tmp_path):
    assert "--batch-size 0" in one_line_error(capsys, ["evaluate", str(tmp_path), "--batch-size", "0"])
    assert "--top-k 0" in one_line_error(capsys, ["predict", str(tmp_path), str(tmp_path), "--top-k", "0"])


def test_path_options_are_checked(capsys, tiny_data, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    err = one_line_error(
        capsys, ["train", "--data-dir", str(tiny_data), "--allow-unverified-data", "--val-size", "100",
                  "--out", str(a_file / "runs")]
    )
    assert f"--out {a_file / 'runs'}: cannot create" in err
    err = one_line_error(capsys, ["train", "--data-dir", str(tmp_path / "nowhere")])
    assert "--data-dir" in err and "fmnist data download" in err and "apt-get install" in err
    assert "cannot read" in one_line_error(capsys, ["train", "--config", str(tmp_path / "none.toml")])
    assert "no best.pt or last.pt" in one_line_error(capsys, ["evaluate", str(tmp_path)])
    assert "--dir" in one_line_error(capsys, ["data", "download", "--dir", str(a_file / "data")])
    assert "--data-dir" in one_line_error(capsys, ["data", "info", "--data-dir", str(tmp_path / "no")])


SWITCHES = [name for name in FIELDS if declared_type(name) == "bool"]


@pytest.mark.parametrize("value", [True, False])
@pytest.mark.parametrize("name", SWITCHES)
def test_a_message_names_a_switch_as_the_command_takes_it(name, value):
    """`--tf32 False` is not something `fmnist train` takes: a message names `--no-tf32`, which parses back."""
    with command_line_spelling():
        named = argument(name, value)
    parser = argparse.ArgumentParser()
    add_train_options(parser)
    assert " " not in named and getattr(parser.parse_args([named]), name) is value


@pytest.mark.parametrize(("switch", "named"), [("--no-tf32", "--no-tf32: ignored by these settings"),
                                                ("--tf32", "--tf32: ignored by these settings"),
                                                ("--no-sync-bn", "--no-sync-bn: ignored by these settings")])
def test_a_refused_switch_is_named_as_typed(switch, named, capsys, tmp_path):
    err = one_line_error(capsys, ["train", "--device", "cpu", "--model", "lenet", switch, "--out", str(tmp_path)])
    assert named in err and "True" not in err and "False" not in err
    assert not any(tmp_path.iterdir())
