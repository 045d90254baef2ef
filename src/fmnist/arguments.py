"""Arguments checked at the door of a public function, and named the way the caller wrote them.

A wrong type or value is refused before any work starts (nothing loaded, nothing written) with a
ConfigError, also a ValueError, or an ArgumentTypeError, also a TypeError, so that code written for
Python's own errors keeps working. Each message names the argument, and how depends on the front
door: Python reads `TrainConfig(batch_size=0): must be at least 1`, the `fmnist` command reads
`--batch-size 0: must be at least 1`. Messages therefore name arguments only through `argument`,
`named` and `setting` below, which spell them for the door in force: Python's by default, the
command line's inside `command_line_spelling()` (which the CLI enters once per command).

Why a context variable, not a re-rendering by the CLI: messages are embedded in other messages (a
run folder's config.json quoted by resume, a sweep point's option quoted by the sweep), and options are
named deep inside the library (`give max_lr instead`); spelled when made, each reads right at its door.
A ConfigError still carries `field`, `value` and `rule`, so a caller can say it its own way (a config
file's `lr = -1.0`).

The checks are cheap (an isinstance and a comparison or two) and run once per call; the one check per
batch is the loop's look at each (images, labels) pair, three isinstance calls beside a training step.
"""

from __future__ import annotations

import difflib
import json
import math
import os
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch

from fmnist.errors import ArgumentTypeError, ConfigError

PYTHON, COMMAND_LINE = "python", "command line"
_spelling: ContextVar[str] = ContextVar("fmnist_argument_spelling", default=PYTHON)

# Where a Python argument has a command-line option of another name (the rest are --the-name).
# A positional argument is named by its metavar (`RUN_DIR ''`).
COMMAND_LINE_NAMES = {("resume", "run_dir"): "--resume", ("create_model", "name"): "--model",
                      ("compare_runs", "out_dir"): "--out", ("compare_runs", "sort_by"): "--sort",
                      ("report_run", "run_dir"): "RUN_DIR", ("calibrate_run", "run_dir"): "RUN_DIR"}
CONFIG = "TrainConfig"
# torch stores counts and seeds as 64-bit integers: a larger int would fail deep inside it.
MAX_COUNT = 2**63 - 1
MAX_SEED = 2**64 - 1
# Characters of a value shown in a message, which stays one line: a path (a str) in full unless absurd.
LONGEST_SHOWN, LONGEST_PATH = 60, 400


@contextmanager
def command_line_spelling() -> Iterator[None]:
    """Messages made inside name options as the `fmnist` command takes them (`--batch-size 0`)."""
    token = _spelling.set(COMMAND_LINE)
    try:
        yield
    finally:
        _spelling.reset(token)


def for_command_line() -> bool:
    return _spelling.get() == COMMAND_LINE


def shown(value) -> str:
    """A value as a message shows it: its repr, on one line and short; a path as its text; a tensor by
    its shape (a tensor's repr is many lines, a huge int's repr may itself raise)."""
    if isinstance(value, Path):
        value = str(value)
    if hasattr(value, "shape") and hasattr(value, "dtype") and not isinstance(value, (int, float)):
        return f"{type(value).__name__} of shape {tuple(value.shape)} and dtype {value.dtype}"
    try:
        text = repr(value)
    except Exception:  # a huge int, or an object whose __repr__ fails: its type says enough
        text = f"<{type(value).__name__}>"
    text = " ".join(text.split())
    longest = LONGEST_PATH if isinstance(value, str) else LONGEST_SHOWN
    return text if len(text) <= longest else text[: longest - 3] + "..."


