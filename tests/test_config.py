"""The typed config: defaults are seed 000's recipe; TOML and flags override; bad values are caught."""

from __future__ import annotations

import pytest

from fmnist.config import TrainConfig, build_config
from fmnist.errors import ConfigError


def test_defaults_are_seed_000s_recipe():
    config = TrainConfig()
    assert (config.model, config.optimizer, config.lr, config.weight_decay) == ("affine-cnn", "adamw", 1e-3, 0.01)
    assert (config.scheduler, config.max_lr, config.batch_size, config.epochs, config.seed) == (
        "onecycle", 0.01, 64, 3, 42)


def test_toml_then_flags_override(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = 5\nlr = 1\noptimizer = "sgd"\nnesterov = true\n')
    config = build_config(str(path), {"epochs": 7, "batch_size": None})
    assert config.epochs == 7 and config.lr == 1.0 and config.optimizer == "sgd" and config.nesterov
    assert config.batch_size == 64


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"epochs": 0}, "--epochs 0: must be at least 1"),
        ({"lr": 0.0}, "--lr 0.0: must be greater than 0"),
        ({"lr": -1.0}, "--lr -1.0"),
        ({"batch_size": 0}, "--batch-size 0"),
        ({"model": "nope"}, "unknown model"),
        ({"optimizer": "rmsprop"}, "choose one of sgd, adam, adamw"),
        ({"scheduler": "linear"}, "choose one of onecycle"),
        ({"label_smoothing": 1.0}, "--label-smoothing"),
        ({"device": "tpu"}, "--device"),
        ({"val_size": 0}, "--val-size"),
    ],
)
def test_bad_values_name_the_option(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_config(None, overrides)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs = ", "not valid TOML"),
        ("epoch = 3", "unknown key"),
        ('epochs = "three"', "should be of type int"),
        ("lr = true", "should be of type float"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_config(str(path))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        build_config(str(tmp_path / "absent.toml"))


def test_recipe_then_file_then_flags(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("gamma = 0.5\n")
    config = build_config(str(path), {"recipe": "affine-steplr", "epochs": 1})
    assert config.scheduler == "steplr" and config.gamma == 0.5 and config.epochs == 1
    assert config.recipe == "affine-steplr"


def test_unknown_recipe_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="affine-onecycle"):
        build_config(None, {"recipe": "nope"})
