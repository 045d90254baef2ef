"""Optional MLflow logging (`--mlflow [URI]`): one fmnist run as one MLflow run.

What goes there: the resolved config as params, every epoch's metrics.csv row with the epoch as the
step, the test figures of the best epoch, and the run folder's report.md, figures and JSON/CSV files
as artifacts. The run folder stays the record; MLflow is a copy for browsing and comparing:

- a store that cannot be reached when the run starts is a ConfigError (one line, exit 2), before
  anything is trained or written;
- a store lost during the run costs one warning; the run goes on and its folder is complete. A
  resumed run logs the epochs MLflow missed, and continues the same MLflow run (its id is kept in
  config.json under "mlflow").

The store is MLflow's: an `http(s)://` tracking server, `sqlite:///FILE`, Databricks, ...; bare
`--mlflow` takes MLflow's own default (MLFLOW_TRACKING_URI, else ./mlflow.db). The experiment is
--mlflow-experiment, else MLFLOW_EXPERIMENT_NAME (or _ID), else "fmnist"; `fmnist sweep` and `fmnist
tune` name one per sweep and study. MLflow is an optional extra: pip install -e '.[mlflow]'.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

from fmnist.data.fashion import CLASS_NAMES
from fmnist.errors import CheckpointError, ConfigError, one_line_reason
from fmnist.faults import RunAbandoned, TrainingInterrupted
from fmnist.files import atomic_write_json
from fmnist.runs.folder import read_saved_config
from fmnist.training.config import MLFLOW_DEFAULT_STORE, TrainConfig
from fmnist.training.loop import EvalResult

logger = logging.getLogger(__name__)

INSTALL_HINT = "--mlflow needs MLflow; install it with pip install -e '.[mlflow]' in the fmnist checkout"
DEFAULT_EXPERIMENT = "fmnist"
# MLflow's client retries an unreachable server for minutes (7 retries, doubling waits, a 120-s timeout):
# a run would wait that long to hear that the server is not there, and stall between epochs when it goes
# away. fmnist's calls ask for this much instead, unless the user set these variables.
BRIEF_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
              "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
ARTIFACT_FILES = ("report.md", "config.json", "summary.json", "metrics.csv", "lr_steps.csv")  # and the figures


def mlflow_group(base: TrainConfig, experiment: str) -> dict:
    """With --mlflow, a sweep's (or a study's) runs share one MLflow experiment named after it, unless
    --mlflow-experiment names one."""
    if base.mlflow is None or base.mlflow_experiment is not None:
        return {}
    return {"mlflow_experiment": experiment}


def require_mlflow():
    """Fail before training starts, in one line, if the extra is not installed."""
    try:
        import mlflow
    except ImportError:
        raise ConfigError(INSTALL_HINT, "mlflow") from None
    return mlflow


@contextmanager
def briefly_patient() -> Iterator[None]:
    """MLflow's HTTP settings for one of fmnist's calls: BRIEF_HTTP, where the user set nothing.

    Meanwhile the HTTP library's warning per retry is dropped (fmnist says in one line what failed),
    and so is MLflow's INFO chatter ("Creating initial MLflow database tables..."), which MLflow's own
    stderr handler would print past the CLI's rule that other libraries' INFO stays silent.
    """
    added = {name: value for name, value in BRIEF_HTTP.items() if name not in os.environ}
    os.environ.update(added)
    retries, chatter = logging.getLogger("urllib3.connectionpool"), logging.getLogger("mlflow")
    retries.addFilter(drop_record)
    level = chatter.level
    chatter.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        chatter.setLevel(level)
        retries.removeFilter(drop_record)
        for name in added:
            os.environ.pop(name, None)


def drop_record(record: logging.LogRecord) -> bool:
    return False


def why(error: BaseException) -> str:
    """What went wrong, short: the system's reason for a failed connection ("Connection refused"),
    else the error's first line (MLflow wraps the first in a long line of retries and URLs)."""
    text = str(error)
    for reason in ("Connection refused", "timed out", "Name or service not known", "No route to host",
                   "Temporary failure in name resolution", "Connection reset by peer"):
        if reason in text:
            return reason.lower()
    return one_line_reason(error)


