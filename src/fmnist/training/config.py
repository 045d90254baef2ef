"""One typed training config: every option with its default, its help text and when it applies.

    TrainConfig()                                  the custom-layer assignment's recipe (the defaults)
    TrainConfig.from_recipe("fast", epochs=3)      a named recipe, then your changes
    config.replace(optimizer="adam")               a copy with changes, re-resolved

This module is the one source of truth for defaults: the CLI's flags, the TOML keys, `fmnist sweep
--set` and the library builders all take their values from here. A config is checked when it is
made: a value out of range, of the wrong type, or for an option the chosen settings ignore
(`momentum` with Adam, `max_lr` under a cosine schedule, ...) is a ConfigError naming the option,
never a silent no-op.
Options that do not apply to the chosen settings hold None, so config.json shows what was used.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import SimpleNamespace

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fmnist.arguments import CONFIG, MAX_COUNT, argument, check_names, check_number, in_toml, invalid, named, setting
from fmnist.arguments import MAX_SEED as MAX_SEED
from fmnist.arguments import check_type as check_instance
from fmnist.arguments import flag as option_flag
from fmnist.data.fashion import MEAN, SPLIT_SEED, STD, VAL_SIZE
from fmnist.errors import ConfigError
from fmnist.models import PRETRAINED_MODELS, has_batch_norm, list_models
from fmnist.training.duration import parse_time_budget
from fmnist.training.recipes import get_recipe

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("onecycle", "steplr", "cosine", "linear", "none")
LOSSES = ("ce", "focal")
DEVICES = ("auto", "cpu", "cuda", "mps")
AMP_MODES = ("none", "auto", "bf16", "fp16")
# Small enough for a batch's activations to stay in the CPU cache: 3x faster than 1,000 (BENCHMARKS.md).
EVAL_BATCH_SIZE = 256
# Seeds go to torch's generators, which take 64-bit unsigned integers.

# `--mlflow` given bare (`mlflow = "default"` in TOML): MLflow's own default store, MLFLOW_TRACKING_URI first.
MLFLOW_DEFAULT_STORE = "default"

UNSET = None  # an option left out; resolved to the recipe's value, else the default


def option(default, help: str, metavar: str | None = None):
    """A config field: its default and help text live together, and the CLI reads both."""
    return field(default=UNSET, metadata={"default": default, "help": help, "metavar": metavar})


# Options that only some settings use: field -> (does it apply?, why not, naming what does apply).
# The reasons are functions: they name options as the front door in force spells them (arguments.py).
CONDITIONAL = {
    "epochs": (lambda c: c.time_budget is None,
               lambda: f"{named('time_budget')} plans the number of epochs itself from this machine's speed; drop "
                       f"{named('epochs')}, or drop {named('time_budget')} to train for a number of epochs"),
    "max_lr": (lambda c: c.scheduler == "onecycle",
               lambda: f"only {setting('scheduler', 'onecycle')} has a peak rate; give {named('lr')} instead (the rate "
                       "the other schedules start from)"),
    "momentum": (lambda c: c.optimizer == "sgd" and c.scheduler != "onecycle",
                 lambda: f"only {setting('optimizer', 'sgd')} uses momentum, and {setting('scheduler', 'onecycle')} "
                         "sets it itself (cycling it between 0.95 and 0.85 against the learning rate); choose "
                         f"another {named('scheduler')} to set it"),
    "nesterov": (lambda c: c.optimizer == "sgd",
                 lambda: f"only {setting('optimizer', 'sgd')} has Nesterov momentum"),
    "step_size": (lambda c: c.scheduler == "steplr", lambda: f"only {setting('scheduler', 'steplr')} decays in steps"),
    "gamma": (lambda c: c.scheduler == "steplr", lambda: f"only {setting('scheduler', 'steplr')} has a decay factor"),
    "alternate_flips": (lambda c: c.hflip,
                        lambda: f"it changes how {named('hflip')} mirrors, and {named('hflip')} is off; add "
                                f"{named('hflip')}"),
    "label_smoothing": (lambda c: c.loss == "ce",
                        lambda: f"applies to {setting('loss', 'ce')} only (focal loss is shaped by "
                                f"{named('focal_gamma')} instead)"),
    "focal_gamma": (lambda c: c.loss == "focal", lambda: f"only {setting('loss', 'focal')} uses it"),
    "focal_alpha": (lambda c: c.loss == "focal", lambda: f"only {setting('loss', 'focal')} uses it"),
    "mixup": (lambda c: c.loss == "ce",
              lambda: f"mixed labels need {setting('loss', 'ce')} (focal loss takes one class per image)"),
    "cutmix": (lambda c: c.loss == "ce",
               lambda: f"mixed labels need {setting('loss', 'ce')} (focal loss takes one class per image)"),
    "sync_bn": (lambda c: c.model in list_models() and has_batch_norm(c.model),
                lambda: "only models with BatchNorm layers have statistics to synchronize"),
    "tf32": (lambda c: c.device in ("cuda", "auto"),
             lambda: "TF32 is a CUDA GPU's: other devices compute float32 in full"),
    "min_delta": (lambda c: c.patience is not None, lambda: f"only early stopping ({named('patience')}) uses it"),
    "mlflow_experiment": (lambda c: c.mlflow is not None, lambda: f"only {named('mlflow')} logs to an experiment"),
    "pretrained": (lambda c: c.model in PRETRAINED_MODELS,
                   lambda: f"only {' or '.join(setting('model', name) for name in PRETRAINED_MODELS)} has "
                           "pretrained weights"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. The defaults are the custom-layer assignment's recipe."""

    recipe: str | None = option(None, "start from a named recipe (see `fmnist recipes`); other options override it")
    model: str = option("affine-cnn", "model name (see `fmnist models`)")
    epochs: int | None = option(3, "passes over the training split (not with --time-budget, which plans them)")
    time_budget: str | None = option(None, "train for this long instead of a number of epochs (90s, 5m, 1h): the "
                                           "steps are planned from this machine's measured speed so that training "
                                           "and validation end within it, and the schedule ends there",
                                     metavar="DURATION")
    patience: int | None = option(None, "early stopping: stop once validation accuracy has not improved (by more "
                                        "than --min-delta) for this many epochs; the best epoch is tested as "
                                        "always (default: train every epoch)", metavar="EPOCHS")
    min_delta: float | None = option(0.0, "early stopping: the rise in validation accuracy (a fraction: 0.001 is "
                                          "0.1 points) that counts as an improvement (--patience)", metavar="DELTA")
    batch_size: int = option(64, "training batch size")
    optimizer: str = option("adamw", "one of " + ", ".join(OPTIMIZERS))
    lr: float | None = option(1e-3, "learning rate: under --scheduler onecycle its peak (it warms up from lr/25 "
                                    "over the first 30% of steps, then anneals to lr/25/10^4; --max-lr is its "
                                    "other name); steplr starts at it and multiplies it by --gamma every "
                                    "--step-size epochs; cosine and linear start at it and end at 0; none keeps it")
    weight_decay: float = option(0.01, "decoupled for AdamW, L2 for SGD and Adam")
    momentum: float | None = option(0.9, "SGD momentum (--optimizer sgd; OneCycle cycles it 0.95-0.85 itself)")
    nesterov: bool | None = option(False, "SGD with Nesterov momentum (--optimizer sgd)")
    scheduler: str = option("onecycle", "one of " + ", ".join(SCHEDULERS) + "; onecycle, cosine and linear (decay "
                                        "to 0) step every batch")
    max_lr: float | None = option(0.01, "OneCycle's peak learning rate, the same as --lr under --scheduler onecycle "
                                        "(give one of them)")
    step_size: int | None = option(1, "epochs between decays (--scheduler steplr)")
    gamma: float | None = option(0.7, "decay factor (--scheduler steplr)")
    loss: str = option("ce", "ce (cross-entropy) or focal; validation and test losses stay cross-entropy")
    label_smoothing: float | None = option(0.0, "cross-entropy label smoothing in [0, 1) (--loss ce)")
    focal_gamma: float | None = option(2.0, "how strongly confident, correct images are down-weighted (--loss focal)")
    focal_alpha: float | None = option(1.0, "one weight for every class (--loss focal)")
    mean: float = option(MEAN, "input normalization mean (0..1 scale)")
    std: float = option(STD, "input normalization std (0..1 scale)")
    rotate_degrees: float = option(0.0, "augment: rotate each training image by up to this many degrees either way")
    hflip: bool = option(False, "augment: mirror each training image left-right with probability 1/2")
    alternate_flips: bool | None = option(False, "augment: mirror each training image in every other epoch instead "
                                                 "of at random, so two epochs show it both ways (--hflip)")
    crop_padding: int = option(0, "augment: pad by this many pixels, then crop 28x28 at a random offset")
    erase_prob: float = option(0.0, "augment: probability of erasing a random rectangle of each training image")
    mixup: float | None = option(0.0, "mixup: blend pairs of training images and their labels with a weight drawn "
                                      "from Beta(a, a); 0 is off (--loss ce)", metavar="ALPHA")
    cutmix: float | None = option(0.0, "cutmix: paste a box of one training image into another, labels mixed by "
                                       "area, box size from Beta(a, a); 0 is off; with --mixup, one of the two per "
                                       "batch (--loss ce)", metavar="ALPHA")
    tta_flip: bool = option(False, "evaluate each validation and test image and its mirror image, averaging logits")
    tta_shift: bool = option(False, "after training, also evaluate each test image moved by one pixel in each of "
                                    "the eight directions (each mirrored too with --tta-flip), averaging logits: "
                                    "the test, the calibration and every command that uses the model; each "
                                    "epoch's validation stays as it is (the views would multiply its cost)")
    calibrate: bool = option(True, "after training, fit a temperature on the validation split that makes the "
                                   "probabilities honest (temperature scaling); predict, serve and export apply it")
    ema: float | None = option(None, "keep an exponential moving average of the weights with this decay (e.g. "
                                     "0.999): validation, best.pt, evaluate, predict and export use it",
                               metavar="DECAY")
    clip_grad_norm: float | None = option(None, "clip the gradients' total norm to this before each step",
                                          metavar="NORM")
    amp: str = option("auto", "mixed precision for training: none; auto (bf16 where the CPU has bf16 matrix "
                              "instructions, AVX-512 BF16 or AMX, or the GPU supports it; none elsewhere); bf16 "
                              "(autocast: slower on CPUs without those instructions; see BENCHMARKS.md); fp16 (CUDA "
                              "only, with a gradient scaler)")
    compile: bool = option(False, "torch.compile the model (trains at about half the speed on the lab's 2-core CPU; "
                                  "for GPUs)")
    deterministic: bool = option(True, "deterministic algorithms, cuDNN included: the same seed repeats the run; "
                                       "--no-deterministic lets cuDNN pick the fastest (GPU speed, not repeatable)")
    tf32: bool | None = option(True, "on CUDA GPUs of compute capability 8.0 and later: float32 matrix products and "
                                     "convolutions in TF32 (a 10-bit mantissa, several times faster); --no-tf32 "
                                     "keeps full float32 (--device cuda or auto)")
    pretrained: str | None = option(None, "resnet18: ImageNet weights from PATH, or torchvision's cache if no PATH",
                                    metavar="PATH")
    sync_bn: bool | None = option(False, "under torchrun on CUDA: BatchNorm statistics over the whole global batch "
                                         "(SyncBatchNorm) instead of each process's slice (BatchNorm models)")
    val_size: int = option(VAL_SIZE, "training images held out for validation")
    split_seed: int = option(SPLIT_SEED, "seed of the validation split (independent of --seed)")
    seed: int = option(42, "seed for weights, dropout, augmentation and batch order")
    device: str = option("auto", "one of " + ", ".join(DEVICES) + " (auto: CUDA, then MPS, then the CPU)")
    eval_batch_size: int = option(EVAL_BATCH_SIZE, "batch size for validation and test")
    limit_batches: int | None = option(None, "stop each training epoch after this many batches (smoke tests)")
    data_dir: str | None = option(None, "folder holding the four IDX files (default: searched, see `fmnist data info`)")
    allow_unverified_data: bool = option(False, "train on IDX files that are not the official Fashion-MNIST "
                                                "(generated or modified data); the run records it")
    out: str = option("runs", "folder for run folders")
    name: str | None = option(None, "run folder name (default: time and model)")
    report: bool = option(True, "after the test, write report.md and its figures into the run folder (about two "
                                "seconds); --no-report leaves them out, for sweeps and searches of many short runs: "
                                "`fmnist report RUN_DIR` writes them later")
    tensorboard: bool = option(False, "also write TensorBoard event files into RUN_DIR/tensorboard "
                                      "(pip install -e '.[tensorboard]')")
    mlflow: str | None = option(None, "also log to MLflow: the config, every epoch's metrics, the test figures, "
                                      "report.md and the figures (unless --no-report); a tracking URI "
                                      "(http://HOST:PORT, file:PATH, sqlite:///FILE) or, bare, the store MLflow "
                                      "itself would use "
                                      "(MLFLOW_TRACKING_URI, else its local store) (pip install -e '.[mlflow]')",
                                metavar="URI")
    mlflow_experiment: str | None = option(None, "the MLflow experiment (--mlflow); none given: "
                                                 "MLFLOW_EXPERIMENT_NAME, else fmnist; a sweep's runs: sweep NAME, a "
                                                 "study's trials: tune STUDY", metavar="NAME")

    # The options given explicitly (not from a recipe or the defaults); replace() starts from them.
    given: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)

    def __new__(cls, *args, **options):
        """Refuse positional or unknown options with a ConfigError (the generated __init__ raises a bare TypeError)."""
        if args:
            positional = ", ".join(map(repr, args))
            raise ConfigError(f"TrainConfig({positional}): give options by name, e.g. TrainConfig(recipe='fast')")
        check_option_names(options)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        given = {f.name: getattr(self, f.name) for f in fields(self) if f.init and getattr(self, f.name) is not UNSET}
        for name, value in given.items():
            given[name] = check_type(name, value)
        values = {f.name: f.metadata["default"] for f in fields(self) if f.init}
        if given.get("recipe") is not None:
            values.update(get_recipe(given["recipe"]).overrides)
        values.update(given)
        check_ranges(SimpleNamespace(**values), set(given))
        resolve_onecycle_peak(values, given)
        for name, (applies, why_not) in CONDITIONAL.items():
            if applies(SimpleNamespace(**values)):
                continue
            if name in given:
                raise invalid(name, given[name], f"ignored by these settings: {why_not()}")
            values[name] = None  # a recipe's value the chosen settings do not use
        for name, value in values.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "given", frozenset(given))

    @classmethod
    def from_recipe(cls, recipe: str, **overrides) -> TrainConfig:
        """The named recipe (see list_recipes()), then `overrides`, e.g. from_recipe("fast", epochs=3, name="try")."""
        return cls(recipe=recipe, **overrides)

    @classmethod
    def from_saved(cls, saved: dict) -> TrainConfig:
        """The config of a run as its config.json or a checkpoint recorded it.

        Keys that another version of fmnist wrote are left out, and so are values for options the
        run's settings do not use (older versions recorded those too).
        """
        if not isinstance(saved, dict):
            raise ConfigError(f"a saved config must be a table of options, not {type(saved).__name__}")
        values = {name: value for name, value in saved.items() if name in FIELDS and value is not None}
        settings = SimpleNamespace(**{**{name: f.metadata["default"] for name, f in FIELDS.items()}, **values})
        for name, (applies, _) in CONDITIONAL.items():
            try:
                used = applies(settings)
            except TypeError:  # a value of the wrong type: the config itself will say which
                used = True
            if not used:
                values.pop(name, None)
        if settings.scheduler == "onecycle" and "max_lr" in values:
            values.pop("lr", None)  # the peak is max_lr; older versions recorded an unused lr beside it
        return cls(**values)

    def replace(self, **changes) -> TrainConfig:
        """A copy with `changes`, resolved again from the options given so far.

        Unlike dataclasses.replace, values that only followed from other choices are recomputed:
        TrainConfig().replace(scheduler="cosine") gets the default `lr` that OneCycle did not use.
        """
        kept = {name: getattr(self, name) for name in self.given}
        if any(changes.get(name) is not None for name in PEAK_NAMES):  # a new rate replaces the old, by either name
            kept = {name: value for name, value in kept.items() if name not in PEAK_NAMES}
        return TrainConfig(**{**kept, **changes})

    def to_dict(self) -> dict:
        """Every option, as config.json and checkpoints record it (None: not used by these settings)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    def check_files(self) -> None:
        """Options naming files that must exist before any work starts (said before the data is loaded)."""
        if self.pretrained is not None:
            from fmnist.models.resnet import resolve_weights_file

            resolve_weights_file(self.pretrained)


FIELDS = {f.name: f for f in fields(TrainConfig) if f.init}
# Under OneCycle, `lr` is the peak rate (fastai's fit_one_cycle takes the peak too) and `max_lr` its older
# name, kept so that recipes, TOML files, sweeps and recorded runs go on meaning what they meant.
PEAK_NAMES = ("lr", "max_lr")


def resolve_onecycle_peak(values: dict, given: dict) -> None:
    """Under OneCycle, both `lr` and `max_lr` hold the peak: the one given, else the recipe's or the default."""
    if values["scheduler"] != "onecycle":
        return
    if "lr" in given and "max_lr" in given and given["lr"] != given["max_lr"]:
        raise ConfigError(f"{argument('lr', given['lr'])} and {argument('max_lr', given['max_lr'])}: both are "
                          "OneCycle's peak rate; give one of them", "lr")
    peak = values["lr"] if "lr" in given else values["max_lr"]
    values["lr"] = values["max_lr"] = peak


