"""report_run, calibrate_run, compare_runs, export_onnx and find_lr: what `fmnist report`, `calibrate`,
`compare`, `export` and `lr-find` do, from `from fmnist import ...`. Each takes its arguments or refuses them
in one line that names the argument as Python spells it (`report_run(batch_size=0)`), while the command
names the same mistake by its option (`--sort nope`); a refused call leaves the runs as they were."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import fmnist
from conftest import fmnist_here, one_line, snapshot, train_tiny_run

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Two finished runs without reports (report=False), under one folder."""
    root = tmp_path_factory.mktemp("run-tools")
    train_tiny_run(root, "first", limit_batches=2)
    train_tiny_run(root, "second", limit_batches=3)
    return root / "runs"


@pytest.fixture
def run_copy(runs, tmp_path) -> Path:
    """A run of the test's own, to write into."""
    return Path(shutil.copytree(runs / "first", tmp_path / "copies" / "first"))


def refuses(call, match: str, kind: type = fmnist.FmnistError) -> str:
    with pytest.raises(kind) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message and match in message, message
    return message


def test_report_run_writes_the_report_of_a_run_trained_without_one(run_copy):
    assert not (run_copy / "report.md").exists()
    written = fmnist.report_run(run_copy, device="cpu", allow_unverified_data=True)
    assert written == run_copy / "report.md" and "## Test" in written.read_text()
    assert {"loss.png", "accuracy.png", "confusion_matrix.png"} <= {path.name for path in run_copy.glob("*.png")}
    assert json.loads((run_copy / "summary.json").read_text())["test_accuracy"] is not None


def test_calibrate_run_fits_a_temperature_and_fits_again_only_with_force(run_copy):
    (run_copy / "calibration.json").unlink(missing_ok=True)
    record = fmnist.calibrate_run(run_copy, device="cpu")
    assert record["temperature"] > 0 and json.loads((run_copy / "calibration.json").read_text()) == record
    before = snapshot(run_copy)
    refuses(lambda: fmnist.calibrate_run(run_copy), "already there; pass force=True to fit it again")
    assert snapshot(run_copy) == before
    assert fmnist.calibrate_run(run_copy, force=True)["temperature"] == pytest.approx(record["temperature"])
    assert "already there; pass --force to fit it again" in one_line(fmnist_here(["calibrate", str(run_copy)]))


def test_compare_runs_takes_one_folder_or_a_list_and_sorts(runs, tmp_path):
    table = fmnist.compare_runs(runs, tmp_path / "cmp", sort_by="test_accuracy", descending=True)
    assert "first" in table and "second" in table
    rows = (tmp_path / "cmp" / "comparison.csv").read_text().splitlines()
    header = rows[0].split(",")
    accuracies = [float(row.split(",")[header.index("test_accuracy")]) for row in rows[1:]]
    assert accuracies == sorted(accuracies, reverse=True) and len(accuracies) == 2
    assert (tmp_path / "cmp" / "comparison.png").is_file() and (tmp_path / "cmp" / "comparison.md").is_file()
    listed = fmnist.compare_runs([runs / "first", str(runs / "second")], tmp_path / "listed")
    assert listed.count("\n") == table.count("\n")


def test_compare_runs_names_its_arguments_as_python_and_the_command_as_options(runs, tmp_path):
    out = tmp_path / "cmp"
    refuses(lambda: fmnist.compare_runs(runs, out, sort_by="nope"), "compare_runs(sort_by='nope'): no such column")
    refuses(lambda: fmnist.compare_runs(runs, out, sort_by=3), "compare_runs(sort_by=3): should be a column name",
            fmnist.ArgumentTypeError)
    refuses(lambda: fmnist.compare_runs(runs, out, descending=True),
            "compare_runs(descending=True): orders the rows by sort_by's column; give sort_by too")
    refuses(lambda: fmnist.compare_runs(runs, out, descending="yes"), "compare_runs(descending='yes')",
            fmnist.ArgumentTypeError)
    refuses(lambda: fmnist.compare_runs(runs, 3), "compare_runs(out_dir=3)", fmnist.ArgumentTypeError)
    refuses(lambda: fmnist.compare_runs(42, out), "compare_runs(paths=42): not a path")
    refuses(lambda: fmnist.compare_runs(runs, runs / "first"),
            "a run folder; comparisons are written elsewhere so that its own files stay as they are "
            "(e.g. out_dir='comparison')")
    assert not out.exists()
    said = {
        "--sort nope: no such column": ["--sort", "nope"],
        "--descending: orders the rows by --sort's column; give --sort too": ["--descending"],
    }
    for message, options in said.items():
        assert message in one_line(fmnist_here(["compare", str(runs), "--out", str(out), *options]))
    assert "(e.g. --out comparison)" in one_line(fmnist_here(["compare", str(runs), "--out", str(runs / "first")]))
    assert not out.exists()


