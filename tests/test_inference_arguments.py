"""Every argument of predict, load_model, evaluate_checkpoint, load_run, load_runs and a Run's methods
either works or is refused with an FmnistError (one line, naming what is wrong), and a refused call
leaves nothing behind: no folder, no file, the run folder as it was."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as numpy_strategies
from PIL import Image

import fmnist
from conftest import snapshot, train_tiny_run

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("arguments"), "run", limit_batches=2)


@pytest.fixture(scope="module")
def model(run_folder):
    return fmnist.load_model(run_folder)


def anything(run_folder: Path):
    """Values of every kind a caller might pass by mistake, and some right ones."""
    return st.one_of(
        st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12), st.binary(max_size=8), st.lists(st.integers(0, 255), max_size=4),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
        st.sampled_from([run_folder, str(run_folder), run_folder / "best.pt", run_folder / "missing",
                         run_folder / "metrics.csv", run_folder.parent, Path(""), "\x00", "cpu", "auto", "tpu",
                         object(), torch.zeros(3), np.zeros((2, 2)), [run_folder]]),
    )


def pixels():
    """Arrays of many shapes, dtypes and values: right ones among them."""
    shapes = st.sampled_from([(28, 28), (2, 28, 28), (2, 1, 28, 28), (2, 28, 28, 1), (28, 28, 1), (1, 28, 28),
                              (0, 28, 28), (0, 0), (2, 3, 28, 28), (28,), (2, 27, 28), (1, 1, 1, 1, 1)])
    dtypes = st.sampled_from([np.uint8, np.float32, np.float64, np.float16, np.int64, np.int8, np.bool_,
                              np.complex64])
    return st.tuples(shapes, dtypes).flatmap(lambda pair: numpy_strategies.arrays(pair[1], pair[0]))


def works_or_refuses(call, folder: Path) -> object | None:
    """Call; an FmnistError must be one line, and any failure must leave `folder` as it was."""
    before = snapshot(folder)
    try:
        return call()
    except fmnist.FmnistError as error:
        assert "\n" not in str(error) and str(error)
        return None
    finally:
        assert snapshot(folder) == before


@SETTINGS
@given(images=pixels(), as_torch=st.booleans())
def test_predict_takes_or_refuses_any_array(model, run_folder, images, as_torch):
    given_images = torch.from_numpy(images) if as_torch and images.dtype != np.complex64 else images
    result = works_or_refuses(lambda: fmnist.predict(model, given_images), run_folder.parent)
    if result is not None:
        finite = images.dtype == np.uint8 or (np.isfinite(images).all() and 0 <= images.min() and images.max() <= 1)
        assert finite and result.probabilities.shape == (len(result), 10)
        assert np.allclose(result.probabilities.sum(axis=1), 1, atol=1e-4)


@SETTINGS
@given(data=st.data())
def test_predict_takes_or_refuses_any_other_argument(model, run_folder, data):
    image = np.zeros((28, 28), dtype=np.uint8)
    arguments = {"model_or_run": model, "images_or_paths": image, "invert": True, "skip_unreadable": False,
                 "batch_size": 4}
    name = data.draw(st.sampled_from(sorted(arguments)))
    arguments[name] = data.draw(anything(run_folder))
    works_or_refuses(lambda: fmnist.predict(arguments.pop("model_or_run"), arguments.pop("images_or_paths"),
                                            **arguments), run_folder.parent)


def test_predict_refuses_an_empty_pil_image_and_names_each_bad_flag(model):
    with pytest.raises(fmnist.DataError, match="0x0 pixels"):
        fmnist.predict(model, Image.new("L", (0, 0)))
    for name in ("invert", "skip_unreadable"):
        with pytest.raises(fmnist.ConfigError, match=f"predict\\({name}=1\\)"):
            fmnist.predict(model, np.zeros((28, 28), dtype=np.uint8), **{name: 1})


@SETTINGS
@given(data=st.data())
def test_load_model_and_evaluate_checkpoint_take_or_refuse_any_argument(run_folder, data):
    which = data.draw(st.sampled_from(["load_model", "evaluate_checkpoint"]))
    if which == "load_model":
        arguments = {"source": run_folder, "device": "cpu"}
        call = fmnist.load_model
    else:
        arguments = {"checkpoint": run_folder, "data_dir": None, "device": "cpu", "batch_size": 64,
                     "allow_unverified_data": True}
        call = fmnist.evaluate_checkpoint
    name = data.draw(st.sampled_from(sorted(arguments)))
    arguments[name] = data.draw(anything(run_folder))
    works_or_refuses(lambda: call(**arguments), run_folder.parent)


@SETTINGS
@given(data=st.data())
def test_load_run_and_load_runs_take_or_refuse_any_path(run_folder, data):
    value = data.draw(st.one_of(anything(run_folder), st.lists(anything(run_folder), max_size=2)))
    loader = data.draw(st.sampled_from([fmnist.load_run, fmnist.load_runs]))
    works_or_refuses(lambda: loader(value), run_folder.parent)


@SETTINGS
@given(data=st.data())
def test_a_runs_methods_take_or_refuse_any_argument(run_folder, data):
    run = fmnist.load_run(run_folder)
    method = data.draw(st.sampled_from(["model", "evaluate", "predict", "history"]))
    value = data.draw(anything(run_folder))
    calls = {
        "model": lambda: run.model(value),
        "evaluate": lambda: run.evaluate(**{data.draw(st.sampled_from(
            ["which", "data_dir", "device", "batch_size", "allow_unverified_data"])): value}),
        "predict": lambda: run.predict(np.zeros((1, 28, 28), dtype=np.uint8), **{data.draw(st.sampled_from(
            ["which", "invert", "skip_unreadable", "batch_size"])): value}),
        "history": lambda: run.history[value] if isinstance(value, str) else None,
    }
    works_or_refuses(calls[method], run_folder.parent)


def test_nothing_is_created_where_a_missing_path_points(tmp_path):
    missing = tmp_path / "not-here"
    for call in (lambda: fmnist.load_run(missing), lambda: fmnist.load_runs(missing),
                 lambda: fmnist.load_model(missing), lambda: fmnist.evaluate_checkpoint(missing),
                 lambda: fmnist.predict(missing, np.zeros((28, 28), dtype=np.uint8))):
        with pytest.raises(fmnist.FmnistError):
            call()
    assert not missing.exists() and list(tmp_path.iterdir()) == []

