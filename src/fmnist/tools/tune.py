"""`fmnist tune`: a hyperparameter search on Optuna that any number of processes and machines share.

    fmnist tune --recipe fast --space space.toml --trials 20 --storage journal:runs/search.log --study search
    fmnist tune --show --storage journal:runs/search.log --study search

SPACE.toml has one table per TrainConfig option: `low`, `high` and `log = true|false` for a number
(an int option samples ints), or `choices = [...]`:

    [max_lr]
    low = 1e-3
    high = 3e-2
    log = true

    [optimizer]
    choices = ["adamw", "sgd"]

The whole space is checked before anything runs: a config is built for every combination of each
option's ends (low and high) and choices, so an unknown key, an empty range, a value of the wrong
type or an option that the recipe's settings would ignore is one line, not a failed trial later.

Every trial is a normal run folder, OUT/STUDY/trial-NNNN (config.json, metrics, checkpoints,
report), plus trial.json with what Optuna made of it. The objective is the best validation accuracy
(the test split is never looked at); each epoch's validation accuracy is reported, so a pruner
(median by default) stops trials that fall behind, after their epoch is saved.

The study lives in the storage: a journal file (`journal:PATH`, Optuna's JournalFileBackend, for
one machine or a shared file system) or any SQLAlchemy URL (sqlite:///PATH for one machine,
postgresql:// or mysql:// for a cluster). `--trials N` is what this process runs; start as many
processes, on as many machines, as you like with the same --storage and --study.

A worker that dies (SIGKILL, a power cut) leaves its trial RUNNING. Each worker records its host,
process id and start time in its trial; on start and before each trial, a worker marks failed
every running trial of its own machine whose process is gone. For an SQL storage, Optuna's
heartbeat (every HEARTBEAT_SECONDS) also fails trials of dead workers on other machines.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from fmnist.arguments import in_toml
from fmnist.errors import ConfigError, one_line_reason
from fmnist.experiment import train
from fmnist.faults import RunAbandoned, TrainingInterrupted, kill_point, sigterm_raises
from fmnist.files import atomic_write_json
from fmnist.reports import plots
from fmnist.reports.mlflow_log import mlflow_group
from fmnist.reports.report import markdown_table
from fmnist.training.config import FIELDS, build_config, check_type, declared_type, flag, load_toml_file
from fmnist.training.loop import NonFiniteLossError

logger = logging.getLogger(__name__)

INSTALL_HINT = "fmnist tune needs Optuna: pip install -e '.[tune]' (optuna and sqlalchemy)"
TUNE_OWNS = ("out", "name")  # the study folder and trial-NNNN names are tune's own
# Options that may differ between workers of one study: where a machine keeps things, not what is trained.
PER_MACHINE = ("out", "name", "data_dir", "device")
SPACE_KEYS = ("low", "high", "log", "choices")
MAX_CORNERS = 4096  # beyond this many combinations of ends and choices, each option is checked alone
HEARTBEAT_SECONDS = 60  # an SQL storage's trials say every minute that their worker is alive
PRUNERS = ("median", "none")


def require_optuna():
    """Optuna, or a one-line error with the install command."""
    try:
        import optuna
        import sqlalchemy  # noqa: F401
    except ImportError:
        raise ConfigError(INSTALL_HINT) from None
    # Optuna's messages go to the `optuna` logger only; fmnist says what happened itself.
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    return optuna


@dataclass(frozen=True)
class Parameter:
    """One option of the search space: a range (low, high, log) or a list of choices."""

    name: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if declared_type(self.name) == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def ends(self) -> list:
        """The values that bound what this option can take: its choices, or low and high."""
        return list(self.choices) or [self.low, self.high]


def read_space(path: str | Path) -> list[Parameter]:
    """The search space of a TOML file, each table checked on its own (see check_space for the rest)."""
    path = Path(path)
    raw = load_toml_file(path, "--space")
    if not raw:
        raise ConfigError(f"--space {path}: no options to search; add a table such as [lr] with low and high")
    try:
        return [parameter_of(name, table) for name, table in raw.items()]
    except ConfigError as error:
        raise ConfigError(f"--space {path}: {error}", error.field) from None


def parameter_of(name: str, table) -> Parameter:
    if name not in FIELDS:
        raise ConfigError(f"[{name}]: unknown option; valid options: {', '.join(FIELDS)}", name)
    if name in TUNE_OWNS:
        raise ConfigError(f"[{name}]: tune names and places the trials' run folders itself", name)
    if not isinstance(table, dict):
        raise ConfigError(f"{name} = {table!r}: give a table, [{name}] with low/high/log or choices", name)
    unknown = sorted(set(table) - set(SPACE_KEYS))
    if unknown:
        raise ConfigError(f"[{name}]: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(SPACE_KEYS)}", name)
    kind = declared_type(name)
    if "choices" in table:
        return choices_of(name, table)
    if kind not in ("int", "float"):
        raise ConfigError(f"[{name}]: a {kind} option; give choices = [...]", name)
    if "low" not in table or "high" not in table:
        raise ConfigError(f"[{name}]: give both low and high (and log = true for a log scale), or choices", name)
    low, high = (typed(name, table[key], key) for key in ("low", "high"))
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"[{name}]: log = {log!r}; give true or false", name)
    if low >= high:
        raise ConfigError(f"[{name}]: low {low!r} must be below high {high!r}", name)
    if log and low <= 0:
        raise ConfigError(f"[{name}]: log = true needs low > 0 (got {low!r})", name)
    return Parameter(name, low, high, log)


def choices_of(name: str, table: dict) -> Parameter:
    if set(table) != {"choices"}:
        raise ConfigError(f"[{name}]: give choices, or low/high/log, not both", name)
    choices = table["choices"]
    if not isinstance(choices, list) or not choices:
        raise ConfigError(f"[{name}]: choices must be a non-empty list", name)
    values = tuple(typed(name, value, "choice") for value in choices)
    if len(set(values)) != len(values):
        raise ConfigError(f"[{name}]: a choice is listed twice; give each once", name)
    return Parameter(name, choices=values)


def typed(name: str, value, what: str):
    try:
        return check_type(name, value)
    except ConfigError:
        raise ConfigError(f"[{name}]: {what} {value!r} is not of the option's type, {declared_type(name)}",
                          name) from None


def check_space(space: list[Parameter], space_path: str | Path, config_file: str | None, overrides: dict):
    """Build a config for every combination of the options' ends and choices: a value the config
    refuses (out of range, or ignored by the recipe's settings) is one line now. Returns the base
    config (the recipe and flags, nothing sampled)."""
    for parameter in space:
        if overrides.get(parameter.name) is not None:
            raise ConfigError(f"{flag(parameter.name)} is given and --space {space_path} samples it; drop one",
                              parameter.name)
    base = build_config(config_file, overrides)
    ends = [[(parameter.name, value) for value in parameter.ends()] for parameter in space]
    if math.prod(len(values) for values in ends) > MAX_CORNERS:
        combinations = [[end] for values in ends for end in values]
    else:
        combinations = itertools.product(*ends)
    for combination in combinations:
        try:
            build_config(config_file, {**overrides, **dict(combination)})
        except ConfigError as error:
            label = ", ".join(f"{name} = {in_toml(value)}" for name, value in combination)
            raise ConfigError(f"--space {space_path}: with {label}: {error}", error.field) from None
    return base


def check_study_name(name: str) -> None:
    """The study's name is also its folder in OUT: one plain folder name, never a path out of OUT."""
    if not name.strip() or "/" in name or "\\" in name or name in (".", ".."):
        raise ConfigError(f"--study {name!r}: give a plain name (it is also the folder OUT/NAME of its trials), "
                          "e.g. --study search")


def local_file_of(url: str) -> Path | None:
    """The file a journal or SQLite storage lives in (None for a database server)."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    if url.startswith("sqlite:///") and ":memory:" not in url:
        return Path(url.removeprefix("sqlite:///").split("?")[0])
    return None


def starts_like_a_journal(path: Path) -> bool:
    """An empty or missing file, or one whose first line is an Optuna journal record."""
    try:
        with open(path, "rb") as journal:
            line = journal.readline(1 << 16)
    except FileNotFoundError:
        return True
    if not line:
        return True
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and "op_code" in record


def open_storage(url: str):
    """The Optuna storage that `url` names: journal:PATH, or an SQLAlchemy URL."""
    optuna = require_optuna()
    if url.startswith("journal:"):
        text = url.removeprefix("journal:")
        path = Path(text)
        if not text.strip():
            raise ConfigError(f"--storage {url}: give the journal file's path, e.g. journal:runs/search.log")
        if path.is_dir():
            raise ConfigError(f"--storage {url}: {path} is a folder; give a file in it, e.g. "
                              f"journal:{path / 'search.log'}")
        if not path.parent.is_dir():
            raise ConfigError(f"--storage {url}: the folder {path.parent} does not exist; create it first")
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        not_a_journal = (f"--storage {url}: {path} is not an Optuna journal; give the study's journal file, "
                         "or a new name")
        if not starts_like_a_journal(path):  # Optuna would append its lines to someone else's file
            raise ConfigError(not_a_journal)
        try:
            return JournalStorage(JournalFileBackend(str(path)))
        except (ValueError, KeyError, TypeError) as error:  # a damaged line further on
            raise ConfigError(f"{not_a_journal} ({type(error).__name__}: {one_line_reason(error)})") from None
    if "://" not in url:
        raise ConfigError(f"--storage {url}: give journal:PATH (a journal file) or an SQLAlchemy URL "
                          "(sqlite:///search.db, postgresql://host/db, mysql://host/db)")
    # SQLite: wait for another worker's write instead of failing at once with "database is locked".
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat is "experimental"
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS)
        except ImportError as error:
            raise ConfigError(f"--storage {url}: its database driver is not installed ({error})") from None
        except Exception as error:  # SQLAlchemy raises many types
            if attempt == 4 or not another_worker_meanwhile(error):
                raise ConfigError(f"--storage {url}: cannot open it ({one_line_reason(error)})") from None
            time.sleep(0.5 + attempt)


def another_worker_meanwhile(error: Exception) -> bool:
    """Whether opening the storage failed because another worker was creating its tables at the same time
    (a row or table it had just added, or its lock): worth trying again. A file that is not a database,
    or a folder this user cannot write, fails the same way every time, and is said at once."""
    from sqlalchemy.exc import IntegrityError  # there whenever an SQL storage is opened (require_optuna)

    return isinstance(error, IntegrityError) or any(sign in str(error) for sign in ("already exists",
                                                                                    "database is locked"))


def search_record(space: list[Parameter], base) -> dict:
    """What makes two workers' searches the same study: the space and every option but the machine's own."""
    options = {key: value for key, value in base.to_dict().items() if key not in PER_MACHINE}
    return json.loads(json.dumps({"space": [asdict(parameter) for parameter in space], "options": options}))


def open_study(optuna, storage, storage_url: str, study_name: str, pruner: str, record: dict):
    study = optuna.create_study(
        study_name=study_name, storage=storage, direction="maximize", load_if_exists=True,
        pruner=optuna.pruners.MedianPruner() if pruner == "median" else optuna.pruners.NopPruner(),
    )
    saved = study.user_attrs.get("fmnist")
    if saved is None and study.get_trials(deepcopy=False):
        raise ConfigError(f"--study {study_name}: a study in {storage_url} that fmnist tune did not start; "
                          "choose another --study")
    if saved is None:
        study.set_user_attr("fmnist", record)
    elif saved != record:
        changed = "space" if saved.get("space") != record["space"] else next(
            (flag(key) for key in record["options"] if saved.get("options", {}).get(key) != record["options"][key]),
            "options")
        raise ConfigError(f"--study {study_name} in {storage_url} searches with another {changed}; give the "
                          "study's own --space and options, or choose another --study")
    return study


def process_start_time(pid: int) -> str | None:
    """When process `pid` started (Linux: /proc), so that a reused pid is not taken for the old process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def this_worker() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start_time(os.getpid())}


