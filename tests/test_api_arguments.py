"""Every public function checks its arguments at the door (fmnist/arguments.py).

The property, over any argument (a wrong type, NaN, inf, a negative or huge number, an empty string,
a path that is a file, a misspelt keyword): the call either works, or raises an FmnistError in one
line that names the argument the way Python takes it (`TrainConfig(batch_size=0)`, `train(details=...)`),
and a call that fails leaves no file or folder behind. The CLI names the same mistakes by its flags.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fmnist
from conftest import write_dataset
from fmnist import (
    ArgumentTypeError,
    ConfigError,
    DataSplits,
    FmnistError,
    LearnedAffine,
    Optimization,
    Split,
    TensorLoader,
    TrainConfig,
    build_training,
    count_parameters,
    create_model,
    evaluate,
    fit,
    load_splits,
    normalize,
    register_model,
    resume,
    train,
    train_one_epoch,
)
from fmnist.arguments import MAX_COUNT, command_line_spelling
from fmnist.cli.main import main
from fmnist.models import registry
from fmnist.training.config import FIELDS

# Hypothesis reuses the function-scoped fixtures (the autouse environment, the working folder) across
# examples; each example makes its own temporary folders where it writes.
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

ANYTHING = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**63 - 2, max_value=2**70),
    st.integers(max_value=-1), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.just(""), st.just(" "), st.just("\0"), st.binary(max_size=4), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.just(object()), st.just(Path("x")),
    st.just(torch.zeros(2, 3)), st.just(float("nan")), st.just(10**400),
)


@pytest.fixture(autouse=True)
def in_a_scratch_folder(tmp_path, monkeypatch):
    """Defaults such as out="runs" land here, where the tests can see what a call left behind."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def restored_registry():
    """Models registered by a test are forgotten after it (the CLI's `fmnist models` builds them all)."""
    before = dict(registry._MODELS)
    yield
    registry._MODELS.clear()
    registry._MODELS.update(before)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("api-data"), train_count=60, test_count=20)


def works_or_names(call, *names: str):
    """Run `call`: it works, or raises a one-line FmnistError naming one of `names` (another exception fails
    the test). Returns the error, or None."""
    try:
        call()
    except FmnistError as error:
        message = str(error)
        assert "\n" not in message, message
        assert any(name in message for name in names), f"{message!r} names none of {names}"
        assert isinstance(error, ArgumentTypeError) == isinstance(error, TypeError)
        return error
    return None


