"""Every command's --help (issue 30): it lists only options the command accepts, and says each
default once, and right. The commands' work is replaced by a stub: these tests check that the
command line gets past every check to the work, not the work itself."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import pkgutil
import re

import pytest

import fmnist
from fmnist.cli.main import build_parser, main
from fmnist.cli.options import FLAG_DEFAULT_WHEN_BARE
from fmnist.errors import ConfigError
from fmnist.training.config import FIELDS, TrainConfig, declared_type, flag, parse_text


def subcommands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(words, parser) for every command a user can run: `train`, ..., `data info`."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from subcommands(sub, (*words, name))
            return
    yield words, parser


COMMANDS = dict(subcommands(build_parser()))


def listed_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options --help shows (not -h itself)."""
    return [action for action in parser._actions
            if action.option_strings and action.help != argparse.SUPPRESS and "-h" not in action.option_strings]


HELP_CASES = [(" ".join(words), action) for words, parser in COMMANDS.items() for action in listed_options(parser)]
OPTION_CASES = [(command, option) for command, action in HELP_CASES for option in action.option_strings]
TRAIN_COMMANDS = ("train", "sweep", "tune", "lr-find")  # the commands that take TrainConfig's options

# Settings under which the options that only some settings use apply (see CONDITIONAL in training/config.py).
SETTINGS = [{}, {"optimizer": "sgd", "scheduler": "cosine"}, {"scheduler": "steplr"}, {"loss": "focal"},
            {"model": "fast-cnn"}, {"model": "resnet18"}, {"patience": 1}, {"mlflow": "default"}, {"hflip": True}]
# A valid value for the TrainConfig options whose default is none (the others are given their default).
TRAIN_VALUES = {"recipe": "fast", "time_budget": "90s", "ema": "0.999", "clip_grad_norm": "1.0",
                "limit_batches": "2", "data_dir": "data", "name": "mine"}
# The other options: their arguments in a valid combination.
OWN_VALUES = {
    "--config": ["run.toml"], "--resume": ["run"], "--set": ["eval_batch_size=128,256"], "--seeds": ["2"],
    "--jobs": ["1"], "--threads-per-job": ["1"], "--space": ["space.toml"], "--trials": ["1"],
    "--storage": ["journal:study.log"], "--study": ["s"], "--pruner": ["none"], "--top": ["5"], "--top-k": ["3"],
    "--format": ["onnx"], "--out": ["out"], "--host": ["127.0.0.1"], "--port": ["0"], "--max-upload-mb": ["1"],
    "--max-batch": ["4"], "--steps": ["20"], "--start-lr": ["1e-6"], "--end-lr": ["1"], "--plot": ["plot.png"],
    "--recipe": ["quick"], "--model": ["lenet"], "--batch-size": ["32"], "--warmup": ["1"], "--device": ["cpu"],
    "--amp": ["none"], "--data-dir": ["data"], "--val-size": ["100"], "--time-to-accuracy": ["quick"],
    "--epochs": ["1"], "--time-budget": ["90s"], "--dir": ["data"], "--mirror": ["https://example.org/"],
    "--sort": ["test_accuracy"], "--descending": ["--sort", "test_accuracy"], "--explain": ["maps"],
}
TUNE = ["--storage", "journal:study.log", "--study", "s", "--trials", "1", "--space"]
# Where each command starts from; an option must be accepted from at least one of them.
STARTS = {
    "lr-find": [["quick"], ["mlp-sgd-ce"]], "evaluate": [["run"]], "report": [["run"]], "export": [["run"]],
    "serve": [["run"]], "calibrate": [["run"]],
    "compare": [["run"]], "predict": [["run", "image.png"]], "summary": [["lenet"]],
    "tune": [[*TUNE, "space.toml"], [*TUNE, "seed-space.toml"], ["--storage", "journal:study.log", "--study", "s",
                                                                  "--show"]],
    "bench": [[], ["--time-to-accuracy", "quick"]],
}
# The functions that do each command's work: reached, the command line was accepted.
WORK = ["fmnist.experiment.train", "fmnist.experiment.resume", "fmnist.tools.sweep.prepare_folder",
        "fmnist.tools.tune.open_storage", "fmnist.tools.tune.show_study", "fmnist.tools.lr_find.find_lr",
        "fmnist.inference.evaluate_checkpoint", "fmnist.inference.load_model", "fmnist.reports.report.report_run",
        "fmnist.reports.compare.compare_runs", "fmnist.models.summary.model_summary",
        "fmnist.tools.export.export_onnx", "fmnist.serve.serve", "fmnist.tools.bench.benchmark",
        "fmnist.tools.bench.time_to_accuracy", "fmnist.data.download.download", "fmnist.data.download.ensure",
        "fmnist.data.locate.find_data_dir", "fmnist.tools.calibrate.calibrate_run"]


class Reached(Exception):
    """The command got past its checks to its work."""


def import_every_module() -> None:
    """Import all of fmnist first: a module that a stubbed command imports for the first time would keep
    the stub under its own name (`from fmnist.experiment import train`) for the tests that follow."""
    for module in pkgutil.walk_packages(fmnist.__path__, "fmnist."):
        if module.name.endswith("__main__"):  # `python -m fmnist`: importing it runs the command
            continue
        with contextlib.suppress(ImportError):  # an extra that is not installed: no command reaches it here
            importlib.import_module(module.name)


@pytest.fixture
def stubbed_work(monkeypatch, tmp_path):
    def reached(*args, **kwargs):
        raise Reached

    import_every_module()
    for target in WORK:
        monkeypatch.setattr(target, reached)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.toml").write_text("seed = 7\n")
    (tmp_path / "space.toml").write_text("[eval_batch_size]\nchoices = [128, 256]\n")
    (tmp_path / "seed-space.toml").write_text("[seed]\nchoices = [1, 2]\n")