@pytest.mark.parametrize("function", ["report_run", "calibrate_run"])
def test_report_and_calibrate_name_the_argument_at_fault(runs, function):
    call = getattr(fmnist, function)
    run = runs / "first"
    before = snapshot(runs)
    refuses(lambda: call(42), f"{function}(run_dir=42): should be a path", fmnist.ArgumentTypeError)
    refuses(lambda: call(""), f"{function}(run_dir=''): must be a non-empty path")
    refuses(lambda: call(runs / "missing"), "no such run folder")
    refuses(lambda: call(run, data_dir=3), f"{function}(data_dir=3): give the data folder")
    refuses(lambda: call(run, batch_size=0), f"{function}(batch_size=0): give a whole number of images")
    refuses(lambda: call(run, batch_size=2.5), f"{function}(batch_size=2.5)")
    refuses(lambda: call(run, device="tpu"), f"{function}(device='tpu')")
    switch = "calibrate" if function == "report_run" else "force"
    refuses(lambda: call(run, **{switch: "yes"}), f"{function}({switch}='yes'): should be of type bool",
            fmnist.ArgumentTypeError)
    if function == "report_run":
        refuses(lambda: call(run, allow_unverified_data=1), "report_run(allow_unverified_data=1)")
    assert snapshot(runs) == before


def test_export_onnx_names_the_argument_at_fault(runs, tmp_path):
    run = runs / "first"
    existing = tmp_path / "model.onnx"
    existing.write_bytes(b"mine")
    before = snapshot(runs)
    refuses(lambda: fmnist.export_onnx(42), "export_onnx(source=42): not a path")
    refuses(lambda: fmnist.export_onnx(run, out=3), "export_onnx(out=3): should be a path", fmnist.ArgumentTypeError)
    refuses(lambda: fmnist.export_onnx(run, out=""), "export_onnx(out=''): must be a non-empty path")
    refuses(lambda: fmnist.export_onnx(run, out=existing), "already exists; pass force=True to replace it")
    refuses(lambda: fmnist.export_onnx(run, out=run / "best.pt"), "that is the file this command reads")
    refuses(lambda: fmnist.export_onnx(run, out=tmp_path), f"export_onnx(out='{tmp_path}'): a folder")
    refuses(lambda: fmnist.export_onnx(run, out=tmp_path / "x.onnx", force=1), "export_onnx(force=1)",
            fmnist.ArgumentTypeError)
    refuses(lambda: fmnist.export_onnx(run, out=tmp_path / "x.onnx", calibrate=None), "export_onnx(calibrate=None)",
            fmnist.ArgumentTypeError)
    assert existing.read_bytes() == b"mine" and snapshot(runs) == before
    error = one_line(fmnist_here(["export", str(run), "--out", str(existing)]))
    assert f"--out {existing}: already exists; pass --force to replace it" in error


def test_export_onnx_from_python_writes_the_model(runs, tmp_path):
    pytest.importorskip("onnxscript")
    onnxruntime = pytest.importorskip("onnxruntime")
    written = fmnist.export_onnx(runs / "first", out=tmp_path / "first.onnx")
    assert written == tmp_path / "first.onnx"
    model = fmnist.load_model(runs / "first")
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    logits = onnxruntime.InferenceSession(str(written)).run(None, {"images": images})[0]
    with torch.inference_mode():
        expected = model(torch.from_numpy(images)).numpy() / (model.temperature or 1.0)
    assert np.allclose(logits, expected, atol=1e-4)


def anything(runs: Path):
    """Values of every kind a caller might pass by mistake, and some right ones."""
    return st.one_of(
        st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8), st.binary(max_size=4), st.lists(st.integers(0, 3), max_size=2),
        st.sampled_from([runs, runs / "first", str(runs / "second"), runs / "first" / "best.pt", runs / "missing",
                         Path(""), "\x00", "cpu", "auto", "tpu", "test_accuracy", object(), np.zeros(2)]),
    )


