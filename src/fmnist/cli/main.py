"""The `fmnist` command: parse arguments, call the library, print. The library does the work.

Only this module decides what reaches the terminal: it routes the library's `fmnist` loggers to
stdout and other libraries' warnings to stderr, one line each and never a traceback (cli/logs.py),
turns a user's mistake (FmnistError, an unwritable path) into one line on stderr with exit code 2,
and a Ctrl-C or SIGTERM into one line with the command that continues the work.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

from fmnist.arguments import command_line_spelling, given_as
from fmnist.cli.logs import other_libraries_in_one_line, show_library_logs, stop_showing_library_logs
from fmnist.cli.options import add_train_options, check_positive, overrides_from, rerun_command
from fmnist.data.fashion import VAL_SIZE
from fmnist.errors import FmnistError
from fmnist.faults import STOP_SIGNALS, Terminated, TrainingInterrupted, sigterm_raises
from fmnist.training.config import AMP_MODES, DEVICES, EVAL_BATCH_SIZE, FIELDS, build_config
from fmnist.training.distributed import ProcessLost, launched_processes, process_rank
from fmnist.version import __version__


class UsageError(FmnistError):
    pass


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit 2), not usage text plus a line."""

    def error(self, message: str):
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def parse_args(self, args=None, namespace=None):
        """As argparse's, but an unknown option points at the subcommand's help, where the options are."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            command = " ".join(filter(None, [self.prog, getattr(parsed, "command", None)]))
            raise UsageError(f"unrecognized arguments: {' '.join(extras)} (see `{command} --help`)")
        return parsed


# lr-find drives the learning rate itself and trains no run: these options have no effect there:
# --help leaves them out, and given, they are refused in one line that says why.
LR_FIND_IGNORES = ("recipe", "epochs", "time_budget", "scheduler", "lr", "max_lr", "step_size", "gamma", "ema",
                   "calibrate", "tta_flip", "tta_shift", "eval_batch_size", "out", "name", "tensorboard",
                   "limit_batches", "patience", "min_delta", "mlflow", "mlflow_experiment", "report")


# tune names and places its trials' run folders itself (trial-NNNN in OUT/STUDY).
TUNE_REFUSES = ("name",)
DATA_DIR_HELP = "folder holding the four IDX files (default: searched, see `fmnist data info`)"
DEVICE_HELP = "one of " + ", ".join(DEVICES) + " (auto: CUDA, then MPS, then the CPU)"


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="fmnist", description="A fast, readable PyTorch lab for Fashion-MNIST.")
    parser.add_argument("--version", action="version", version=f"fmnist {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str) -> ArgumentParser:
        return commands.add_parser(name, help=help, description=help)

    def json_option(sub: ArgumentParser) -> None:
        sub.add_argument("--json", action="store_true", help="print the result as JSON")

    def calibrate_option(sub: ArgumentParser) -> None:
        sub.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                         help="raw probabilities: do not apply the run's temperature (calibration.json)")

    def test_data_options(sub: ArgumentParser) -> None:
        sub.add_argument("--data-dir", help=DATA_DIR_HELP)
        sub.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP + " (default: auto)")
        sub.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                         help=f"test images per batch (default: {EVAL_BATCH_SIZE})")
        sub.add_argument("--allow-unverified-data", action="store_true",
                         help="test on IDX files that are not the official Fashion-MNIST (recorded as such)")

    train = command("train", "train a model; prints the test accuracy and the run folder")
    add_train_options(train)
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a stopped run from its last completed epoch, with its saved config")
    json_option(train)

    evaluate = command("evaluate", "test loss, accuracy and per-class accuracy of a checkpoint")
    evaluate.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    test_data_options(evaluate)
    calibrate_option(evaluate)
    json_option(evaluate)

    report = command("report", "evaluate a run's best checkpoint and write its figures and report.md")
    report.add_argument("run_dir", metavar="RUN_DIR")
    test_data_options(report)
    calibrate_option(report)

    calibrate = command("calibrate", "fit a run's temperature on its validation split (runs trained before "
                                     "temperatures, or with --no-calibrate)")
    calibrate.add_argument("run_dir", metavar="RUN_DIR")
    calibrate.add_argument("--data-dir", help="folder holding the four IDX files (default: the run's, else searched, "
                                              "see `fmnist data info`)")
    calibrate.add_argument("--device", default="auto", choices=DEVICES, help=DEVICE_HELP + " (default: auto)")
    calibrate.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                           help=f"validation images per batch (default: {EVAL_BATCH_SIZE})")
    calibrate.add_argument("--force", action="store_true", help="replace an existing calibration.json")
    json_option(calibrate)

    summary = command("summary", "layer table: output shapes, parameters, multiply-adds per image")
    summary.add_argument("model", metavar="MODEL")

    compare = command("compare", "table and validation curves of several runs side by side")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                         help="run folders, or folders holding them at any depth (runs/, a sweep)")
    compare.add_argument("--out", default="comparison", help="folder for comparison.md/.csv/.png (default: comparison)")
    compare.add_argument("--sort", metavar="COLUMN",
                         help="order the runs by a column of comparison.csv, e.g. test_accuracy (default: as found)")
    compare.add_argument("--descending", action="store_true", help="with --sort: largest first")

    sweep = command("sweep", "train a grid of --set values x seeds, then compare (mean ± std)")
    add_train_options(sweep)
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                       help="an option and its values (repeatable; the grid is every combination)")
    sweep.add_argument("--seeds", type=int, default=1,
                       help="runs per grid point, seeds --seed, --seed + 1, ... (default: 1)")
    sweep.add_argument("--jobs", type=int, default=1,
                       help="runs trained at once, each in its own process (default: 1, in turn, in this process)")
    sweep.add_argument("--threads-per-job", type=int, metavar="T",
                       help="torch threads of each job (default: the cores here divided by --jobs; runs in turn keep "
                            "this process's threads, as fmnist train does)")

    tune = command("tune", "search options with Optuna; any number of processes and machines share one study "
                           "(pip install -e '.[tune]')")
    add_train_options(tune, refused=TUNE_REFUSES)
    tune.add_argument("--space", metavar="SPACE.toml",
                      help="the options to search: one [OPTION] table each, with low, high and log = true|false "
                           "for a number, or choices = [...] (docs/scaling.md)")
    tune.add_argument("--trials", type=int, help="trials this process runs (other processes on the study add theirs)")
    tune.add_argument("--storage", required=True, metavar="URL",
                      help="where the study lives: journal:PATH for a journal file (Optuna's JournalFileBackend: one "
                           "machine, or a file system all machines share), or an SQLAlchemy URL: sqlite:///search.db, "
                           "postgresql://USER@HOST/DB, mysql://USER@HOST/DB")
    tune.add_argument("--study", required=True, metavar="NAME", help="the study; its trials' runs go to OUT/NAME/")
    tune.add_argument("--pruner", choices=["median", "none"],
                      help="median (default): stop a trial whose validation accuracy after an epoch is below the "
                           "median of earlier trials at that epoch; none: every trial runs all its epochs")
    tune.add_argument("--show", action="store_true",
                      help="print the best trials and write optimization_history.png and param_importances.png "
                           "to OUT/NAME; trains nothing")
    tune.add_argument("--top", type=int, help="with --show: trials in the table (default: 10)")

    predict = command("predict", "classify image files (PNG, JPEG, BMP, WebP, GIF) or folders of them")
    predict.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    predict.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders")
    predict.add_argument("--top-k", type=int, default=3, help="how many classes to show per image, 1-10 (default: 3)")
    predict.add_argument("--no-invert", dest="invert", action="store_false",
                         help="never invert (by default images on a light background are inverted to light on black)")
    predict.add_argument("--device", default="auto", choices=DEVICES, help="where the model runs (default: auto)")
    predict.add_argument("--explain", metavar="OUT_DIR",
                         help="also write one PNG per image into OUT_DIR (created if missing): the image and its "
                              "attribution map, what changed the model's answer most (pip install -e '.[explain]')")
    calibrate_option(predict)
    json_option(predict)

    export = command("export", "write a checkpoint's model as ONNX (pip install -e '.[onnx]')")
    export.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    export.add_argument("--format", default="onnx", choices=["onnx"],
                        help="the file format; only onnx for now (default: onnx)")
    export.add_argument("--out", metavar="FILE", help="where to write (default: RUN_DIR/model.onnx)")
    export.add_argument("--force", action="store_true", help="replace an existing file (never a checkpoint)")
    calibrate_option(export)

    serve = command("serve", "a web page and a JSON API for a trained model (pip install -e '.[serve]')")
    serve.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on; 0 picks a free one (default: 8000)")
    serve.add_argument("--device", default="auto", choices=DEVICES, help="where the model runs (default: auto)")
    serve.add_argument("--max-upload-mb", type=float, default=10.0,
                       help="largest request body in MB; larger ones are answered 413 (default: 10)")
    serve.add_argument("--max-batch", type=int,
                       help="most images per forward pass when requests arrive together (default: 256; 1: no batching)")
    calibrate_option(serve)

    lr_find = command("lr-find", "learning-rate range test: loss against an exponentially growing learning rate")
    lr_find.add_argument("start", metavar="RECIPE|RUN_DIR",
                         help="a recipe to test, or a run folder to start from (its best.pt, else last.pt; only read)")
    add_train_options(lr_find, refused=LR_FIND_IGNORES)
    lr_find.add_argument("--steps", type=int, default=200, help="batches, one learning rate each (default: 200)")
    lr_find.add_argument("--start-lr", type=float, default=1e-7, help="first learning rate (default: 1e-07)")
    lr_find.add_argument("--end-lr", type=float, default=10.0, help="last learning rate (default: 10.0)")
    lr_find.add_argument("--plot", metavar="PNG", help="where to draw the curve (default: lr-find-<name>.png)")
    lr_find.add_argument("--force", action="store_true", help="replace an existing plot file")
    json_option(lr_find)

    json_option(command("models", "the registered models: parameters and what each is"))
    recipes = command("recipes", "the named recipes: what each is for, its model, epochs and precision")
    recipes.add_argument("name", metavar="NAME", nargs="?", help="show this recipe in full")
    json_option(recipes)

    bench = command("bench", "training/evaluation images/s against the conventional DataLoader loop")
    bench.add_argument("--recipe", help="benchmark this recipe's model and batch size")
    bench.add_argument("--model", help="model name (default: the recipe's, else affine-cnn)")
    bench.add_argument("--batch-size", type=int, help="training batch size (default: the recipe's, else 64)")
    bench.add_argument("--steps", type=int, help=f"timed training batches (default: {BENCH_STEPS})")
    bench.add_argument("--warmup", type=int, help=f"untimed batches first (default: {BENCH_WARMUP})")
    bench.add_argument("--no-conventional", action="store_true", default=None, help="skip the conventional loop")
    bench.add_argument("--device", choices=DEVICES, help=DEVICE_HELP + " (default: auto)")
    bench.add_argument("--amp", choices=AMP_MODES, help="mixed precision of fmnist's loop, as in training (the "
                                                         "conventional loop runs in fp32, as the projects ran it; "
                                                         "default: the recipe's, else auto)")
    bench.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=None,
                       help="on CUDA GPUs of compute capability 8.0 and later: float32 products in TF32, as in "
                            "training (default: on; --no-tf32 measures full fp32)")
    bench.add_argument("--data-dir", help=DATA_DIR_HELP)
    bench.add_argument("--val-size", type=int, help=f"validation images held out, as in training (default: {VAL_SIZE})")
    bench.add_argument("--allow-unverified-data", action="store_true", default=None,
                       help="run on IDX files that are not the official Fashion-MNIST")
    bench.add_argument("--time-to-accuracy", metavar="RECIPE",
                       help="train RECIPE, timing when test accuracy first reaches 0.90, 0.91, ..., 0.95")
    bench.add_argument("--seeds", type=int, help="with --time-to-accuracy: seeds 42, 43, ... (mean ± std; default: 1)")
    bench.add_argument("--epochs", type=int, help="with --time-to-accuracy: override the recipe's epochs")
    bench.add_argument("--time-budget", metavar="DURATION",
                       help="with --time-to-accuracy: train each seed for this long (90s, 5m, 1h), as fmnist train "
                            "--time-budget plans it")
    json_option(bench)

    data = command("data", "find, verify or download the data set")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    info = data_commands.add_parser("info", help="where the files are, verification, counts, mean and std")
    info.add_argument("--data-dir", help=DATA_DIR_HELP)
    json_option(info)
    download = data_commands.add_parser("download", help="download and verify the four files")
    download.add_argument("--dir", help="target folder (default: the user cache, ~/.cache/fmnist)")
    download.add_argument("--mirror", action="append", help="base URL to try (repeatable; default: official mirrors)")
    download.add_argument("--force", action="store_true", help="replace files there that are not the official ones")
    ensure = data_commands.add_parser("ensure", help="find the data set, else install it (apt) or download it")
    ensure.add_argument("--data-dir", help=DATA_DIR_HELP)
    ensure.add_argument("--mirror", action="append", help="base URL to try when downloading")
    ensure.add_argument("--no-apt", action="store_true", help="never try apt-get")
    return parser


def typed_command() -> list[str]:
    """The command as the user would type it again (`python -m fmnist` is the `fmnist` command)."""
    return ["fmnist", *sys.argv[1:]]


def print_json(value) -> None:
    print(json.dumps(value, indent=2))


def cmd_train(args: argparse.Namespace) -> int:
    from fmnist.experiment import resume, train

    overrides = overrides_from(args)
    progress = sys.stderr.isatty()
    if args.resume:
        if args.config:
            raise UsageError("--config with --resume: a resumed run keeps its own config; drop --config")
        result = resume(args.resume, progress=progress, **overrides)
    else:
        config = build_config(args.config, overrides)
        result = train(config, progress=progress, details={"command": typed_command(), "rerun": rerun_command(config)})
    if args.json:
        print_json({"path": str(result.path), "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
                    "best_epoch": result.best_epoch, "best_val_accuracy": result.best_val_accuracy,
                    "wall_seconds": result.wall_seconds, "budget_used": result.summary.get("budget_used")})
        return 0
    print(f"test accuracy {result.test_accuracy:.4f}  test loss {result.test_loss:.4f}  "
          f"(best epoch {result.best_epoch}, {result.wall_seconds:.1f} s)")
    if result.summary.get("budget_used") is not None:
        print(f"time budget {result.summary['time_budget']}: training and validation took "
              f"{result.summary['budget_used_seconds']:,.1f} s ({result.summary['budget_used']:.1%} of it)")
    print(f"run folder: {result.path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fmnist.data.fashion import CLASS_NAMES
    from fmnist.inference import evaluate_checkpoint

    check_positive(args.batch_size, "--batch-size")
    evaluation = evaluate_checkpoint(args.checkpoint, args.data_dir, args.device, args.batch_size,
                                     args.allow_unverified_data, args.calibrate)
    result, state = evaluation.result, evaluation.state
    per_class = dict(zip(CLASS_NAMES, result.per_class_accuracy(), strict=True))
    if args.json:
        print_json({"checkpoint": str(evaluation.path), "model": state["model_name"], "epoch": state["epoch"],
                    "test_loss": result.loss, "test_accuracy": result.accuracy, "images": len(result.labels),
                    "per_class_accuracy": per_class, "calibration": evaluation.calibration,
                    "data_dir": str(evaluation.data_dir), "data_verified": evaluation.data_verified})
        return 0
    print(f"checkpoint: {evaluation.path} ({state['model_name']}, epoch {state['epoch']})")
    print(f"test loss {result.loss:.4f}  test accuracy {result.accuracy:.4f}  ({len(result.labels):,} images)")
    for line in calibration_lines(evaluation.calibration):
        print(line)
    for name, accuracy in per_class.items():
        print(f"  {name:<12} {accuracy:.4f}")
    return 0


def calibration_lines(calibration: dict) -> list[str]:
    """ECE, Brier and NLL of the raw probabilities, and after the run's temperature when it has one."""
    def measures(values: dict) -> str:
        return f"ECE {values['ece']:.4f}  Brier {values['brier']:.4f}  NLL {values['nll']:.4f}"

    lines = [f"calibration, raw probabilities:  {measures(calibration['before'])}"]
    if calibration.get("after"):
        lines.append(f"after temperature {calibration['temperature']:.3f}:    {measures(calibration['after'])}  "
                     "(what predict gives)")
    return lines