def check_option_names(options: dict) -> None:
    """A ConfigError for the first keyword that is not an option, suggesting the closest valid one."""
    check_names(options, FIELDS, "TrainConfig", "option")


def flag(name: str) -> str:
    return option_flag(name)


def declared_type(name: str) -> str:
    """'int', 'float', 'bool' or 'str' for a field (its annotation, without '| None')."""
    annotation = str(FIELDS[name].type)
    for kind in ("bool", "int", "float"):
        if kind in annotation:
            return kind
    return "str"


def check_type(name: str, value):
    """A typed value (Python, TOML) checked against the field's type; ints are accepted as floats."""
    kind = declared_type(name)
    if kind == "float":
        return check_number(value, name, CONFIG)
    return check_instance(value, {"bool": bool, "int": int, "str": str}[kind], name, CONFIG, f"of type {kind}")


TRUE_WORDS = ("true", "yes", "on", "1")
FALSE_WORDS = ("false", "no", "off", "0")


def parse_text(name: str, text: str):
    """An option's value from text (a CLI flag, `sweep --set`): 'none' for optional fields."""
    check_option_names({name: text})
    kind = declared_type(name)
    if text.strip().lower() == "none" and "None" in str(FIELDS[name].type):
        return None
    try:
        if kind == "bool":
            if text.strip().lower() not in TRUE_WORDS + FALSE_WORDS:
                raise ValueError
            return text.strip().lower() in TRUE_WORDS
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise invalid(name, text, f"not a valid {kind}") from None
    return text