@SETTINGS
@given(data=st.data())
def test_each_argument_of_any_kind_is_taken_or_refused_in_one_line(runs, tmp_path_factory, monkeypatch, data):
    """Any value in any argument of the five: the call works, or it is refused in one line and the runs are as
    they were.
    Each example has its own copy of the runs and its own working directory, where a path taken is written."""
    scratch = tmp_path_factory.mktemp("example")
    monkeypatch.chdir(scratch)
    copy = Path(shutil.copytree(runs, scratch / "runs"))
    function = data.draw(st.sampled_from(["report_run", "calibrate_run", "compare_runs", "export_onnx", "find_lr"]))
    config = fmnist.TrainConfig(data_dir=str(runs.parent / "data"), allow_unverified_data=True, device="cpu",
                                batch_size=50, val_size=100)
    arguments = {
        "report_run": {"run_dir": copy / "first", "device": "cpu", "batch_size": 64, "calibrate": False,
                       "allow_unverified_data": True, "data_dir": None},
        "calibrate_run": {"run_dir": copy / "first", "device": "cpu", "batch_size": 64, "force": True,
                          "data_dir": None},
        "compare_runs": {"paths": copy, "out_dir": "cmp", "sort_by": None, "descending": False},
        "export_onnx": {"source": copy / "first", "out": "model.onnx", "force": False, "calibrate": True},
        "find_lr": {"config": config, "start_lr": 1e-4, "end_lr": 1.0, "steps": 10, "initial_weights": None},
    }[function]
    name = data.draw(st.sampled_from(sorted(arguments)))
    arguments[name] = data.draw(anything(copy))
    before = snapshot(copy)
    try:
        getattr(fmnist, function)(**arguments)
    except fmnist.FmnistError as error:
        assert "\n" not in str(error) and str(error)
        assert snapshot(copy) == before
        event(f"{function}: refused")
    else:
        event(f"{function}: taken")


def test_find_lr_runs_the_range_test_and_names_its_arguments(tiny_data, tmp_path):
    config = fmnist.TrainConfig(data_dir=str(tiny_data), allow_unverified_data=True, device="cpu", batch_size=50,
                                val_size=100)
    result = fmnist.find_lr(config, start_lr=1e-4, end_lr=1.0, steps=12)
    assert isinstance(result, fmnist.LrFindResult) and 1 <= len(result.learning_rates) <= 12
    assert result.learning_rates[0] == pytest.approx(1e-4) and result.learning_rates == sorted(result.learning_rates)
    assert len(result.losses) == len(result.learning_rates)
    assert result.suggestion == pytest.approx(result.lowest_loss_at / 10)
    refuses(lambda: fmnist.find_lr("quick"), "find_lr(config='quick'): should be a TrainConfig",
            fmnist.ArgumentTypeError)
    refuses(lambda: fmnist.find_lr(config, start_lr=0), "find_lr(start_lr=0): must be greater than 0")
    refuses(lambda: fmnist.find_lr(config, start_lr=1e-3, end_lr=1e-4),
            "find_lr(end_lr=0.0001): must be greater than start_lr=0.001")
    refuses(lambda: fmnist.find_lr(config, end_lr=float("inf")), "find_lr(end_lr=inf): must be a finite number")
    refuses(lambda: fmnist.find_lr(config, steps=9), "find_lr(steps=9): must be at least 10")
    refuses(lambda: fmnist.find_lr(config, steps=20.0), "find_lr(steps=20.0): should be of type int",
            fmnist.ArgumentTypeError)
    refuses(lambda: fmnist.find_lr(config, initial_weights=[1]), "find_lr(initial_weights=[1])",
            fmnist.ArgumentTypeError)
    error = one_line(fmnist_here(["lr-find", "quick", "--data-dir", str(tiny_data), "--allow-unverified-data",
                                  "--start-lr", "1e-3", "--end-lr", "1e-4", "--plot", str(tmp_path / "plot.png")]))
    assert "--end-lr 0.0001: must be greater than --start-lr 0.001" in error


@pytest.mark.parametrize("command", ["report", "calibrate"])
def test_the_commands_name_an_empty_run_folder_by_its_metavar(command):
    assert "RUN_DIR '': must be a non-empty path" in one_line(fmnist_here([command, ""]))


def test_a_read_only_folder_is_one_line_before_any_work(runs, tmp_path, make_read_only):
    """From Python as from the command: the folder to write in is tried first, so nothing is evaluated in
    vain, and the error is an FmnistError of one line."""
    run = Path(shutil.copytree(runs / "first", tmp_path / "copy" / "first"))
    (run / "calibration.json").unlink(missing_ok=True)
    out = tmp_path / "out"
    out.mkdir()
    make_read_only(out)
    make_read_only(run)
    before = snapshot(tmp_path)
    said = {
        "report: ": lambda: fmnist.report_run(run, device="cpu", allow_unverified_data=True),
        "calibrate: ": lambda: fmnist.calibrate_run(run, device="cpu"),
        "out_dir ": lambda: fmnist.compare_runs(run, out),
        "out ": lambda: fmnist.export_onnx(run),
    }
    for prefix, call in said.items():
        message = refuses(call, "cannot write there")
        assert message.startswith(prefix), message
    assert snapshot(tmp_path) == before
    assert one_line(fmnist_here(["compare", str(run), "--out", str(out)])).startswith(f"fmnist: error: --out {out}: ")
