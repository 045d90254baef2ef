"""One typed training config: defaults here, overridden by a TOML file, then by CLI flags."""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fmnist.data import MEAN, STD
from fmnist.errors import ConfigError
from fmnist.losses import LOSSES

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("onecycle", "steplr", "cosine", "none")
DEVICES = ("auto", "cpu", "cuda", "mps")
# Small enough for a batch's activations to stay in the CPU cache: 3x faster than 1,000 (BENCHMARKS.md).
EVAL_BATCH_SIZE = 256


@dataclass
class TrainConfig:
    """Everything that defines a training run. The defaults are seed 000's recipe."""

    recipe: str | None = None  # a named recipe whose values replace these defaults
    model: str = "affine-cnn"
    epochs: int = 3
    batch_size: int = 64
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    scheduler: str = "onecycle"
    max_lr: float = 0.01  # OneCycle's peak; it starts at max_lr / 25 whatever `lr` says
    step_size: int = 1  # StepLR: epochs between decays
    gamma: float = 0.7  # StepLR: decay factor
    label_smoothing: float = 0.0
    loss: str = "ce"
    focal_gamma: float = 2.0  # focal loss: how strongly confident, correct images are down-weighted
    focal_alpha: float = 1.0  # focal loss: overall weight
    mean: float = MEAN  # input normalization
    std: float = STD
    # Training-time augmentation, each drawn afresh per image; all off by default (the fast path).
    rotate_degrees: float = 0.0
    hflip: bool = False
    crop_padding: int = 0
    erase_prob: float = 0.0
    tta_flip: bool = False  # evaluation also sees each image mirrored and averages the two logits
    pretrained: str | None = None  # resnet18: ImageNet weights from a file, or "torchvision" (its cache)
    val_size: int = 5000
    split_seed: int = 0  # fixes the validation split independently of `seed`
    seed: int = 42
    device: str = "auto"
    eval_batch_size: int = EVAL_BATCH_SIZE
    limit_batches: int | None = None  # cut each training epoch short (smoke tests)
    data_dir: str | None = None
    out: str = "runs"
    name: str | None = None
    tensorboard: bool = False  # also log to TensorBoard (optional extra: pip install 'fmnist[tensorboard]')

    def validate(self) -> TrainConfig:
        """Raise ConfigError naming the option for the first out-of-range value."""
        from fmnist.models import PRETRAINED_MODELS, list_models  # late import: models import nothing from here

        def require(condition: bool, field: str, rule: str) -> None:
            if not condition:
                value = getattr(self, field)
                raise ConfigError(f"--{field.replace('_', '-')} {value!r}: {rule}")

        require(self.model in list_models(), "model", f"unknown model; choose one of {', '.join(list_models())}")
        require(self.epochs >= 1, "epochs", "must be at least 1")
        require(self.batch_size >= 1, "batch_size", "must be at least 1")
        require(self.eval_batch_size >= 1, "eval_batch_size", "must be at least 1")
        require(self.optimizer in OPTIMIZERS, "optimizer", f"choose one of {', '.join(OPTIMIZERS)}")
        require(self.lr > 0, "lr", "must be greater than 0")
        require(self.max_lr > 0, "max_lr", "must be greater than 0")
        require(self.weight_decay >= 0, "weight_decay", "must be 0 or more")
        require(0 <= self.momentum < 1, "momentum", "must be in [0, 1)")
        require(not self.nesterov or self.momentum > 0, "nesterov", "needs --momentum greater than 0")
        require(self.scheduler in SCHEDULERS, "scheduler", f"choose one of {', '.join(SCHEDULERS)}")
        require(self.step_size >= 1, "step_size", "must be at least 1")
        require(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        require(0 <= self.label_smoothing < 1, "label_smoothing", "must be in [0, 1)")
        require(self.loss in LOSSES, "loss", f"choose one of {', '.join(LOSSES)}")
        require(self.loss == "ce" or self.label_smoothing == 0, "label_smoothing", "applies to --loss ce only")
        require(self.focal_gamma >= 0, "focal_gamma", "must be 0 or more (0 with alpha 1 is cross-entropy)")
        require(self.focal_alpha > 0, "focal_alpha", "must be greater than 0")
        require(self.std > 0, "std", "must be greater than 0")
        require(0 <= self.rotate_degrees <= 180, "rotate_degrees", "must be in [0, 180]")
        require(0 <= self.crop_padding <= 14, "crop_padding", "must be in 0..14 pixels")
        require(0 <= self.erase_prob <= 1, "erase_prob", "must be in [0, 1]")
        require(
            self.pretrained is None or self.model in PRETRAINED_MODELS, "pretrained",
            f"only {', '.join(PRETRAINED_MODELS)} has pretrained weights (here --model {self.model})",
        )
        if self.pretrained is not None:
            from fmnist.models.resnet import resolve_weights_file

            resolve_weights_file(self.pretrained)  # a missing file is said now, before the data is loaded
        require(self.val_size >= 1, "val_size", "must be at least 1: model selection needs a validation split")
        require(self.device in DEVICES, "device", f"choose one of {', '.join(DEVICES)}")
        require(self.limit_batches is None or self.limit_batches >= 1, "limit_batches", "must be at least 1")
        require(0 <= self.mean <= 1, "mean", "must be in [0, 1] (the 0..1 pixel scale)")
        require(self.seed >= 0, "seed", "must be 0 or more")
        require(self.split_seed >= 0, "split_seed", "must be 0 or more")
        for field in fields(self):  # `--lr inf` passes `> 0` but would train on NaN
            value = getattr(self, field.name)
            if isinstance(value, float):
                require(math.isfinite(value), field.name, "must be a finite number")
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELD_TYPES = {field.name: field.type for field in fields(TrainConfig)}


def coerce(name: str, value, source: str):
    """Check a TOML value against the field's declared type (TOML already typed it)."""
    declared = FIELD_TYPES[name]
    if value is None:
        return value
    if "bool" in declared:
        ok = isinstance(value, bool)
    elif "int" in declared:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif "float" in declared:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(f"{source}: {name} = {value!r} should be of type {declared}")
    return value


def read_toml(path: str | Path) -> dict:
    """Read a config file's overrides, rejecting unknown keys (a typo must not be ignored)."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except OSError as error:
        raise ConfigError(f"--config {path}: cannot read ({error.strerror or error}); check the path") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"--config {path}: not valid TOML ({error})") from None
    unknown = sorted(set(raw) - set(FIELD_TYPES))
    if unknown:
        raise ConfigError(
            f"--config {path}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(FIELD_TYPES)}"
        )
    return {name: coerce(name, value, f"--config {path}") for name, value in raw.items()}


def build_config(config_file: str | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults, then the recipe, then the TOML file, then explicit overrides (CLI flags); validated."""
    from fmnist.recipes import get_recipe

    values: dict = {}
    if config_file:
        values.update(read_toml(config_file))
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    if values.get("recipe"):
        values = {**get_recipe(values["recipe"]).overrides, **values}
    return TrainConfig(**values).validate()