def check_ranges(config: SimpleNamespace, given: set[str]) -> None:
    """Raise ConfigError naming the option for the first out-of-range value."""

    def require(condition: bool, name: str, rule: str) -> None:
        if not condition:
            raise invalid(name, getattr(config, name), rule)

    for name in FIELDS:
        value = getattr(config, name)
        if isinstance(value, float):  # `lr=inf` passes `> 0` but would train on NaN
            require(math.isfinite(value), name, "must be a finite number")
        elif isinstance(value, int) and not isinstance(value, bool) and name not in ("seed", "split_seed"):
            require(value <= MAX_COUNT, name, "must be at most 2**63-1")  # torch counts in 64-bit integers
    models = list_models()
    require(config.model in models, "model", f"unknown model; choose one of {', '.join(models)}")
    require(config.epochs >= 1, "epochs", "must be at least 1")
    if config.time_budget is not None:
        try:
            parse_time_budget(config.time_budget)
        except ValueError as error:
            raise invalid("time_budget", config.time_budget, str(error)) from None
    require(config.patience is None or config.patience >= 1, "patience", "must be at least 1 (epochs)")
    if config.patience is not None and config.time_budget is None and config.patience > config.epochs - 2:
        advice = (f"give at most {config.epochs - 2}, or more {named('epochs')}" if config.epochs >= 3 else
                  f"early stopping needs {setting('epochs', 3)} or more")
        require(False, "patience", f"with {setting('epochs', config.epochs)} it could never stop before the last "
                                   "epoch (the first epoch sets the mark, then that many epochs without an "
                                   f"improvement); {advice}")
    require(0 <= config.min_delta < 1, "min_delta", "must be in [0, 1) (accuracy is a fraction)")
    require(config.batch_size >= 1, "batch_size", "must be at least 1")
    require(config.eval_batch_size >= 1, "eval_batch_size", "must be at least 1")
    require(config.optimizer in OPTIMIZERS, "optimizer", f"choose one of {', '.join(OPTIMIZERS)}")
    require(config.scheduler in SCHEDULERS, "scheduler", f"choose one of {', '.join(SCHEDULERS)}")
    require(config.loss in LOSSES, "loss", f"choose one of {', '.join(LOSSES)}")
    require(config.lr > 0, "lr", "must be greater than 0")
    require(config.max_lr > 0, "max_lr", "must be greater than 0")
    require(config.weight_decay >= 0, "weight_decay", "must be 0 or more")
    require(0 <= config.momentum < 1, "momentum", "must be in [0, 1)")
    require(not (config.nesterov and config.optimizer == "sgd" and config.scheduler != "onecycle")
            or config.momentum > 0, "nesterov", f"needs {named('momentum')} greater than 0")
    require(config.step_size >= 1, "step_size", "must be at least 1")
    require(0 < config.gamma <= 1, "gamma", "must be in (0, 1]")
    require(0 <= config.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
    require(config.focal_gamma >= 0, "focal_gamma", "must be 0 or more (0 with alpha 1 is cross-entropy)")
    require(config.focal_alpha > 0, "focal_alpha", "must be greater than 0")
    require(0 <= config.mean <= 1, "mean", "must be in [0, 1] (the 0..1 pixel scale)")
    require(config.std > 0, "std", "must be greater than 0")
    require(0 <= config.rotate_degrees <= 180, "rotate_degrees", "must be in [0, 180]")
    require(0 <= config.crop_padding <= 14, "crop_padding", "must be in 0..14 pixels")
    require(0 <= config.erase_prob <= 1, "erase_prob", "must be in [0, 1]")
    require(config.mixup >= 0, "mixup", "must be 0 (off) or more")
    require(config.cutmix >= 0, "cutmix", "must be 0 (off) or more")
    require(config.ema is None or 0 < config.ema < 1, "ema", "must be in (0, 1), e.g. 0.999")
    require(config.clip_grad_norm is None or config.clip_grad_norm > 0, "clip_grad_norm", "must be greater than 0")
    require(config.amp in AMP_MODES, "amp", f"choose one of {', '.join(AMP_MODES)}")
    require(config.amp != "fp16" or config.device in ("cuda", "auto"), "amp", f"fp16 needs {setting('device', 'cuda')}")
    require(config.val_size >= 1, "val_size", "must be at least 1: model selection needs a validation split")
    require(config.device in DEVICES, "device", f"choose one of {', '.join(DEVICES)}")
    require(config.limit_batches is None or config.limit_batches >= 1, "limit_batches", "must be at least 1")
    require(0 <= config.seed <= MAX_SEED, "seed", "must be in 0..2**64-1")
    require(0 <= config.split_seed <= MAX_SEED, "split_seed", "must be in 0..2**64-1")
    for name in ("mlflow", "mlflow_experiment"):
        value = getattr(config, name)
        require(value is None or (value.strip() != "" and value.isprintable()), name,
                f"must not be empty (bare {named('mlflow')} is MLflow's own default store)" if name == "mlflow" else
                "must be a non-empty name")
    for name in ("out", "name", "data_dir", "pretrained"):
        value = getattr(config, name)
        require(value is None or (value.strip() != "" and "\0" not in value), name, "must be a non-empty path")
    require(config.name is None or "/" not in config.name and config.name not in (".", ".."), "name",
            f"must be a folder name, not a path (the parent folder is {named('out')})")


def load_toml_file(path: Path, option: str) -> dict:
    """A TOML file's tables as a dict; an unreadable, non-UTF-8 or malformed file is one line naming `option`."""
    try:
        return tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as error:
        raise ConfigError(f"{option} {path}: cannot read ({error.strerror or error}); check the path") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{option} {path}: not UTF-8 text; save it as UTF-8 (TOML files must be)") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{option} {path}: not valid TOML ({error})") from None