@dataclass(frozen=True)
class MlflowTarget:
    """Where a run logs: the store, as an absolute URI (a resumed run finds it from any folder), the
    experiment, and the MLflow run a resumed run continues (None for a new run)."""

    tracking_uri: str
    experiment_id: str
    run_id: str | None = None


def tracking_uri(value: str) -> str:
    """The store `--mlflow VALUE` names; a plain path becomes an absolute file URI."""
    uri = require_mlflow().get_tracking_uri() if value == MLFLOW_DEFAULT_STORE else value
    if not urlparse(uri).scheme and not uri.startswith("databricks"):
        uri = Path(uri).resolve().as_uri()
    return uri


def experiment_wanted(config: TrainConfig) -> tuple[str | None, str | None]:
    """(name, id) of the experiment: the config's, else MLflow's variables, else fmnist's."""
    if config.mlflow_experiment is not None:
        return config.mlflow_experiment, None
    if os.environ.get("MLFLOW_EXPERIMENT_NAME"):
        return os.environ["MLFLOW_EXPERIMENT_NAME"], None
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return None, os.environ["MLFLOW_EXPERIMENT_ID"]
    return DEFAULT_EXPERIMENT, None


def find_or_create_experiment(client, name: str | None, experiment_id: str | None) -> str:
    from mlflow.exceptions import MlflowException

    if experiment_id is not None:
        return client.get_experiment(experiment_id).experiment_id  # raises if there is none
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name)
        except MlflowException:  # another process (a sweep's job) created it first
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.lifecycle_stage != "active":
        raise ConfigError(f"--mlflow-experiment {name}: deleted in that store; restore it (mlflow experiments "
                          "restore) or choose another name", "mlflow_experiment")
    return experiment.experiment_id


def connect(config: TrainConfig, run_path: Path | None = None) -> MlflowTarget:
    """Reach the store before anything is trained: a new run's experiment (created if needed), or the
    MLflow run that a resumed run (`run_path`) continues. A store that does not answer is a ConfigError."""
    require_mlflow()
    from mlflow import MlflowClient

    saved = read_saved_config(run_path).get("mlflow") if run_path is not None else None
    if saved is not None and not (isinstance(saved, dict) and all(
            isinstance(saved.get(key), str) for key in ("tracking_uri", "experiment_id", "run_id"))):
        raise CheckpointError(f"{run_path}/config.json: its \"mlflow\" record is damaged (it should hold "
                              "tracking_uri, experiment_id and run_id); restore it, or delete it to log to a new "
                              "MLflow run")
    uri = saved["tracking_uri"] if saved else tracking_uri(config.mlflow)
    try:
        with briefly_patient():
            client = MlflowClient(tracking_uri=uri)
            if saved:
                client.get_run(saved["run_id"])
                return MlflowTarget(uri, saved["experiment_id"], saved["run_id"])
            return MlflowTarget(uri, find_or_create_experiment(client, *experiment_wanted(config)))
    except ConfigError:
        raise
    except Exception as error:  # MLflow's own, or the HTTP library's: the store's first line says which
        raise ConfigError(f"--mlflow {uri}: cannot log there ({why(error)}); start the tracking "
                          "server or correct the URI; nothing was trained", "mlflow") from None