def files_under(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


# TrainConfig: every field, any value.

@PROPERTY
@given(name=st.sampled_from(sorted(FIELDS)), value=ANYTHING)
def test_a_config_takes_a_value_or_names_the_option(name, value):
    error = works_or_names(lambda: TrainConfig(**{name: value}), f"TrainConfig({name}=")
    if error is not None:
        assert isinstance(error, ConfigError) and isinstance(error, ValueError) and error.field == name
        assert str(error).startswith(f"TrainConfig({name}="), "Python names options as Python takes them"


@PROPERTY
@given(name=st.text(min_size=1, max_size=12).filter(lambda text: text not in FIELDS), value=ANYTHING)
def test_an_unknown_option_is_named(name, value):
    error = works_or_names(lambda: TrainConfig(**{name: value}), f"TrainConfig({name}=...)", f"{{{name!r}: ...}}")
    assert error is not None and "unknown option" in str(error)


PLAUSIBLE = {
    "epochs": st.integers(-1, 3), "batch_size": st.integers(0, 3), "lr": st.floats(-1, 1), "momentum": st.floats(-1, 2),
    "nesterov": st.booleans(), "optimizer": st.sampled_from(["sgd", "adam", "rmsprop"]),
    "scheduler": st.sampled_from(["onecycle", "cosine", "steplr", "none", "x"]), "max_lr": st.floats(-1, 1),
    "loss": st.sampled_from(["ce", "focal"]), "label_smoothing": st.floats(-1, 2), "ema": st.floats(-1, 2),
    "amp": st.sampled_from(["auto", "fp16", "bf16", "none"]), "device": st.sampled_from(["cpu", "cuda", "tpu"]),
    "time_budget": st.sampled_from(["90s", "5m", "0s", "nan", "x", "1e999s"]), "gamma": st.floats(-1, 2),
    "model": st.sampled_from(["mlp", "resnet18", "nope"]), "pretrained": st.sampled_from(["w.pt", ""]),
    "sync_bn": st.booleans(), "mixup": st.floats(-1, 1),
}


@PROPERTY
@given(st.dictionaries(st.sampled_from(sorted(PLAUSIBLE)), st.integers(), min_size=2, max_size=3).flatmap(
    lambda keys: st.fixed_dictionaries({name: PLAUSIBLE[name] for name in keys})))
def test_settings_that_clash_name_one_of_the_options_given(options):
    works_or_names(lambda: TrainConfig(**options), *(f"TrainConfig({name}=" for name in options))


@PROPERTY
@given(recipe=ANYTHING, saved=ANYTHING)
def test_from_recipe_and_from_saved_name_what_is_wrong(recipe, saved):
    works_or_names(lambda: TrainConfig.from_recipe(recipe), "TrainConfig(recipe=")
    works_or_names(lambda: TrainConfig.from_saved(saved), "saved config", "TrainConfig(")


def test_the_command_line_names_the_same_mistake_by_its_flag(capsys):
    assert main(["train", "--batch-size", "0"]) == 2
    assert capsys.readouterr().err == "fmnist: error: --batch-size 0: must be at least 1\n"
    with pytest.raises(ConfigError, match=r"^TrainConfig\(batch_size=0\): must be at least 1$"):
        TrainConfig(batch_size=0)
    with command_line_spelling(), pytest.raises(ConfigError, match="^--batch-size 0: must be at least 1$"):
        TrainConfig(batch_size=0)


def test_a_config_file_and_sweep_set_name_the_key(tmp_path, capsys):
    config_file = tmp_path / "run.toml"
    config_file.write_text("lr = -1.0\nscheduler = 'cosine'\n")
    assert main(["train", "--config", str(config_file)]) == 2
    assert capsys.readouterr().err == f"fmnist: error: --config {config_file}: lr = -1.0: must be greater than 0\n"
    assert main(["sweep", "--set", "lr=abc", "--scheduler", "cosine"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fmnist: error: --set lr=abc:") and "not a valid float" in err and "TrainConfig" not in err
    assert not (tmp_path / "runs").exists()


def test_config_errors_are_also_the_builtin_errors_of_their_kind():
    """`except ValueError` and `except TypeError` keep catching what Python's own checks would raise."""
    with pytest.raises(ValueError):
        TrainConfig(epochs=0)
    with pytest.raises(TypeError):
        TrainConfig(epochs="3")
    with pytest.raises(TypeError):
        train("not a config")
    assert issubclass(ArgumentTypeError, ConfigError) and issubclass(ConfigError, FmnistError)


# train and resume: refused before anything is loaded or written.

@PROPERTY
@given(config=ANYTHING, progress=ANYTHING, details=ANYTHING, after_epoch=ANYTHING)
def test_train_refuses_bad_arguments_before_writing_anything(config, progress, details, after_epoch):
    with tempfile.TemporaryDirectory() as scratch:
        empty = Path(scratch) / "no-data"
        empty.mkdir()
        good = TrainConfig(data_dir=str(empty), out=str(Path(scratch) / "runs"), device="cpu")
        for arguments in ({"config": config}, {"config": good, "progress": progress},
                          {"config": good, "details": details}, {"config": good, "after_epoch": after_epoch}):
            error = works_or_names(lambda arguments=arguments: train(**arguments),
                                   *(f"train({name}=" for name in arguments), "no-data")
            assert error is not None  # never trains: the data folder is empty
            assert files_under(Path(scratch)) == {"no-data"}


@pytest.mark.parametrize(("details", "fragment"), [
    ("notes", "train(details='notes'): should be a dict"),
    ({1: "a"}, "its keys must be str"),
    ({"config": {}}, "'config' is a key train() records itself"),
    ({"when": object()}, "cannot be written as JSON"),
])
def test_bad_details_are_refused_before_the_data_are_loaded(tmp_path, data_dir, details, fragment):
    config = TrainConfig(data_dir=str(data_dir), allow_unverified_data=True, val_size=10, epochs=1, model="mlp",
                         out=str(tmp_path / "runs"), name="kept-free", device="cpu")
    with pytest.raises(ConfigError) as raised:
        train(config, details=details)
    assert fragment in str(raised.value)
    assert not (tmp_path / "runs").exists()


def test_a_taken_name_is_refused_before_the_data_are_loaded(tmp_path):
    (tmp_path / "runs" / "taken").mkdir(parents=True)
    config = TrainConfig(data_dir=str(tmp_path / "nowhere"), out=str(tmp_path / "runs"), name="taken")
    with pytest.raises(fmnist.CheckpointError, match="already exists; choose another name"):
        train(config)
    (tmp_path / "file").write_text("x")
    with pytest.raises(fmnist.CheckpointError, match=r"TrainConfig\(out='.*file'\): a file, not a folder"):
        train(config.replace(out=str(tmp_path / "file")))


@PROPERTY
@given(run_dir=ANYTHING, progress=ANYTHING, changes=st.dictionaries(
    st.one_of(st.sampled_from(sorted(FIELDS)), st.text(min_size=1, max_size=8)), ANYTHING, max_size=2))
def test_resume_names_the_argument_at_fault(run_dir, progress, changes):
    with tempfile.TemporaryDirectory() as scratch:
        before = files_under(Path(scratch))
        given = ["run_dir", "progress", *changes]
        # A keyword that is no Python name is shown as Python would have to pass it: resume(**{'0': ...}).
        error = works_or_names(lambda: resume(run_dir, progress=progress, **changes),
                               *(f"resume({name}=" if name.isidentifier() else f"resume(**{{{name!r}:"
                                 for name in given))
        assert error is not None  # there is no run to resume
        assert files_under(Path(scratch)) == before


def test_resume_refuses_a_file_a_number_and_a_misspelt_option(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(fmnist.CheckpointError, match=r"^resume\(run_dir='.*notes.txt'\): not a folder"):
        resume(tmp_path / "notes.txt")
    with pytest.raises(ArgumentTypeError, match=r"^resume\(run_dir=42\): should be a path"):
        resume(42)
    with pytest.raises(ConfigError, match=r"^resume\(devise=...\): unknown option; did you mean device\?"):
        resume(tmp_path, devise="cpu")


# Data: load_splits, Split, DataSplits, TensorLoader, normalize.

@PROPERTY
@given(data_dir=ANYTHING, val_size=ANYTHING, split_seed=ANYTHING, verify=ANYTHING, use_real_folder=st.booleans())
def test_load_splits_names_the_argument(data_dir, val_size, split_seed, verify, use_real_folder, data_dir_fixture):
    folder = data_dir_fixture if use_real_folder else data_dir
    assume(folder is not None)  # None searches for the real data set: slow, and not the point here
    names = [f"load_splits({name}=" for name in ("data_dir", "val_size", "split_seed", "verify")]
    error = works_or_names(lambda: load_splits(folder, val_size, split_seed, verify), *names, "IDX files",
                           "Fashion-MNIST", "not a folder", "missing")
    if error is not None and not isinstance(error, ConfigError):
        assert isinstance(error, fmnist.DataError)


@pytest.fixture(scope="module")
def data_dir_fixture(data_dir) -> Path:
    return data_dir


def test_load_splits_refuses_a_string_val_size_and_a_file(tmp_path, data_dir):
    with pytest.raises(ArgumentTypeError, match=r"^load_splits\(val_size='5000'\): should be of type int"):
        load_splits(data_dir, val_size="5000")
    with pytest.raises(ConfigError, match=r"^load_splits\(val_size=60\): must be less than the 60 training images"):
        load_splits(data_dir, val_size=60, verify=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(fmnist.DataError, match="not a folder"):
        load_splits(tmp_path / "file")


TENSORS = st.one_of(
    st.sampled_from([torch.uint8, torch.float32, torch.int64, torch.bool]).flatmap(
        lambda dtype: st.lists(st.integers(0, 4), min_size=0, max_size=4).map(
            lambda shape: torch.zeros(tuple(shape), dtype=dtype))),
    st.just(torch.zeros(5, 28, 28, dtype=torch.uint8)), ANYTHING,
)


@PROPERTY
@given(images=TENSORS, labels=TENSORS, device=ANYTHING, indices=TENSORS)
def test_a_split_checks_its_tensors(images, labels, device, indices):
    split = None

    def make():
        nonlocal split
        split = Split(images, labels)

    works_or_names(make, "Split(images=", "Split(labels=")
    good = Split(torch.zeros(5, 28, 28, dtype=torch.uint8), torch.arange(5))
    works_or_names(lambda: good.to(device), "Split.to(device=")
    works_or_names(lambda: good.subset(indices), "Split.subset(indices=")
    works_or_names(lambda: DataSplits(good, good, images, Path("."), True), "DataSplits(test=")


@PROPERTY
@given(images=TENSORS, mean=ANYTHING, std=ANYTHING)
def test_normalize_names_the_argument(images, mean, std):
    works_or_names(lambda: normalize(images, mean, std), *(f"normalize({name}=" for name in ("images", "mean", "std")))


@PROPERTY
@given(split=st.one_of(st.just("good"), ANYTHING), batch_size=st.one_of(st.integers(-2, 7), ANYTHING),
       shuffle=ANYTHING, seed=ANYTHING, mean=st.one_of(st.floats(-1, 2), ANYTHING), std=ANYTHING,
       augment=st.one_of(st.just(lambda images, generator: images), ANYTHING),
       limit_batches=st.one_of(st.integers(-1, 3), ANYTHING))
def test_a_loader_takes_its_arguments_or_names_them(split, batch_size, shuffle, seed, mean, std, augment,
                                                    limit_batches):
    good = Split(torch.randint(0, 256, (9, 28, 28), dtype=torch.uint8), torch.arange(9) % 10)
    names = ("split", "batch_size", "shuffle", "seed", "mean", "std", "augment", "limit_batches")
    loader = []

    def make_and_read():
        made = TensorLoader(good if split == "good" else split, batch_size, shuffle, seed, mean, std, augment,
                            limit_batches)
        loader.extend(made)

    if works_or_names(make_and_read, *(f"TensorLoader({name}=" for name in names)) is None:
        assert loader and all(images.shape[1:] == (1, 28, 28) for images, _ in loader)


# Models.

@PROPERTY
@given(name=st.one_of(st.sampled_from(["mlp", "fast-cnn", "nope"]), ANYTHING),
       kwargs=st.dictionaries(st.sampled_from(["num_classes", "width", "widths", "num_clases"]),
                              st.one_of(st.integers(-2, 12), ANYTHING), max_size=2))
def test_create_model_names_the_argument(name, kwargs):
    assume(not any(isinstance(value, int) and not isinstance(value, bool) and value > 10**6
                   for value in kwargs.values()))  # a network that big is memory, not an argument, to refuse
    works_or_names(lambda: create_model(name, **kwargs), "create_model(name=",
                   *(f"create_model({key}=" for key in kwargs), "create_model('")


@PROPERTY
@given(model=ANYTHING, num_features=st.one_of(st.integers(-2, 4), st.integers(min_value=2**63), ANYTHING.filter(
    lambda value: not isinstance(value, int) or isinstance(value, bool))), inputs=TENSORS)
def test_count_parameters_and_learned_affine_name_their_argument(model, num_features, inputs):
    works_or_names(lambda: count_parameters(model), "count_parameters(model=")
    works_or_names(lambda: LearnedAffine(num_features), "LearnedAffine(num_features=")
    works_or_names(lambda: LearnedAffine(3)(inputs), "LearnedAffine.forward(inputs=")


@PROPERTY
@given(name=st.one_of(st.text(max_size=6), ANYTHING), factory=st.one_of(st.just(lambda: torch.nn.Linear(1, 1)),
                                                                       ANYTHING))
def test_register_model_names_the_argument(name, factory, restored_registry):
    works_or_names(lambda: register_model(name)(factory), "register_model(name=", ").factory=", "(factory=")


def test_a_name_registered_twice_is_a_config_error_and_a_value_error(restored_registry):
    with pytest.raises(ValueError, match=r"register_model\(name='mlp'\): already registered"):
        register_model("mlp")


# The loop, piece by piece: build_training, Optimization, train_one_epoch, evaluate, fit.

def tiny_parts():
    model = create_model("mlp")
    optimization = Optimization(torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.01))
    batches = [(torch.randn(4, 1, 28, 28), torch.arange(4))]
    return model, optimization, batches


@PROPERTY
@given(config=st.one_of(st.just("good"), ANYTHING), split=st.one_of(st.just("good"), ANYTHING),
       total_steps=st.one_of(st.none(), st.integers(-1, 3), ANYTHING),
       amp=st.one_of(st.none(), st.sampled_from(["none", "auto", "fp16", "x"]), ANYTHING))
def test_build_training_names_the_argument(config, split, total_steps, amp):
    good = Split(torch.zeros(6, 28, 28, dtype=torch.uint8), torch.arange(6))
    chosen = TrainConfig(model="mlp", device="cpu") if config == "good" else config
    names = ("config", "train", "val", "test", "total_steps", "amp")
    works_or_names(lambda: build_training(chosen, good if split == "good" else split, good, good,
                                          total_steps=total_steps, amp=amp),
                   *(f"build_training({name}=" for name in names))


@PROPERTY
@given(loss_fn=ANYTHING, optimizer=ANYTHING, interval=ANYTHING, clip=ANYTHING)
def test_optimization_names_its_field(loss_fn, optimizer, interval, clip):
    model = create_model("mlp")
    works_or_names(lambda: Optimization(loss_fn, torch.optim.SGD(model.parameters(), lr=0.1)),
                   "Optimization(loss_fn=")
    works_or_names(lambda: Optimization(torch.nn.CrossEntropyLoss(), optimizer), "Optimization(optimizer=")
    works_or_names(lambda: Optimization(torch.nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                                        scheduler_interval=interval, clip_grad_norm=clip),
                   "Optimization(scheduler_interval=", "Optimization(clip_grad_norm=")


@settings(PROPERTY, max_examples=25)  # each example may train a batch and evaluate one
@given(which=st.sampled_from(["model", "batches", "optimization", "stop", "max_batches", "flip_tta", "shift_tta",
                              "epochs", "recorder", "last_epoch_steps", "a_batch"]), value=st.one_of(TENSORS, ANYTHING))
def test_the_loop_functions_name_their_argument(which, value):
    model, optimization, batches = tiny_parts()
    arguments = {"model": model, "batches": batches, "optimization": optimization}
    if which == "a_batch":
        arguments["batches"] = [value]
        which = "batches"
    elif which in arguments:
        arguments[which] = value
    one_epoch = {**arguments, **({which: value} if which in ("stop", "max_batches") else {})}
    works_or_names(lambda: train_one_epoch(**one_epoch), f"train_one_epoch({which}=")
    flip = value if which == "flip_tta" else False
    shift = value if which == "shift_tta" else False
    works_or_names(lambda: evaluate(arguments["model"], arguments["batches"], flip, shift), f"evaluate({which}=")
    extra = {which: value} if which in ("stop", "flip_tta", "recorder", "last_epoch_steps") else {}
    epochs = value if which == "epochs" else 1
    if type(epochs) is int and 2 < epochs <= MAX_COUNT:  # valid, and 2**62 epochs would never end: two do
        epochs = 2
    fit_name = "train_batches" if which == "batches" else which
    works_or_names(lambda: fit(arguments["model"], arguments["batches"], batches, arguments["optimization"],
                               epochs, **extra), f"fit({fit_name}=")


def test_a_model_without_parameters_and_a_batch_of_wrong_labels_are_named():
    _, optimization, batches = tiny_parts()
    with pytest.raises(ConfigError, match=r"^evaluate\(model=.*\): has no parameters"):
        evaluate(torch.nn.Identity(), batches)
    with pytest.raises(ConfigError, match=r"^evaluate\(batches=.*batch 1 is not an \(images, labels\) pair"):
        evaluate(create_model("mlp"), [(torch.randn(4, 1, 28, 28), torch.rand(4))])


def test_checks_leave_math_alone():
    """A sanity check of the helpers: finite numbers pass through as floats, ints as they are."""
    from fmnist.arguments import check_int, check_number

    assert check_number(3, "x", "f") == 3.0 and isinstance(check_number(3, "x", "f"), float)
    assert check_int(2**63 - 1, "x", "f") == 2**63 - 1
    with pytest.raises(ConfigError, match="must be a finite number"):
        check_number(math.inf, "x", "f")