def is_alive(worker: dict) -> bool:
    try:
        os.kill(worker["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    started = process_start_time(worker["pid"])
    return started is None or worker.get("started") is None or started == worker["started"]


def fail_trials_of_gone_workers(optuna, study) -> None:
    """Mark failed the running trials of this machine whose worker process no longer exists."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if not worker or worker.get("host") != host or is_alive(worker):
            continue
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        logger.info("trial %d marked failed: its worker (process %d on %s) is gone; %s keeps what it saved",
                    trial.number, worker["pid"], host, trial.user_attrs.get("run_dir", "its run folder"))


def objective_for(optuna, study_dir: Path, space: list[Parameter], config_file: str | None, overrides: dict,
                  details: dict) -> Callable:
    """The function Optuna calls per trial: sample, train a run folder, return the best validation accuracy."""

    def objective(trial) -> float:
        trial.set_user_attr("worker", this_worker())
        fail_trials_of_gone_workers(optuna, trial.study)
        sampled = {parameter.name: parameter.suggest(trial) for parameter in space}
        name = f"trial-{trial.number:04d}"
        trial.set_user_attr("run_dir", str(study_dir / name))
        config = build_config(config_file, {**overrides, **sampled, "out": str(study_dir), "name": name})
        try:
            result = train(config, details={**details, "trial": {"number": trial.number, "sampled": sampled}},
                           after_epoch=report_to(optuna, trial))
        except NonFiniteLossError as error:
            trial.set_user_attr("error", str(error))
            raise
        return result.best_val_accuracy

    return objective


def report_to(optuna, trial) -> Callable[[dict], None]:
    """After each saved epoch: its validation accuracy to Optuna, and a stop if the pruner says so."""

    class TrialPruned(optuna.TrialPruned, RunAbandoned):
        """Optuna's signal to prune, which also tells the run that it was given up on, not that it failed."""

    def after_epoch(row: dict) -> None:
        trial.report(row["val_accuracy"], row["epoch"])
        if trial.should_prune():
            raise TrialPruned(f"pruned after epoch {row['epoch']} "
                              f"(validation accuracy {row['val_accuracy']:.4f}, behind earlier trials)")

    return after_epoch


def record_trial(optuna, study_dir: Path) -> Callable:
    """After each trial: a line in the log, and trial.json in its run folder."""

    def callback(study, trial) -> None:
        state = trial.state.name.lower()
        if trial.state == optuna.trial.TrialState.COMPLETE:
            logger.info("trial %d: best val acc %.4f (%s); the study's best so far: %.4f (trial %d)", trial.number,
                        trial.value, describe(trial.params), study.best_value, study.best_trial.number)
        else:
            logger.info("trial %d %s (%s)%s", trial.number, state, describe(trial.params),
                        f": {trial.user_attrs['error']}" if "error" in trial.user_attrs else "")
        run_dir = study_dir / f"trial-{trial.number:04d}"
        if run_dir.is_dir():
            atomic_write_json(run_dir / "trial.json", {
                "study": study.study_name, "trial": trial.number, "state": state, "value": trial.value,
                "params": trial.params, "epochs_reported": len(trial.intermediate_values),
            })

    return callback


def describe(params: dict) -> str:
    return ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                     for name, value in params.items())


OPTUNA_TRIAL_OUTCOMES = "optuna.study._optimize"  # the logger of Optuna's "Trial N failed ..." lines


@contextmanager
def optuna_trial_outcomes_unlogged() -> Iterator[None]:
    """Optuna logs each failed trial with its exception's traceback, a Ctrl-C or an error in the
    objective included; record_trial and the stop's own message say the same in one line."""
    outcomes = logging.getLogger(OPTUNA_TRIAL_OUTCOMES)
    outcomes.addFilter(drop_record)
    try:
        yield
    finally:
        outcomes.removeFilter(drop_record)


def drop_record(record: logging.LogRecord) -> bool:
    return False


def run_tune(config_file: str | None, overrides: dict, space_path: str, trials: int, storage_url: str,
             study_name: str, pruner: str = "median", details: dict | None = None) -> tuple[Path, str]:
    """Run `trials` trials of the study (created on first use) in this process; returns (study folder, table).

    Stopped by Ctrl-C or SIGTERM, it raises TrainingInterrupted (the trial in progress is marked
    failed; its run folder keeps its saved epochs).
    """
    optuna = require_optuna()
    if trials < 1:
        raise ConfigError(f"--trials {trials}: must be at least 1 (the trials this process runs)")
    if pruner not in PRUNERS:
        raise ConfigError(f"--pruner {pruner}: choose one of {', '.join(PRUNERS)}")
    if overrides.get("name") is not None:
        raise ConfigError("--name: tune names its runs itself (trial-NNNN in OUT/STUDY); give --study instead")
    check_study_name(study_name)
    space = read_space(space_path)
    base = check_space(space, space_path, config_file, overrides)
    study_dir = Path(base.out) / study_name
    # From the study's opening to its table, a signal stops with the command that goes on: before the
    # first trial and after the last too, not only inside a trial's steps. Between steps (sampling,
    # writing trial.json) SIGTERM raises, so that Optuna marks the trial failed instead of RUNNING.
    try:
        with optuna_trial_outcomes_unlogged(), sigterm_raises():
            study = open_study(optuna, open_storage(storage_url), storage_url, study_name, pruner,
                               search_record(space, base))
            study_dir.mkdir(parents=True, exist_ok=True)
            fail_trials_of_gone_workers(optuna, study)
            logger.info("study %s in %s: %d trials so far; this process runs %d; runs in %s", study_name,
                        storage_url, len(study.get_trials(deepcopy=False)), trials, study_dir)
            overrides = {**overrides, **mlflow_group(base, f"tune {study_name}")}  # one MLflow experiment a study
            objective = objective_for(optuna, study_dir, space, config_file, overrides,
                                      {**(details or {}), "study": study_name, "storage": storage_url})
            kill_point("tune-start")
            study.optimize(objective, n_trials=trials, catch=(NonFiniteLossError,),
                           callbacks=[record_trial(optuna, study_dir)])
            kill_point("tune-end")
            return study_dir, best_trials_table(optuna, study, 10)
    except TrainingInterrupted as interruption:
        stopped = TrainingInterrupted(f"tune stopped: {interruption}; that trial is marked failed in the study",
                                      interruption.signal_number)
        stopped.study_path = study_dir
        raise stopped from None
    except KeyboardInterrupt as interruption:  # a signal outside a trial's steps, or a second one
        signal_number = getattr(interruption, "signal_number", signal.SIGINT)
        said = "SIGTERM" if signal_number == signal.SIGTERM else "Ctrl-C"
        stopped = TrainingInterrupted(f"tune stopped by {said}; a trial in progress is marked failed in the study",
                                      signal_number)
        stopped.study_path = study_dir
        raise stopped from None


def best_trials_table(optuna, study, top: int) -> str:
    """The states of all trials, then the `top` completed ones by validation accuracy."""
    trials = study.get_trials(deepcopy=False)
    counts = {}
    for trial in trials:
        counts[trial.state.name.lower()] = counts.get(trial.state.name.lower(), 0) + 1
    states = ", ".join(f"{count} {state}" for state, count in sorted(counts.items()))
    lines = [f"study {study.study_name}: {len(trials)} trials ({states or 'none yet'})"]
    complete = sorted((trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE),
                      key=lambda trial: trial.value, reverse=True)[:top]
    if complete:
        names = sorted({name for trial in complete for name in trial.params})
        rows = [[rank, trial.number, f"{trial.value:.4f}", *(shown(trial.params.get(name)) for name in names),
                 len(trial.intermediate_values), trial.user_attrs.get("run_dir", "-")]
                for rank, trial in enumerate(complete, start=1)]
        lines.append(markdown_table(["rank", "trial", "best val acc", *names, "epochs", "run folder"], rows))
    return "\n".join(lines)


def shown(value) -> str:
    return "-" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def show_study(storage_url: str, study_name: str, out: str | Path, top: int = 10) -> tuple[str, list[Path]]:
    """The best trials as a table, and the optimization history and parameter importances as PNGs in OUT/STUDY."""
    optuna = require_optuna()
    check_study_name(study_name)
    stored_in = local_file_of(storage_url)
    if stored_in is not None and not stored_in.exists():  # opening it would create it: reading writes nothing
        raise ConfigError(f"--study {study_name}: no such study; {stored_in} does not exist (check --storage)")
    storage = open_storage(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [summary.study_name for summary in optuna.get_all_study_summaries(storage)]
        raise ConfigError(f"--study {study_name}: no such study in {storage_url}; "
                          f"studies there: {', '.join(names) or 'none'}") from None
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # Optuna draws with pyplot: here, files only, no window;
        matplotlib.use("Agg")  # where pyplot is in use (a notebook) its backend stays
    import matplotlib.pyplot as pyplot
    from optuna.visualization import matplotlib as optuna_plots

    folder = Path(out) / study_name
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if complete:  # an empty study has nothing to draw: no folder either
        folder.mkdir(parents=True, exist_ok=True)
    written = []
    # Optuna marks these plots experimental and switches matplotlib's style: keep both to this block.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")
        if complete:
            axes = optuna_plots.plot_optimization_history(study, target_name="best validation accuracy")
            written.append(plots.save(axes.figure, folder / "optimization_history.png"))
            pyplot.close(axes.figure)  # pyplot keeps every figure it made until it is closed
        if len(complete) >= 2 and any(trial.params for trial in complete):
            axes = optuna_plots.plot_param_importances(study, target_name="best validation accuracy")
            written.append(plots.save(axes.figure, folder / "param_importances.png"))
            pyplot.close(axes.figure)
    return best_trials_table(optuna, study, top), written

