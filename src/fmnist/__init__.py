"""fmnist: a fast, readable PyTorch lab for Fashion-MNIST.

    from fmnist import TrainConfig, load_runs, train
    run = train(TrainConfig.from_recipe("quick"))     # a run folder in runs/, about 30 s on a CPU
    print(run.test_accuracy, run.path, run.history["val_accuracy"])
    load_runs("runs")                                 # every run beneath, as a pandas DataFrame

The package is layered; each layer imports only from the ones above it in this list:

    errors, arguments         one-line errors; arguments checked at the door, named as each front door spells them
    faults, files             stop requests, atomic file writes
    data/                     the data set: find, verify, read, split, batch, augment, image files
    models/                   the model zoo, LearnedAffine, the whitening layer, layer summaries
    training/                 config and recipes, optimizer/schedule/loss builders, the epoch loop, torchrun
    runs/                     run folders: checkpoint format, files, recording epochs, resuming
    inference                 load_model, predict, evaluate a checkpoint
    results                   runs as data: load_run (a Run: config, history, model, evaluate), load_runs (a table)
    reports/                  figures, report.md, comparisons, TensorBoard
    experiment                train(config) and resume(run_dir): a config to a finished run folder
    tools/                    sweeps (in parallel too), Optuna searches, benchmarks, the yardstick, ONNX export
    serve/                    `fmnist serve`: a web page and a JSON API for a model (optional extra)
    cli/                      the `fmnist` command

Nothing in the library prints: it logs to the `fmnist` logger (`logging.basicConfig(level=logging.INFO,
format="%(message)s")` shows it) and draws progress bars only when asked (`train(config, progress=True)`).
"""

from fmnist.data.fashion import CLASS_NAMES, MEAN, STD
from fmnist.data.loader import TensorLoader, normalize
from fmnist.data.splits import DataSplits, Split, load_splits
from fmnist.errors import ArgumentTypeError, CheckpointError, ConfigError, DataError, FmnistError
from fmnist.experiment import RunResult, resume, train
from fmnist.explain import attribution_maps
from fmnist.faults import RunAbandoned, StopTraining
from fmnist.inference import (
    CheckpointEvaluation,
    Prediction,
    Predictions,
    TrainedModel,
    evaluate_checkpoint,
    load_model,
    predict,
)
from fmnist.models import count_parameters, create_model, list_models, register_model
from fmnist.models.layers import LearnedAffine
from fmnist.reports.compare import compare_runs
from fmnist.reports.report import report_run
from fmnist.results import History, Run, load_run, load_runs
from fmnist.tools.calibrate import calibrate_run
from fmnist.tools.export import export_onnx
from fmnist.tools.lr_find import LrFindResult, find_lr
from fmnist.training.build import Training, build_training
from fmnist.training.config import TrainConfig
from fmnist.training.early_stopping import EarlyStopping
from fmnist.training.loop import EvalResult, Optimization, evaluate, fit, train_one_epoch
from fmnist.training.recipes import Recipe, list_recipes
from fmnist.version import __version__

__all__ = [
    "ArgumentTypeError",
    "CLASS_NAMES",
    "CheckpointError",
    "CheckpointEvaluation",
    "ConfigError",
    "DataError",
    "DataSplits",
    "EarlyStopping",
    "EvalResult",
    "FmnistError",
    "History",
    "LearnedAffine",
    "LrFindResult",
    "MEAN",
    "Optimization",
    "Prediction",
    "Predictions",
    "Recipe",
    "Run",
    "RunAbandoned",
    "RunResult",
    "STD",
    "Split",
    "StopTraining",
    "TensorLoader",
    "TrainConfig",
    "TrainedModel",
    "Training",
    "__version__",
    "attribution_maps",
    "build_training",
    "calibrate_run",
    "compare_runs",
    "count_parameters",
    "create_model",
    "evaluate",
    "evaluate_checkpoint",
    "export_onnx",
    "find_lr",
    "fit",
    "list_models",
    "list_recipes",
    "load_model",
    "load_run",
    "load_runs",
    "load_splits",
    "normalize",
    "predict",
    "register_model",
    "report_run",
    "resume",
    "train",
    "train_one_epoch",
]
