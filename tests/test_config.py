"""The typed config: defaults are the custom-layer assignment's recipe; recipes, TOML and flags override
it; bad values and options the settings would ignore are refused, naming the option."""

from __future__ import annotations

import json

import pytest

from fmnist.arguments import command_line_spelling
from fmnist.cli.main import main
from fmnist.errors import ConfigError
from fmnist.training.config import TrainConfig, build_config


def test_defaults_are_the_custom_layer_assignments_recipe():
    config = TrainConfig()
    assert (config.model, config.optimizer, config.weight_decay, config.scheduler) == (
        "affine-cnn", "adamw", 0.01, "onecycle")
    assert (config.max_lr, config.batch_size, config.epochs, config.seed) == (0.01, 64, 3, 42)
    assert config.lr == config.max_lr == 0.01  # under OneCycle, --lr is the peak and --max-lr its other name
    # Options these settings do not use hold None, so config.json shows what was used.
    assert (config.momentum, config.nesterov, config.step_size, config.gamma) == (None,) * 4
    assert (config.focal_gamma, config.focal_alpha, config.label_smoothing) == (None, None, 0.0)


def test_a_recipe_given_to_the_config_is_applied():
    """TrainConfig(recipe=...) used to be a label only; it now means the recipe."""
    assert TrainConfig(recipe="fast") == TrainConfig.from_recipe("fast")
    config = TrainConfig.from_recipe("fast", epochs=2, name="mine")
    assert (config.model, config.optimizer, config.max_lr, config.epochs, config.name) == (
        "fast-cnn", "sgd", 0.2, 2, "mine")
    assert config.given == {"recipe", "epochs", "name"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"lr": -1.0}, "TrainConfig(lr=-1.0): must be greater than 0"),
        ({"epochs": 0}, "TrainConfig(epochs=0): must be at least 1"),
        ({"epochs": "3"}, "TrainConfig(epochs='3'): should be of type int"),
        ({"hflip": 1}, "TrainConfig(hflip=1): should be of type bool"),
        ({"model": "nope"}, "unknown model"),
        ({"recipe": "nope"}, "unknown recipe"),
        ({"seed": 2**64}, "TrainConfig(seed="),
        ({"name": "a/b"}, "TrainConfig(name='a/b'): must be a folder name"),
    ],
)
def test_the_library_path_validates_too(options, message):
    """Python names the option as Python takes it: TrainConfig(lr=-1.0), not --lr -1.0."""
    with pytest.raises(ConfigError) as raised:
        TrainConfig(**options)
    assert message in str(raised.value) and "--" not in str(raised.value)


def test_replace_resolves_again():
    cosine = TrainConfig().replace(scheduler="cosine")
    assert cosine.lr == 1e-3 and cosine.max_lr is None
    assert cosine.replace(scheduler="onecycle") == TrainConfig()
    assert TrainConfig.from_recipe("fast").replace(optimizer="adam").momentum is None


def test_a_saved_config_loads_also_from_older_versions():
    """fmnist 0.1 recorded every option, used or not (lr 0.001 under OneCycle)."""
    old = {**TrainConfig().to_dict(), "lr": 1e-3, "momentum": 0.9, "gamma": 0.7, "added_later": 1}
    assert TrainConfig.from_saved(old) == TrainConfig()
    assert TrainConfig.from_saved(json.loads(json.dumps(TrainConfig.from_recipe("best").to_dict()))) == (
        TrainConfig.from_recipe("best"))