def train_field(command: str, option: str) -> str | None:
    """The TrainConfig field an option of `command` sets, if it is one of TrainConfig's flags."""
    name = option.removeprefix("--").removeprefix("no-").replace("-", "_")
    return name if command in TRAIN_COMMANDS and name in FIELDS else None


def train_option_arguments(name: str, option: str) -> list[list[str]]:
    """The option with a valid value, alone and under each of the settings in which TrainConfig accepts it."""
    if declared_type(name) == "bool":
        given, value = [option], not option.startswith("--no-")
    elif name in FLAG_DEFAULT_WHEN_BARE:
        given, value = [option], FLAG_DEFAULT_WHEN_BARE[name]
    else:
        text = TRAIN_VALUES.get(name, str(FIELDS[name].metadata["default"]))
        given, value = [option, text], parse_text(name, text)
    candidates = [given]  # a start (a recipe, a run folder) may make the option apply by itself
    for settings in SETTINGS:
        try:
            TrainConfig(**{**settings, name: value})
        except ConfigError:
            continue
        candidates.append([*(word for key, setting in settings.items() for word in words_of(key, setting)), *given])
    return candidates


def words_of(key: str, setting) -> tuple[str, ...]:
    """A setting on the command line: a switch on is its flag alone (--hflip), others take their value."""
    return (flag(key),) if setting is True else (flag(key), str(setting))


def invocations(command: str, option: str) -> list[list[str]]:
    """Command lines that use `option` of `command` in a valid combination."""
    name = train_field(command, option)
    if name is not None:
        uses = train_option_arguments(name, option)
    else:
        uses = [[option, *OWN_VALUES.get(option, [])]]
    starts = STARTS.get(command, [[]])
    return [[*command.split(), *start, *use] for start in starts for use in uses]


@pytest.mark.parametrize(("command", "option"), OPTION_CASES)
def test_every_option_in_help_is_accepted_in_some_combination(command, option, stubbed_work, capsys):
    tried = invocations(command, option)
    assert tried, f"no settings found under which TrainConfig accepts {option}"
    refusals = []
    for arguments in tried:
        try:
            status = main(arguments)
        except Reached:
            return
        if status == 0:
            return
        refusals.append(f"{' '.join(arguments)}: {capsys.readouterr().err.strip()}")
    pytest.fail(f"`fmnist {command} --help` lists {option}, but the command refused it:\n" + "\n".join(refusals))


SWITCHES = ("--tensorboard", "--report", "--no-report", "--no-calibrate", "--tta-flip")


@pytest.mark.parametrize("option", ["--out", "--name", "--epochs", "--lr", "--scheduler", *SWITCHES])
def test_lr_find_refuses_what_its_help_leaves_out_in_one_line(option, stubbed_work, capsys):
    value = [] if option in SWITCHES else ["1"]
    assert option not in " ".join(o for a in listed_options(COMMANDS[("lr-find",)]) for o in a.option_strings)
    assert main(["lr-find", "quick", option, *value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fmnist: error: {option}: lr-find sweeps the learning rate itself") and err.count("\n") == 1


DEFAULT = re.compile(r"\(default: ([^;)]*)")


def said_default(help: str) -> str | None:
    """What an option's help gives as its default: the words after '(default: ', up to ';' or ')'."""
    match = DEFAULT.search(help)
    return match.group(1).strip() if match else None


def same_value(text: str, value) -> bool:
    first = re.split(r"[ ,]", text)[0]
    if isinstance(value, bool):
        return first == ("on" if value else "off")
    if isinstance(value, (int, float)):
        try:
            return float(first) == value
        except ValueError:
            return False
    return first == str(value)


@pytest.mark.parametrize(("command", "action"), HELP_CASES, ids=[f"{c} {a.option_strings[-1]}" for c, a in HELP_CASES])
def test_every_option_has_a_help_with_its_default_said_once(command, action):
    assert action.help and action.help.strip(), f"{action.option_strings[0]} has no help"
    assert len(re.findall(r"\bdefault\b", action.help)) <= 1, action.help


@pytest.mark.parametrize(("command", "action"), HELP_CASES, ids=[f"{c} {a.option_strings[-1]}" for c, a in HELP_CASES])
def test_the_default_a_help_gives_is_the_one_used(command, action):
    said = said_default(action.help)
    name = train_field(command, action.option_strings[0])
    if name is not None:  # the value TrainConfig resolves to, under the first settings that use the option
        unset = [settings for settings in SETTINGS if name not in settings]  # settings that give it no value
        resolved = next(getattr(TrainConfig(**settings), name) for settings in unset
                        if getattr(TrainConfig(**settings), name) is not None or settings == unset[-1])
        assert said is not None, action.help
        if resolved is None:
            assert said == "none" or "(default:" in FIELDS[name].metadata["help"], action.help
        else:
            assert same_value(said, resolved), (said, resolved)
    elif action.default not in (None, False, True, argparse.SUPPRESS, []):
        assert said is not None and same_value(said, action.default), (action.help, action.default)


def test_lrs_help_says_what_it_is_under_each_schedule():
    [lr] = [action for action in listed_options(COMMANDS[("train",)]) if "--lr" in action.option_strings]
    text = " ".join(lr.help.split())
    for words in ("onecycle its peak", "--max-lr is its other name", "steplr starts at it", "cosine and linear",
                  "none keeps it", "(default: 0.01 under --scheduler onecycle, 0.001 under the others)"):
        assert words in text