class MlflowLog:
    """One fmnist run as one MLflow run. `log_epoch` sits with the run's other loggers; `finish` adds
    the test figures and the artifacts. After the start, a call that fails is one warning, and
    nothing more is sent (see the module's docstring)."""

    def __init__(self, target: MlflowTarget, run_path: Path, config: TrainConfig, resolved: dict,
                 history: list[dict]):
        from mlflow import MlflowClient

        self.target = target
        self.run_path = Path(run_path)
        self.client = MlflowClient(tracking_uri=target.tracking_uri)
        self.lost: str | None = None
        if target.run_id is None:
            self.run_id = self.start(config, resolved)
            for row in history:  # a resumed run that had not reached MLflow before
                self.log_epoch(row, [])
        else:
            self.run_id = target.run_id
            self.guarded(lambda: self.continue_run(history))

    def start(self, config: TrainConfig, resolved: dict) -> str:
        """A new MLflow run with the config as params; its id goes into config.json (for --resume)."""
        from mlflow.entities import Param, RunTag

        try:
            with briefly_patient():
                run = self.client.create_run(self.target.experiment_id, run_name=self.run_path.name)
                run_id = run.info.run_id
                params = {**{name: value for name, value in config.to_dict().items() if value is not None},
                          "resolved_amp": resolved.get("amp")}
                tags = {"fmnist.run_folder": str(self.run_path.resolve()), "fmnist.model": config.model,
                        "fmnist.recipe": config.recipe or ""}
                self.client.log_batch(run_id, params=[Param(name, str(value)) for name, value in params.items()],
                                      tags=[RunTag(name, value) for name, value in tags.items()])
        except Exception as error:
            raise ConfigError(f"--mlflow {self.target.tracking_uri}: cannot start a run there "
                              f"({why(error)}); nothing was trained", "mlflow") from None
        saved = read_saved_config(self.run_path)
        saved["mlflow"] = {**asdict(self.target), "run_id": run_id}
        atomic_write_json(self.run_path / "config.json", saved)
        return run_id

    def continue_run(self, history: list[dict]) -> None:
        """A resumed run: running again, and the epochs MLflow missed (lost mid-run before) logged now."""
        self.client.update_run(self.run_id, status="RUNNING")
        logged = {metric.step for metric in self.client.get_metric_history(self.run_id, "val_accuracy")}
        for row in history:
            if row["epoch"] not in logged:
                self.send_epoch(row)

    def guarded(self, work) -> None:
        """Run one call to MLflow, unless the store was lost; losing it is one warning, never an error."""
        if self.lost is not None:
            return
        try:
            with briefly_patient():
                work()
        except Exception as error:
            self.lost = why(error)
            logger.warning("MLflow: cannot log to %s any more (%s); training goes on, and %s keeps the complete "
                           "record (a --resume logs what MLflow missed)", self.target.tracking_uri, self.lost,
                           self.run_path)

    def send_epoch(self, row: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(name, float(value), now, row["epoch"]) for name, value in row.items() if name != "epoch"]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_epoch(self, row: dict, learning_rates: list[float]) -> None:
        """One metrics.csv row, the epoch as the step."""
        self.guarded(lambda: self.send_epoch(row))

    def finish(self, test: EvalResult, best_epoch: int, stopped_early: str | None) -> None:
        """The test figures (at the best epoch's step), the run folder's files, and FINISHED."""
        from mlflow.entities import Metric, RunTag

        def send() -> None:
            now = int(time.time() * 1000)
            figures = {"test_accuracy": test.accuracy, "test_loss": test.loss, "best_epoch": best_epoch,
                       **{f"test_accuracy_{name}": value
                          for name, value in zip(CLASS_NAMES, test.per_class_accuracy(), strict=True)}}
            tags = [RunTag("fmnist.stopped_early", stopped_early)] if stopped_early else []
            self.client.log_batch(self.run_id, metrics=[Metric(name, float(value), now, best_epoch)
                                                        for name, value in figures.items()], tags=tags)
            for path in self.artifacts():
                self.client.log_artifact(self.run_id, str(path))
            self.client.set_terminated(self.run_id, "FINISHED")

        self.guarded(send)

    def artifacts(self) -> list[Path]:
        files = [self.run_path / name for name in ARTIFACT_FILES] + sorted(self.run_path.glob("*.png"))
        return [path for path in files if path.is_file()]

    def end(self, status: str) -> None:
        self.guarded(lambda: self.client.set_terminated(self.run_id, status))

    def abandoned(self, reason: str) -> None:
        """Given up on purpose (a pruned trial): KILLED, with the reason as a tag."""
        self.guarded(lambda: self.client.set_tag(self.run_id, "fmnist.abandoned", reason))
        self.end("KILLED")


@contextmanager
def ends_with_the_run(log: MlflowLog | None) -> Iterator[None]:
    """An MLflow run that fmnist stops without finishing is marked so: KILLED when stopped by a signal or
    given up on purpose (both resumable; a pruned trial's reason is its `fmnist.abandoned` tag), FAILED
    otherwise. A finished run is marked FINISHED by `finish`."""
    try:
        yield
    except BaseException as error:
        if log is not None:
            if isinstance(error, RunAbandoned):
                log.abandoned(str(error))
            else:
                log.end("KILLED" if isinstance(error, (TrainingInterrupted, KeyboardInterrupt)) else "FAILED")
        raise