def test_toml_then_flags_override(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('epochs = 5\nlr = 1\noptimizer = "sgd"\nnesterov = true\nscheduler = "cosine"\n')
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
        ({"scheduler": "exponential"}, "choose one of onecycle"),
        ({"label_smoothing": 1.0}, "--label-smoothing"),
        ({"device": "tpu"}, "--device"),
        ({"val_size": 0}, "--val-size"),
    ],
)
def test_bad_values_name_the_option(overrides, message):
    """build_config is the command's: inside it, options are named as flags."""
    with command_line_spelling(), pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        build_config(None, overrides)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("epochs = ", "not valid TOML"),
        ("epoch = 3", "unknown key"),
        ('epochs = "three"', "should be of type int"),
        ("max_lr = true", "should be of type float"),
    ],
)
def test_bad_config_files(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        build_config(str(path))


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "notepad.toml"
    path.write_bytes("epochs = 2\n".encode("utf-16"))
    with pytest.raises(ConfigError, match="not UTF-8"):
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


# Each pair: an option, and settings under which it would have no effect; then what the error names.
IGNORED = [
    ({"max_lr": 0.1}, {"scheduler": "cosine"}, "--lr"),
    ({"max_lr": 0.1}, {"scheduler": "steplr"}, "--lr"),
    ({"momentum": 0.5}, {"optimizer": "adam"}, "--optimizer sgd"),
    ({"momentum": 0.5}, {"optimizer": "adamw"}, "--optimizer sgd"),
    ({"momentum": 0.5}, {"optimizer": "sgd"}, "--scheduler onecycle sets it itself"),  # OneCycle cycles it
    ({"nesterov": True}, {"optimizer": "adam"}, "--optimizer sgd"),
    ({"step_size": 2}, {"scheduler": "cosine"}, "--scheduler steplr"),
    ({"gamma": 0.5}, {"scheduler": "onecycle"}, "--scheduler steplr"),
    ({"focal_gamma": 1.0}, {}, "--loss focal"),
    ({"focal_alpha": 0.5}, {}, "--loss focal"),
    ({"label_smoothing": 0.1}, {"loss": "focal"}, "--loss ce"),
    ({"pretrained": "weights.pt"}, {"model": "lenet"}, "--model resnet18"),
]


def in_python(applies: str) -> str:
    """The command line's `--optimizer sgd` as Python's `optimizer='sgd'`, `--max-lr` as `max_lr`."""
    flag, _, value = applies.partition(" ")
    name = flag[2:].replace("-", "_")
    word, _, rest = value.partition(" ")
    return f"{name}={word!r}" + (f" {rest}" if rest else "") if value else name


def flags(options: dict) -> list[str]:
    arguments = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        arguments += [flag] if value is True else [flag, str(value)]
    return arguments


@pytest.mark.parametrize(("option", "settings", "applies"), IGNORED)
def test_an_ignored_option_is_refused_in_python(option, settings, applies):
    (name, value), = option.items()
    with pytest.raises(ConfigError) as raised:
        TrainConfig(**settings, **option)
    message = str(raised.value)
    assert message.startswith(f"TrainConfig({name}={value!r}): ignored by these settings")
    assert in_python(applies) in message and "--" not in message


@pytest.mark.parametrize(("option", "settings", "applies"), IGNORED)
def test_an_ignored_option_is_refused_by_train(option, settings, applies, tmp_path, capsys):
    assert main(["train", *flags(settings), *flags(option), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and applies in err and "--" + next(iter(option)).replace("_", "-") in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize(("option", "settings", "applies"), IGNORED)
def test_an_ignored_option_is_refused_in_a_config_file(option, settings, applies, tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in {**settings, **option}.items()))
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and applies in err and str(path) in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("text", "quoted"), [
    ('device = "cpu"\ntf32 = false\n', "tf32 = false: ignored by these settings"),
    ('optimizer = "adam"\nnesterov = true\n', "nesterov = true: ignored by these settings"),
    ('optimizer = "rmsprop"\n', 'optimizer = "rmsprop": '),
    ("lr = -1.0\n", "lr = -1.0: "),
])
def test_a_config_files_value_is_quoted_as_the_file_spells_it(text, quoted, tmp_path, capsys):
    """`tf32 = False` is not TOML: the line quotes what the user can type back into the file."""
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--config {path}: {quoted}" in err, err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("option", "settings", "applies"), IGNORED)
def test_an_ignored_option_is_refused_by_sweep_before_anything_trains(option, settings, applies, tmp_path, capsys):
    (name, value), = option.items()
    text = str(value).lower() if isinstance(value, bool) else str(value)
    status = main(["sweep", *flags(settings), "--set", f"{name}={text}", "--out", str(tmp_path), "--name", "s"])
    assert status == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and applies in err
    assert not (tmp_path / "s").exists()


def test_an_option_that_a_recipe_makes_useless_is_dropped_not_refused():
    """--optimizer adam on the `fast` recipe: the recipe's SGD momentum simply no longer applies."""
    config = TrainConfig.from_recipe("fast", optimizer="adam")
    assert config.momentum is None and config.nesterov is None


# The learning rate under OneCycle (issue 30): --lr is the peak, as fastai's fit_one_cycle takes it,
# and --max-lr its older name, so that recipes, TOML files, sweeps and recorded runs keep their meaning.
@pytest.mark.parametrize("name", ["lr", "max_lr"])
@pytest.mark.parametrize("recipe", [None, "fast", "lenet-aug"])
def test_under_onecycle_either_name_sets_the_peak(name, recipe):
    config = TrainConfig(recipe=recipe, scheduler="onecycle", **{name: 3e-4})
    assert config.lr == config.max_lr == 3e-4


def test_two_different_peaks_are_refused_and_the_same_one_is_not():
    with pytest.raises(ConfigError,
                       match=r"TrainConfig\(lr=0.01\) and TrainConfig\(max_lr=0.02\): both are OneCycle's peak"):
        TrainConfig(lr=0.01, max_lr=0.02)
    assert TrainConfig(lr=0.02, max_lr=0.02) == TrainConfig(max_lr=0.02)


def test_without_a_rate_each_schedule_takes_its_default_or_the_recipes():
    assert TrainConfig().lr == 0.01 and TrainConfig(scheduler="cosine").lr == 1e-3
    assert TrainConfig(recipe="fast").lr == 0.2 and TrainConfig(recipe="lenet-aug", scheduler="onecycle").lr == 0.01


def test_replace_takes_a_new_rate_by_either_name():
    assert TrainConfig(max_lr=0.05).replace(lr=0.02).max_lr == 0.02
    assert TrainConfig(lr=0.05).replace(max_lr=0.02).lr == 0.02
    assert TrainConfig(lr=0.05).replace(scheduler="cosine").lr == 0.05  # the starting rate now
    with pytest.raises(ConfigError, match=r"TrainConfig\(max_lr=0.05\): ignored .* give lr instead"):
        TrainConfig(max_lr=0.05).replace(scheduler="cosine")


@pytest.mark.parametrize(("in_file", "flag"), [("max_lr", "lr"), ("lr", "max_lr"), ("lr", "lr")])
def test_a_flags_rate_wins_over_the_files_by_either_name(tmp_path, in_file, flag):
    path = tmp_path / "run.toml"
    path.write_text(f"{in_file} = 0.05\n")
    assert build_config(str(path), {flag: 0.02}).max_lr == 0.02


@pytest.mark.parametrize("recipe", ["affine-onecycle", "fast", "quick", "top"])
def test_recorded_onecycle_runs_load_with_the_same_peak(recipe):
    """config.json before issue 30 held lr None (or, before that, an unused lr 0.001) beside max_lr."""
    config = TrainConfig.from_recipe(recipe)
    for recorded_lr in (None, 1e-3):
        saved = {**config.to_dict(), "lr": recorded_lr}
        loaded = TrainConfig.from_saved(json.loads(json.dumps(saved)))
        assert loaded.max_lr == loaded.lr == config.max_lr
        assert {**loaded.to_dict(), "lr": None} == {**config.to_dict(), "lr": None}


def test_fmnist_train_lr_is_onecycles_peak():
    config = build_config(None, {"lr": 0.03})
    assert (config.scheduler, config.max_lr) == ("onecycle", 0.03)