def cmd_calibrate(args: argparse.Namespace) -> int:
    from fmnist.tools.calibrate import calibrate_run

    check_positive(args.batch_size, "--batch-size")
    record = calibrate_run(args.run_dir, args.data_dir, args.device, args.batch_size, args.force)
    if args.json:
        print_json(record)
        return 0
    print(f"temperature {record['temperature']:.4f} (fitted on {record['images']:,} validation images: NLL "
          f"{record['validation_nll_before']:.4f} -> {record['validation_nll_after']:.4f})")
    print(f"written: {Path(args.run_dir) / 'calibration.json'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fmnist.reports.report import report_run

    check_positive(args.batch_size, "--batch-size")
    path = report_run(args.run_dir, args.data_dir, args.device, args.batch_size, args.allow_unverified_data,
                      args.calibrate)
    print(f"report: {path}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from fmnist.models.summary import model_summary

    print(model_summary(args.model))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fmnist.reports.compare import compare_runs

    print(compare_runs(args.run_dirs, args.out, args.sort, args.descending))
    print(f"written: {args.out}/comparison.md, comparison.csv, comparison.png")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fmnist.tools.sweep import SweepJobFailed, run_sweep

    command = typed_command()
    try:
        sweep_dir, table = run_sweep(args.config, overrides_from(args), args.set, args.seeds,
                                     {"command": command}, progress=sys.stderr.isatty(), jobs=args.jobs,
                                     threads_per_job=args.threads_per_job)
    except (TrainingInterrupted, SweepJobFailed) as stopped_sweep:
        if args.name is None:  # the folder was named after the time it started: name it to continue it
            command = [*command, "--out", str(stopped_sweep.sweep_path.parent), "--name", stopped_sweep.sweep_path.name]
        stopped_sweep.continue_command = shlex.join(command)
        raise
    print(table)
    print(f"sweep folder: {sweep_dir} (comparison.md/.csv/.png: per grid point; runs.md/.csv: per run)")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from fmnist.tools.tune import run_tune, show_study

    overrides = overrides_from(args)
    if args.show:
        given = [given_as(name, value) for name, value in overrides.items() if value is not None and name != "out"]
        given += [option for option in ("--space", "--trials", "--pruner") if getattr(args, option[2:]) is not None]
        if given or args.config:
            raise UsageError(f"--show reads the study and trains nothing; drop {(given or ['--config'])[0]}")
        top = 10 if args.top is None else args.top
        check_positive(top, "--top")
        table, written = show_study(args.storage, args.study, args.out or FIELDS["out"].metadata["default"], top)
        print(table)
        for path in written:
            print(f"written: {path}")
        return 0
    if args.space is None or args.trials is None:
        raise UsageError("give --space SPACE.toml and --trials N (or --show to see the study)")
    if args.top is not None:
        raise UsageError("--top applies to --show only (the table of the best trials); drop it")
    try:
        study_dir, table = run_tune(args.config, overrides, args.space, args.trials, args.storage, args.study,
                                    args.pruner or "median", {"command": typed_command()})
    except TrainingInterrupted as interruption:
        interruption.continue_command = shlex.join(typed_command())
        raise
    print(table)
    print(f"study folder: {study_dir} (trial-NNNN run folders; fmnist tune --show for the plots)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from fmnist.data.fashion import NUM_CLASSES
    from fmnist.inference import load_model, predict

    if not 1 <= args.top_k <= NUM_CLASSES:
        raise UsageError(f"--top-k {args.top_k}: must be between 1 and {NUM_CLASSES}")
    model = load_model(args.checkpoint, args.device, calibrate=args.calibrate)
    explain_to = None
    if args.explain is not None:
        from fmnist.tools.explain_files import explain_folder

        explain_to = explain_folder(args.explain, args.images)  # checked before any work
    predictions = predict(model, args.images, invert=args.invert, skip_unreadable=True)
    maps = {}
    if explain_to is not None:
        from fmnist.tools.explain_files import write_explanations

        maps = write_explanations(model, explain_to, predictions, args.images, args.invert)
    failures = [prediction for prediction in predictions if prediction.error is not None]
    for failure in failures:
        print(f"fmnist: error: {failure.error}", file=sys.stderr)
    if args.json:
        print_json([{**prediction.to_dict(args.top_k), **({"map": str(maps[index])} if index in maps else {})}
                    for index, prediction in enumerate(predictions)])
    else:
        for prediction in predictions:
            if prediction.error is None:
                print(prediction.to_line(args.top_k))
        if maps:
            print(f"maps: {len(maps)} PNG files in {explain_to.folder}")
    return 1 if failures else 0


def cmd_export(args: argparse.Namespace) -> int:
    from fmnist.tools.export import export_onnx

    written = export_onnx(args.checkpoint, args.out, args.force, args.calibrate)
    print(f"wrote {written} (ONNX; input 'images' (N, 1, 28, 28) normalized, output 'logits' (N, 10))")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from fmnist.serve import serve

    serve(args.checkpoint, host=args.host, port=args.port, max_upload_mb=args.max_upload_mb,
          max_batch=args.max_batch, device=args.device, calibrate=args.calibrate)
    return 0  # stopped by Ctrl-C or SIGTERM after answering the requests in flight: a clean stop


def cmd_lr_find(args: argparse.Namespace) -> int:
    from fmnist.files import reader_lock
    from fmnist.runs.checkpoint import load_checkpoint
    from fmnist.runs.folder import check_output_file, is_run_folder, read_saved_config
    from fmnist.tools.lr_find import find_lr, plot
    from fmnist.training.config import TrainConfig
    from fmnist.training.recipes import RECIPES

    overrides = overrides_from(args)
    ignored = [name for name in LR_FIND_IGNORES if overrides[name] is not None]
    if ignored:
        raise UsageError(f"{given_as(ignored[0], overrides[ignored[0]])}: lr-find sweeps the learning rate itself "
                         "over --steps batches and trains no run; drop it")
    given = {name: value for name, value in overrides.items() if value is not None}
    start = Path(args.start)
    weights = None
    if is_run_folder(start):
        if args.config:
            raise UsageError(f"--config with a run folder: lr-find {args.start} starts from the run's own config; "
                             "give its options as flags, or give a recipe instead of the run folder")
        with reader_lock(start, "lr-find: run folder"):  # not while the run is training: its files are changing
            config = TrainConfig.from_saved({**read_saved_config(start)["config"], **given})
            weights = load_checkpoint(start)["model"] if any(start.glob("*.pt")) else None
        name = start.name
    elif args.start not in RECIPES and (start.exists() or os.sep in args.start):
        raise UsageError(f"lr-find {args.start}: not a run folder (no config.json) nor a recipe; give a run folder "
                         "or one of the recipes that `fmnist recipes` lists")
    else:
        config = build_config(args.config, {**given, "recipe": args.start})
        name = args.start
    out = Path(args.plot) if args.plot else Path(f"lr-find-{name}.png")
    check_output_file(out, reads=list(start.glob("*.pt")) if start.is_dir() else [], force=args.force,
                      owner="lr-find", name="plot", example="lr-find.png")
    result = find_lr(config, args.start_lr, args.end_lr, args.steps, weights)
    plot(result, out)
    if args.json:
        print_json({"suggested_lr": result.suggestion, "lowest_loss_lr": result.lowest_loss_at, "plot": str(out),
                    "learning_rates": result.learning_rates, "smoothed_losses": result.losses})
        return 0
    if result.suggestion is None:
        print(f"the loss was not finite from the first batch; try a lower --start-lr (plot: {out})")
        return 1
    print(f"lowest smoothed loss at lr {result.lowest_loss_at:.2e}; suggested --lr {result.suggestion:.2e} "
          f"(a tenth of it: OneCycle's peak, or where the other schedules start)")
    print(f"plot: {out}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from fmnist.cli.listings import model_rows, models_text, terminal_width

    print_json(model_rows()) if args.json else print(models_text(terminal_width()))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from fmnist.cli.listings import recipe_text, recipes_text, terminal_width
    from fmnist.training.recipes import get_recipe, list_recipes

    recipes = [get_recipe(args.name)] if args.name else list_recipes()
    if args.json:
        document = [{"name": recipe.name, "summary": recipe.summary, "source": recipe.source, "claim": recipe.claim,
                     "description": recipe.description, "measured": recipe.measured or None,
                     "budget": recipe.budget or None, "budget_command": recipe.budget_command(),
                     "measured_at_budget": recipe.measured_at_budget or None,
                     "options": recipe.overrides} for recipe in recipes]
        print_json(document[0] if args.name else document)
    elif args.name:
        print(recipe_text(recipes[0], terminal_width()))
    else:
        print(recipes_text(terminal_width()))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from fmnist.data import download
    from fmnist.data.fashion import CLASS_NAMES
    from fmnist.data.locate import find_data_dir
    from fmnist.data.splits import describe_split, read_split
    from fmnist.data.verify import verify_dir

    if args.data_command == "download":
        print(f"Fashion-MNIST is in {download.download(args.dir, args.mirror, force=args.force)}")
        return 0
    if args.data_command == "ensure":
        download.ensure(args.data_dir, args.mirror, use_apt=not args.no_apt)
        return 0
    directory = find_data_dir(args.data_dir)
    files = verify_dir(directory)
    verified = all(problem is None for problem in files.values())
    splits = {split: describe_split(read_split(directory, split)) for split in ("train", "test")}
    if args.json:
        print_json({"location": str(directory), "verified": verified,
                    "files": {stem: problem or "verified" for stem, problem in files.items()},
                    "splits": {split: {**info, "per_class": dict(zip(CLASS_NAMES, info["per_class"], strict=True))}
                               for split, info in splits.items()}})
        return 0 if verified else 1
    print(f"location: {directory}")
    for stem, problem in files.items():
        print(f"  {stem}: {'verified (SHA-256 of the content)' if problem is None else problem}")
    for split, info in splits.items():
        print(f"{split}: {info['count']:,} images, pixel mean {info['mean']:.4f}, std {info['std']:.4f}")
        print("  " + ", ".join(f"{name} {count:,}" for name, count in zip(CLASS_NAMES, info["per_class"], strict=True)))
    print("verification: " + ("all four files match the official Fashion-MNIST" if verified else "FAILED"))
    return 0 if verified else 1


BENCH_STEPS, BENCH_WARMUP = 200, 20
# Which of bench's own options each of its two measurements uses; the other's are refused.
THROUGHPUT_ONLY = {"steps": "--steps", "warmup": "--warmup", "no_conventional": "--no-conventional",
                   "recipe": "--recipe"}
TIME_TO_ACCURACY_ONLY = {"seeds": "--seeds", "epochs": "--epochs", "time_budget": "--time-budget"}


def cmd_bench(args: argparse.Namespace) -> int:
    from fmnist.tools import bench

    wrong = THROUGHPUT_ONLY if args.time_to_accuracy else TIME_TO_ACCURACY_ONLY
    for name, flag in wrong.items():
        if getattr(args, name) is not None:
            other = "the throughput benchmark" if args.time_to_accuracy else "--time-to-accuracy"
            raise UsageError(f"{flag} applies to {other} only" + (
                "; --time-to-accuracy RECIPE names the recipe" if name == "recipe" else ""))
    steps = BENCH_STEPS if args.steps is None else args.steps
    warmup = BENCH_WARMUP if args.warmup is None else args.warmup
    seeds = 1 if args.seeds is None else args.seeds
    check_positive(steps, "--steps")
    check_positive(seeds, "--seeds")
    if warmup < 0:
        raise UsageError(f"--warmup {warmup}: must be 0 or more")
    overrides = {
        "recipe": args.time_to_accuracy or args.recipe, "model": args.model, "batch_size": args.batch_size,
        "device": args.device, "data_dir": args.data_dir, "val_size": args.val_size, "epochs": args.epochs,
        "allow_unverified_data": args.allow_unverified_data, "amp": args.amp, "time_budget": args.time_budget,
        "tf32": args.tf32,
    }
    if args.time_to_accuracy:
        configs = [build_config(None, {**overrides, "seed": 42 + offset}) for offset in range(seeds)]
        results = [bench.time_to_accuracy(config) for config in configs]
        summary = bench.summarize_seeds(results)
        document = {"summary": summary, "runs": results}
        print(json.dumps(document, indent=2) if args.json else bench.format_time_to_accuracy(summary))
        return 0
    config = build_config(None, overrides)
    result = bench.benchmark(config, warmup=warmup, steps=steps, conventional=not args.no_conventional)
    print(json.dumps(result, indent=2) if args.json else bench.format_result(result))
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "calibrate": cmd_calibrate,
    "summary": cmd_summary,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "tune": cmd_tune,
    "predict": cmd_predict,
    "export": cmd_export,
    "lr-find": cmd_lr_find,
    "serve": cmd_serve,
    "models": cmd_models,
    "recipes": cmd_recipes,
    "bench": cmd_bench,
    "data": cmd_data,
}

def os_error_line(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    hint = {errno.ENOSPC: "free some space", errno.EDQUOT: "free some space", errno.EROFS: "choose a writable place",
            errno.EACCES: "choose a writable place", errno.EPERM: "choose a writable place"}.get(error.errno)
    return f"{where}{error.strerror or error}" + (f"; {hint}" if hint else "")


def stopped(interruption: TrainingInterrupted) -> int:
    """The one line of a stop by signal, then the command that continues the work."""
    print(f"fmnist: {interruption}", file=sys.stderr)
    continue_command = getattr(interruption, "continue_command", None)
    if continue_command is not None:
        print(f"continue with: {continue_command}", file=sys.stderr)
    elif interruption.run_path is not None:
        print(f"resume with: {resume_command(interruption.run_path)}", file=sys.stderr)
    return interruption.exit_code


def resume_command(run_path: Path) -> str:
    """`fmnist train --resume RUN_DIR`, under torchrun when this run had several processes."""
    command = f"fmnist train --resume {shlex.quote(str(run_path))}"
    if launched_processes() == 1:
        return command
    per_node = os.environ.get("LOCAL_WORLD_SIZE", str(launched_processes()))
    if per_node == str(launched_processes()):
        return f"torchrun --nproc-per-node {per_node} -m {command}"
    return f"torchrun <the same torchrun options> -m {command}"


def tell_torchrun(line: str) -> None:
    """Under torchrun, leave the error's line where torchrun's failure summary reads it (its "traceback"
    field, else "To enable traceback see ..."): it shows even when torchrun stopped rank 0 before it
    printed, or when only another rank failed (rank 0 alone prints)."""
    reply_file = os.environ.get("TORCHELASTIC_ERROR_FILE")
    if not reply_file:
        return
    try:
        Path(reply_file).write_text(json.dumps({"message": line, "timestamp": int(time.time())}))
    except OSError:
        pass  # torchrun's summary then says what it says without it


@contextmanager
def only_rank_0_speaks() -> Iterator[None]:
    """Under torchrun every process runs this command; rank 0 alone prints (its errors too: the others
    raise the same ones), except that a process that lost the others says so (rank 0 may be the one
    gone). A crash's traceback still shows on every process."""
    if process_rank() == 0:
        yield
        return
    with open(os.devnull, "w") as nowhere, redirect_stdout(nowhere), redirect_stderr(nowhere):
        yield


def main(argv: list[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a file name in another encoding must not crash the output
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    # Errors name options as this command takes them (`--batch-size 0`), not as Python does (arguments.py).
    with only_rank_0_speaks(), other_libraries_in_one_line(), command_line_spelling(), sigterm_raises():
        return run_command(argv)


def quiet_from_here() -> None:
    """The command has ended; what is left is to say how. torchrun SIGTERMs every process once one has
    ended, and a signal now would cut that line short or end in a traceback: from here on Ctrl-C and
    SIGTERM are ignored (faults.sigterm_raises puts the caller's handlers back)."""
    try:
        for number in STOP_SIGNALS:
            signal.signal(number, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


def run_command(argv: list[str] | None) -> int:
    try:
        try:
            args = build_parser().parse_args(argv)
            show_library_logs(sys.stderr if getattr(args, "json", False) else sys.stdout)
            return COMMANDS[args.command](args)
        finally:
            quiet_from_here()
    except (FmnistError, TrainingInterrupted, OSError, KeyboardInterrupt) as ending:
        return say_why_it_ended(ending)
    finally:
        stop_showing_library_logs()


def say_why_it_ended(ending: BaseException) -> int:
    """Print the one line (and the command that continues, where there is one); return the exit code.

    A signal that came while an error was already on its way out (torchrun stopping the processes
    left, or a second Ctrl-C) interrupts that error: the error is what the user needs to read."""
    if isinstance(ending, KeyboardInterrupt) and isinstance(ending.__context__, (FmnistError, TrainingInterrupted)):
        ending = ending.__context__
    if isinstance(ending, ProcessLost):  # said by every process left: rank 0 may be the one gone
        speaking = sys.stderr if process_rank() == 0 else sys.__stderr__ or sys.stderr
        print(f"fmnist: error: {ending}", file=speaking)
        if ending.run_path is not None:
            print(f"resume with: {resume_command(ending.run_path)}", file=speaking)
        tell_torchrun(f"fmnist: error: {ending}")
        return ending.exit_code
    if isinstance(ending, FmnistError):
        print(f"fmnist: error: {ending}", file=sys.stderr)
        if getattr(ending, "continue_command", None) is not None:  # a sweep whose job failed
            print(f"continue with: {ending.continue_command}", file=sys.stderr)
        tell_torchrun(f"fmnist: error: {ending}")
        return ending.exit_code
    if isinstance(ending, TrainingInterrupted):
        return stopped(ending)
    if isinstance(ending, BrokenPipeError):  # the reader went away (`fmnist recipes | head`): nothing left to say
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush from failing again
        return 141
    if isinstance(ending, OSError):  # a full disk, a read-only folder: say which file, in one line
        print(f"fmnist: error: {os_error_line(ending)}", file=sys.stderr)
        return 2
    if isinstance(ending, Terminated):
        print("fmnist: stopped by SIGTERM", file=sys.stderr)
        return 143
    print("fmnist: interrupted", file=sys.stderr)
    return 130