def in_toml(value) -> str:
    """A value as a TOML file spells it (`true`, `"cosine"`, `0.1`): a message that quotes a line of a config
    or space file shows what the user can type back there, not Python's `True` or `'cosine'`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = json.dumps(value)  # a TOML basic string: double quotes, the same escapes
        return text if len(text) <= LONGEST_PATH else text[: LONGEST_PATH - 4] + '..."'
    return shown(value)


def flag(name: str, owner: str = CONFIG) -> str:
    return COMMAND_LINE_NAMES.get((owner, name), "--" + name.replace("_", "-"))


def argument(name: str, value, owner: str = CONFIG, as_typed: bool = False) -> str:
    """The argument and the value it was given: `TrainConfig(batch_size=0)` or `--batch-size 0`.
    The command line shows a value as its repr (`--name 'a/b'`), a path, or with `as_typed` any value,
    as it was typed (`--amp fp16`); a switch always as typed (`--sync-bn`, `--no-tf32`), since
    `--tf32 False` is not something a command takes."""
    if not for_command_line():
        return f"{owner}({name}={shown(value)})"
    if as_typed or isinstance(value, bool):
        return setting(name, value, owner)
    return f"{flag(name, owner)} {value if isinstance(value, Path) else shown(value)}"


def named(name: str, owner: str = CONFIG) -> str:
    """An option mentioned in a message: `max_lr` or `--max-lr`."""
    return flag(name, owner) if for_command_line() else name


def setting(name: str, value, owner: str = CONFIG) -> str:
    """An option with the value it takes: `scheduler='onecycle'` or `--scheduler onecycle`."""
    if not for_command_line():
        return f"{name}={value!r}"
    if isinstance(value, bool):
        return switch(name, value, owner)
    return f"{flag(name, owner)} {value}"


def switch(name: str, on: bool, owner: str = CONFIG) -> str:
    """A boolean option as the command line takes it: `--tta-flip` or `--no-tta-flip`."""
    return flag(name, owner) if on else "--no-" + flag(name, owner).removeprefix("--")


def given_as(name: str, value, owner: str = CONFIG) -> str:
    """An option named as it was given, without its value: `--lr` (`lr`), a switch with its sign (`--no-report`)."""
    return setting(name, value, owner) if isinstance(value, bool) else named(name, owner)


def invalid(name: str, value, rule: str, owner: str = CONFIG, as_typed: bool = False) -> ConfigError:
    """The error for a value out of range or unknown: `<argument>: <rule>`."""
    return ConfigError(f"{argument(name, value, owner, as_typed)}: {rule}", name, value=value, rule=rule)


def wrong_type(name: str, value, expected: str, owner: str = CONFIG) -> ArgumentTypeError:
    rule = f"should be {expected}, not {type(value).__name__}"
    return ArgumentTypeError(f"{argument(name, value, owner)}: {rule}", name, value=value, rule=rule)


def check_type(value, types: type | tuple[type, ...], name: str, owner: str, expected: str):
    """`value` if it is one of `types` (never a bool for a number), else ArgumentTypeError."""
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in _as_tuple(types)):
        return value
    raise wrong_type(name, value, expected, owner)


def _as_tuple(types) -> tuple:
    return types if isinstance(types, tuple) else (types,)


def check_bool(value, name: str, owner: str) -> bool:
    return check_type(value, bool, name, owner, "of type bool")


def check_int(value, name: str, owner: str, minimum: int | None = None, maximum: int = MAX_COUNT) -> int:
    """A whole number in [minimum, maximum] (a bool is not one, though Python says it is an int)."""
    check_type(value, int, name, owner, "of type int")
    if minimum is not None and value < minimum:
        raise invalid(name, value, f"must be at least {minimum}", owner)
    if value > maximum:
        raise invalid(name, value, f"must be at most {maximum:,}" if maximum < 10**9 else
                      f"must be at most 2**{maximum.bit_length()}-1", owner)
    return value


def check_seed(value, name: str, owner: str) -> int:
    check_type(value, int, name, owner, "of type int")
    if not 0 <= value <= MAX_SEED:
        raise invalid(name, value, "must be in 0..2**64-1", owner)
    return value


def check_number(value, name: str, owner: str, *, minimum: float | None = None, above: float | None = None,
                 maximum: float | None = None) -> float:
    """A finite float (an int is taken as one): at least `minimum`, greater than `above`, at most `maximum`."""
    check_type(value, (int, float), name, owner, "of type float")
    try:
        number = float(value)
    except OverflowError:
        raise invalid(name, value, "too large for a float", owner) from None
    if not math.isfinite(number):
        raise invalid(name, value, "must be a finite number", owner)
    if minimum is not None and number < minimum:
        raise invalid(name, value, f"must be {minimum:g} or more", owner)
    if above is not None and number <= above:
        raise invalid(name, value, f"must be greater than {above:g}", owner)
    if maximum is not None and number > maximum:
        raise invalid(name, value, f"must be at most {maximum:g}", owner)
    return number


def check_choice(value, choices: Collection[str], name: str, owner: str) -> str:
    check_type(value, str, name, owner, "of type str")
    if value not in choices:
        raise invalid(name, value, f"choose one of {', '.join(choices)}", owner)
    return value


def check_path(value, name: str, owner: str) -> Path:
    """A path given as str or os.PathLike, not empty and without NUL (which no file system takes)."""
    check_type(value, (str, os.PathLike), name, owner, "a path (str or pathlib.Path)")
    try:
        text = os.fspath(value)
    except TypeError:  # a PathLike whose __fspath__ returns something else
        raise wrong_type(name, value, "a path (str or pathlib.Path)", owner) from None
    if not isinstance(text, str) or not text.strip() or "\0" in text:
        raise invalid(name, value, "must be a non-empty path", owner)
    return Path(text)


def check_callable(value, name: str, owner: str) -> Callable:
    if not callable(value):
        raise wrong_type(name, value, "callable", owner)
    return value


def check_names(given: Collection[str], valid: Collection[str], owner: str, what: str = "keyword argument") -> None:
    """A ConfigError for the first name that is not in `valid`, suggesting the closest valid one."""
    for name in given:
        if name not in valid:
            close = difflib.get_close_matches(str(name), list(valid), n=1)
            hint = f"did you mean {named(close[0], owner)}? " if close else ""
            listed = ", ".join(named(option, owner) for option in valid)
            keyword = f"{name}=..." if str(name).isidentifier() else f"**{{{shown(name)}: ...}}"
            where = flag(str(name), owner) if for_command_line() else f"{owner}({keyword})"
            raise ConfigError(f"{where}: unknown {what}; {hint}valid {what}s: {listed}", str(name))


def as_argument_of(owner: str, error: ConfigError, name: str | None = None) -> ConfigError:
    """The same error, naming its argument as `owner`'s: a config option given to `resume`, or the batches
    that `fit` passed on to `train_one_epoch` as its `train_batches` (`name`)."""
    if error.rule is None:
        return error
    name = name or error.field
    return type(error)(f"{argument(name, error.value, owner)}: {error.rule}", name, value=error.value,
                       rule=error.rule)


def check_device(value, name: str, owner: str) -> torch.device:
    """torch's device for a name such as 'cpu' or 'cuda:1', or a torch.device."""
    check_type(value, (str, torch.device), name, owner, "a device name or a torch.device")
    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise invalid(name, value, "not a device; give cpu, cuda, cuda:N or mps", owner) from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": hasattr(torch.backends, "mps") and torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise invalid(name, value, f"{device.type} is not available here; give one of "
                                   f"{', '.join(kind for kind, here in available.items() if here)}", owner)
    return device


def check_images(value, name: str, owner: str) -> torch.Tensor:
    """uint8 images (N, H, W), as Fashion-MNIST's are (0..255, one gray channel)."""
    check_type(value, torch.Tensor, name, owner, "a torch.Tensor of uint8 images (N, 28, 28)")
    if value.dtype != torch.uint8 or value.dim() != 3:
        raise invalid(name, value, "give uint8 images of shape (N, 28, 28)", owner)
    return value


def check_module(value, name: str, owner: str) -> torch.nn.Module:
    """A torch module with at least one parameter (the loop finds the device through them)."""
    check_type(value, torch.nn.Module, name, owner, "a torch.nn.Module")
    if next(value.parameters(), None) is None:
        raise invalid(name, value, "has no parameters to train or to find its device by", owner)
    return value


def check_iterable(value, name: str, owner: str):
    """Batches: anything iterable but a tensor or a string, whose own iteration would give images one by one."""
    if isinstance(value, (str, bytes, torch.Tensor)) or not hasattr(value, "__iter__"):
        raise wrong_type(name, value, "an iterable of (images, labels) batches", owner)
    return value
