"""--mlflow against real stores: a local SQLite store read back with MLflow's own client, and a real
`mlflow server` process over HTTP (127.0.0.1, a free port, started and stopped here). The run folder
stays the record: MLflow's metric histories equal metrics.csv exactly; a store that cannot be reached
at the start is one line and nothing trained; one lost mid-run is one warning and the run goes on."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import fmnist_here, fmnist_process, one_line, tiny_train_args
from fmnist import StopTraining, TrainConfig, resume, train
from fmnist.cli import main
from fmnist.runs.folder import read_summary

mlflow = pytest.importorskip("mlflow", reason="the optional extra: pip install -e '.[mlflow]'")
from mlflow import MlflowClient  # noqa: E402

SERVER_START_SECONDS = 180  # a cold `mlflow server` on a busy 2-core machine


@pytest.fixture(autouse=True)
def in_a_scratch_folder(tmp_path, monkeypatch):
    """A local store keeps its artifacts in ./mlruns (MLflow's default): here, not in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One local store for the module: creating an MLflow database takes a while."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    """A real `mlflow server` on 127.0.0.1 and a free port; yields (URI, process, its backend store)."""
    port, backend = free_port(), f"sqlite:///{tmp_path / 'server.db'}"
    # Its log goes to a file: a pipe nobody reads fills after 64 KB of request lines, and the server
    # then blocks on its next line and answers nothing: the test would hang.
    log = tmp_path / "server.log"
    with log.open("wb") as log_file:  # the server keeps its own descriptor of the file
        process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", backend, "--artifacts-destination", str(tmp_path / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=log_file, start_new_session=True)  # its own group: see stop
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer within {SERVER_START_SECONDS} s")
            time.sleep(0.5)
        yield uri, process, backend
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    """The server and the web workers it started (one process group, started by this test)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def tiny_config(data: Path, out: Path, name: str, **options) -> TrainConfig:
    return TrainConfig(**{"epochs": 3, "batch_size": 50, "val_size": 100, "limit_batches": 3, "data_dir": str(data),
                          "allow_unverified_data": True, "out": str(out), "name": name, "device": "cpu", **options})


def mlflow_record(run_path: Path) -> dict:
    return json.loads((run_path / "config.json").read_text())["mlflow"]


def assert_histories_equal_metrics_csv(client: MlflowClient, run_id: str, run_path: Path) -> None:
    with open(run_path / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    for column in rows[0]:
        if column == "epoch":
            continue
        history = sorted(client.get_metric_history(run_id, column), key=lambda metric: metric.step)
        assert [(metric.step, metric.value) for metric in history] == [
            (int(row["epoch"]), float(row[column])) for row in rows], column


def test_a_local_store_holds_the_run_as_its_folder_does(tiny_data, tmp_path, store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # bare --mlflow: MLflow's own variable is honoured
    config = tiny_config(tiny_data, tmp_path, "local", epochs=5, patience=1, min_delta=0.99, mlflow="default")
    result = train(config)
    record = mlflow_record(result.path)
    assert record["tracking_uri"] == store
    client = MlflowClient(store)
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "local"
    assert client.get_experiment(run.info.experiment_id).name == "fmnist"
    assert_histories_equal_metrics_csv(client, record["run_id"], result.path)
    assert run.data.params == {**{name: str(value) for name, value in config.to_dict().items() if value is not None},
                               "resolved_amp": json.loads((result.path / "config.json").read_text())["resolved"]["amp"]}
    summary = read_summary(result.path)
    assert run.data.metrics["test_accuracy"] == summary["test_accuracy"]
    assert run.data.metrics["test_loss"] == summary["test_loss"] and run.data.metrics["best_epoch"] == result.best_epoch
    assert run.data.metrics["test_accuracy_Ankle boot"] == summary["test_per_class_accuracy"][-1]
    assert run.data.tags["fmnist.stopped_early"] == result.stopped_early  # early stopping ended it after epoch 2
    assert run.data.tags["fmnist.run_folder"] == str(result.path.resolve())
    artifacts = {artifact.path for artifact in client.list_artifacts(record["run_id"])}
    assert {"report.md", "config.json", "summary.json", "metrics.csv", "loss.png", "confusion_matrix.png"} <= artifacts


def test_a_resumed_run_continues_its_mlflow_run(tiny_data, tmp_path, store):
    def crash(row: dict) -> None:
        if row["epoch"] == 2:
            raise RuntimeError("a crash after epoch 2 was saved")

    with pytest.raises(RuntimeError):
        train(tiny_config(tiny_data, tmp_path, "resumed", mlflow=store, mlflow_experiment="resumes"),
              after_epoch=crash)
    record = mlflow_record(tmp_path / "resumed")
    client = MlflowClient(store)
    assert client.get_run(record["run_id"]).info.status == "FAILED"
    result = resume(tmp_path / "resumed")
    assert mlflow_record(result.path) == record  # the same MLflow run, not a second one
    run = client.get_run(record["run_id"])
    assert run.info.status == "FINISHED" and client.get_experiment(run.info.experiment_id).name == "resumes"
    assert_histories_equal_metrics_csv(client, record["run_id"], result.path)


def test_a_callback_that_stops_the_run_leaves_a_finished_mlflow_run(tiny_data, tmp_path, store):
    def enough(row: dict) -> None:
        raise StopTraining("seen enough")

    result = train(tiny_config(tiny_data, tmp_path, "asked", mlflow=store), after_epoch=enough)
    run = MlflowClient(store).get_run(mlflow_record(result.path)["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["fmnist.stopped_early"] == "seen enough"


def test_a_sweep_logs_one_mlflow_run_per_run_in_one_experiment(tiny_data, tmp_path, store):
    args = tiny_train_args(tiny_data, tmp_path, "grid", epochs=1)
    args[0] = "sweep"
    assert main([*args, "--set", "lr=0.001,0.002", "--scheduler", "cosine", "--mlflow", store, "--no-report"]) == 0
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("sweep grid")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["lr=0.001,seed=5", "lr=0.002,seed=5"]
    assert {run.info.status for run in runs} == {"FINISHED"}
    for run in runs:  # without a report, the run folder's files and no figure
        artifacts = {artifact.path for artifact in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"config.json", "summary.json", "metrics.csv", "lr_steps.csv"}, artifacts


def test_a_real_tracking_server_over_http_then_lost_mid_run(tiny_data, tmp_path, server, caplog):
    """One server for both halves (starting one takes seconds): a run logs everything to it over HTTP; then
    the server goes away during another run, which says so once and goes on."""
    uri, process, backend = server
    trained = fmnist_process([*tiny_train_args(tiny_data, tmp_path, "http", epochs=2), "--mlflow", uri], timeout=300)
    assert trained.returncode == 0, trained.stderr
    record = mlflow_record(tmp_path / "http")
    assert record["tracking_uri"] == uri
    client = MlflowClient(uri)
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    assert_histories_equal_metrics_csv(client, record["run_id"], tmp_path / "http")
    artifacts = {artifact.path for artifact in client.list_artifacts(record["run_id"])}
    assert {"report.md", "metrics.csv", "accuracy.png"} <= artifacts

    def kill_the_server(row: dict) -> None:
        if row["epoch"] == 1:
            stop(process)

    with caplog.at_level(logging.WARNING, logger="fmnist"):
        result = train(tiny_config(tiny_data, tmp_path, "lost", mlflow=uri), after_epoch=kill_the_server)
    warnings = [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"MLflow: cannot log to {uri} any more (")
    assert "training goes on" in warnings[0]
    summary = read_summary(result.path)  # the folder is the complete record
    assert summary["finished"] and summary["epochs"] == 3 and (result.path / "report.md").is_file()
    run = MlflowClient(backend).get_run(mlflow_record(result.path)["run_id"])  # the server's own store
    assert run.info.status == "RUNNING"
    assert [metric.step for metric in MlflowClient(backend).get_metric_history(run.info.run_id, "val_accuracy")] == [1]


def test_a_store_that_cannot_be_reached_at_the_start_is_one_line_and_nothing_trained(tiny_data, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    result = fmnist_here([*tiny_train_args(tiny_data, tmp_path / "runs", "nowhere"), "--mlflow", uri])
    line = one_line(result)
    assert line.startswith(f"fmnist: error: --mlflow {uri}: cannot log there (") and "nothing was trained" in line
    assert not (tmp_path / "runs").exists()
    # MLflow's own variable, with a bare --mlflow, names the same kind of store
    result = fmnist_process([*tiny_train_args(tiny_data, tmp_path / "runs", "nowhere"), "--mlflow"],
                            env={"MLFLOW_TRACKING_URI": uri}, timeout=120)
    assert f"--mlflow {uri}: cannot log there" in one_line(result)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("options", "message"), [
    (["--mlflow", ""], "--mlflow '': must not be empty"),
    (["--mlflow", " "], "--mlflow ' ': must not be empty"),
    (["--mlflow-experiment", "x"], "--mlflow-experiment 'x': ignored by these settings: only --mlflow logs"),
    (["--mlflow", "sqlite:///x.db", "--mlflow-experiment", ""], "--mlflow-experiment '': must be a non-empty name"),
    (["--mlflow", "nosuchscheme://somewhere"], "--mlflow nosuchscheme://somewhere: cannot log there ("),
])
def test_bad_mlflow_options_are_one_line_and_write_nothing(tiny_data, tmp_path, options, message):
    result = fmnist_here([*tiny_train_args(tiny_data, tmp_path / "runs", "bad"), *options])
    assert message in one_line(result)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "x.db").exists()


def test_mlflow_not_installed_is_one_line(tiny_data, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # makes `import mlflow` fail
    status = main([*tiny_train_args(tiny_data, tmp_path / "runs", "missing"), "--mlflow", "sqlite:///x.db"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "pip install -e '.[mlflow]'" in err
    assert not (tmp_path / "runs").exists()


def test_bad_mlflow_values_are_config_errors():
    import fmnist

    with pytest.raises(fmnist.ConfigError, match=r"TrainConfig\(mlflow=3\): should be"):
        TrainConfig(mlflow=3)
    with pytest.raises(fmnist.ConfigError, match="only mlflow logs to an experiment"):
        TrainConfig(mlflow_experiment="x")


def test_a_study_logs_its_trials_into_one_experiment(tiny_data, tmp_path, store):
    pytest.importorskip("optuna", reason="the optional extra: pip install -e '.[tune]'")
    (tmp_path / "space.toml").write_text("[max_lr]\nlow = 0.001\nhigh = 0.01\nlog = true\n")
    args = tiny_train_args(tiny_data, tmp_path / "runs", "unused", epochs=1)
    args = [arg for index, arg in enumerate(args) if arg != "--name" and args[index - 1] != "--name"]
    status = main(["tune", *args[1:], "--space", str(tmp_path / "space.toml"), "--trials", "2",
                   "--storage", f"journal:{tmp_path / 'search.log'}", "--study", "search", "--mlflow", store,
                   "--no-report"])
    assert status == 0
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("tune search").experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["trial-0000", "trial-0001"]


def test_a_pruned_trial_is_killed_in_mlflow_with_its_reason_and_resumes_there(tiny_data, tmp_path, store):
    """Pruning is a search giving a trial up on purpose: KILLED (resumable), not FAILED, and the reason kept."""
    optuna = pytest.importorskip("optuna", reason="the optional extra: pip install -e '.[tune]'")
    from fmnist.tools.tune import Parameter, objective_for

    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial) -> bool:
            return True

    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    overrides = {"model": "lenet", "epochs": 2, "batch_size": 50, "limit_batches": 2, "val_size": 100,
                 "data_dir": str(tiny_data), "allow_unverified_data": True, "device": "cpu", "mlflow": store}
    study.optimize(objective_for(optuna, tmp_path / "search", [Parameter("max_lr", 1e-3, 1e-2, log=True)], None,
                                 overrides, {}), n_trials=1)
    assert study.trials[0].state.name == "PRUNED"
    run_dir = tmp_path / "search" / "trial-0000"
    client = MlflowClient(store)
    run = client.get_run(mlflow_record(run_dir)["run_id"])
    assert run.info.status == "KILLED"
    assert run.data.tags["fmnist.abandoned"].startswith("pruned after epoch 1 (validation accuracy ")
    resume(run_dir)
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_a_run_stopped_by_ctrl_c_is_killed_in_mlflow_and_resumed_there(tiny_data, tmp_path, store):
    args = [*tiny_train_args(tiny_data, tmp_path, "interrupted"), "--mlflow", store]
    stopped = fmnist_process(args, kill_at="train-step:6:SIGINT", timeout=300)  # in epoch 2
    assert stopped.returncode == 130, stopped.stderr
    record = mlflow_record(tmp_path / "interrupted")
    client = MlflowClient(store)
    assert client.get_run(record["run_id"]).info.status == "KILLED"
    resumed = fmnist_here(["train", "--resume", str(tmp_path / "interrupted")])
    assert resumed.returncode == 0, resumed.stderr
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    assert_histories_equal_metrics_csv(client, record["run_id"], tmp_path / "interrupted")


def test_a_damaged_mlflow_record_is_one_line_on_resume(tiny_data, tmp_path, store):
    def crash(row: dict) -> None:
        raise RuntimeError("a crash after epoch 1 was saved")

    with pytest.raises(RuntimeError):
        train(tiny_config(tiny_data, tmp_path, "damaged", mlflow=store), after_epoch=crash)
    saved = json.loads((tmp_path / "damaged" / "config.json").read_text())
    saved["mlflow"] = {"tracking_uri": store}
    (tmp_path / "damaged" / "config.json").write_text(json.dumps(saved))
    import fmnist

    with pytest.raises(fmnist.CheckpointError, match='its "mlflow" record is damaged'):
        resume(tmp_path / "damaged")