def read_toml(path: str | Path) -> dict:
    """A config file's options, type-checked; an unknown key is an error (a typo must not be ignored)."""
    path = Path(path)
    raw = load_toml_file(path, "--config")
    unknown = sorted(set(raw) - set(FIELDS))
    if unknown:
        raise ConfigError(f"--config {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(FIELDS)}")
    try:
        return {name: check_type(name, value) for name, value in raw.items()}
    except ConfigError as error:
        raise in_file(path, error) from None


def in_file(path: str | Path, error: ConfigError) -> ConfigError:
    """An option's error as the config file has it: `--config run.toml: lr = -1.0: must be greater than 0`."""
    if error.rule is None:
        return ConfigError(f"--config {path}: {error}", error.field)
    return ConfigError(f"--config {path}: {error.field} = {in_toml(error.value)}: {error.rule}", error.field,
                       value=error.value, rule=error.rule)


def build_config(config_file: str | Path | None = None, overrides: dict | None = None) -> TrainConfig:
    """The recipe, then the TOML file, then explicit overrides (CLI flags; None = not given)."""
    from_file = read_toml(config_file) if config_file else {}
    if any((overrides or {}).get(name) is not None for name in PEAK_NAMES):  # a flag's rate wins over the file's
        from_file = {name: value for name, value in from_file.items() if name not in PEAK_NAMES}
    values = {**from_file, **{key: value for key, value in (overrides or {}).items() if value is not None}}
    try:
        return TrainConfig(**values)
    except ConfigError as error:
        if error.field in from_file and (overrides or {}).get(error.field) is None:
            raise in_file(config_file, error) from None
        raise
