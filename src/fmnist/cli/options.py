"""TrainConfig options as command-line flags, and back: one flag per config field, help and
defaults taken from the config itself, and the `fmnist train` command that rebuilds a config."""

from __future__ import annotations

import argparse
import shlex

from fmnist.arguments import switch
from fmnist.errors import ConfigError
from fmnist.models.resnet import FROM_TORCHVISION_CACHE
from fmnist.training.config import FIELDS, MLFLOW_DEFAULT_STORE, TrainConfig, declared_type, flag, parse_text

# Flags whose value may be left out, and what they mean then: `--pretrained` alone is the cache, `--mlflow`
# alone MLflow's own default store.
FLAG_DEFAULT_WHEN_BARE = {"pretrained": FROM_TORCHVISION_CACHE, "mlflow": MLFLOW_DEFAULT_STORE}
# Fields a re-run should not copy: a fixed --name would collide with the existing run folder.
NOT_REPEATED = ("name",)


def shown_default(name: str) -> str:
    """The default as --help shows it: the value TrainConfig() resolves to, for each setting it depends on."""
    if name == "lr":  # under OneCycle the peak, whose default is another than the other schedules' rate
        return f"{TrainConfig().lr} under --scheduler onecycle, {TrainConfig(scheduler='cosine').lr} under the others"
    default = FIELDS[name].metadata["default"]
    return "none" if default is None else ("on" if default is True else "off" if default is False else str(default))


def help_text(name: str) -> str:
    """An option's help with its default, said once: a help that explains its own default keeps it."""
    text = FIELDS[name].metadata["help"]
    if "(default:" not in text:
        text += f" (default: {shown_default(name)})"
    return text.replace("%", "%%")  # argparse formats help strings with %


def add_train_options(parser: argparse.ArgumentParser, refused: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field; unset flags stay None so the recipe's and the file's values win.

    Options in `refused` are left out of --help, as the command does not accept them; they are still
    parsed so that the command can say in one line why it refuses them.
    """
    for name in FIELDS:
        metavar = FIELDS[name].metadata["metavar"] or name.upper()
        help = argparse.SUPPRESS if name in refused else help_text(name)
        if declared_type(name) == "bool":
            parser.add_argument(flag(name), dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=help)
        elif name in FLAG_DEFAULT_WHEN_BARE:
            parser.add_argument(flag(name), dest=name, nargs="?", const=FLAG_DEFAULT_WHEN_BARE[name], default=None,
                                metavar=metavar, help=help)
        else:
            parser.add_argument(flag(name), dest=name, default=None, metavar=metavar, help=help)
    parser.add_argument("--config", help="TOML file of options (keys as above, with _ for -); flags override it")


def overrides_from(args: argparse.Namespace) -> dict:
    """The options given on the command line, parsed by the config's own rules; None = not given."""
    overrides = {}
    for name in FIELDS:
        value = getattr(args, name)
        if isinstance(value, str) and declared_type(name) != "str":
            value = parse_text(name, value)
        overrides[name] = value
    return overrides


def rerun_command(config: TrainConfig) -> str:
    """An `fmnist train` command with explicit flags that rebuilds `config` (all but its --name).

    Flags are given for every option that differs from what the recipe (or the defaults) would set,
    so the command stays short yet does not depend on anything but the recipe's own values.
    """
    baseline = TrainConfig(recipe=config.recipe) if config.recipe else TrainConfig()
    arguments = ["fmnist", "train"]
    if config.recipe:
        arguments += ["--recipe", config.recipe]
    for name, value in config.to_dict().items():
        if name == "max_lr" and config.scheduler == "onecycle":
            continue  # the same rate as --lr, OneCycle's peak: said once, as --lr
        if name in NOT_REPEATED or name == "recipe" or value is None or value == baseline_value(baseline, config, name):
            continue
        if isinstance(value, bool):
            arguments.append(switch(name, value))
        else:
            arguments += [flag(name), repr(value) if isinstance(value, float) else str(value)]
    return shlex.join(arguments)


def baseline_value(baseline: TrainConfig, config: TrainConfig, name: str):
    """What `name` would be in `config`'s rerun without its flag."""
    if name == "lr" and (config.scheduler == "onecycle") != (baseline.scheduler == "onecycle"):
        return None  # the recipe's rate is a peak and the run's a start, or the other way round: say it
    return getattr(baseline, name)


def check_positive(value: int, option: str) -> None:
    if value < 1:
        raise ConfigError(f"{option} {value}: must be at least 1")
