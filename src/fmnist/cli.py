"""The `fmnist` command: parse arguments and dispatch. The library modules do the work."""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import fields
from pathlib import Path

from fmnist.config import DEVICES, EVAL_BATCH_SIZE, OPTIMIZERS, SCHEDULERS, TrainConfig
from fmnist.errors import FmnistError
from fmnist.faults import TrainingInterrupted
from fmnist.models.resnet import FROM_TORCHVISION_CACHE

TRAIN_HELP = {
    "recipe": "start from a named recipe (see `fmnist recipes`); other flags override it",
    "model": "model name (see `fmnist models`)",
    "epochs": "passes over the training split",
    "batch_size": "training batch size",
    "optimizer": "one of " + ", ".join(OPTIMIZERS),
    "lr": "learning rate (OneCycle ignores it: it starts at max-lr/25)",
    "weight_decay": "decoupled for AdamW, L2 for SGD and Adam",
    "momentum": "SGD momentum",
    "nesterov": "SGD with Nesterov momentum",
    "scheduler": "one of " + ", ".join(SCHEDULERS),
    "max_lr": "OneCycle's peak learning rate",
    "step_size": "StepLR: epochs between decays",
    "gamma": "StepLR: decay factor",
    "label_smoothing": "cross-entropy label smoothing in [0, 1)",
    "loss": "one of ce, focal (validation and test losses stay cross-entropy)",
    "focal_gamma": "focal loss gamma (0 with alpha 1 is cross-entropy)",
    "focal_alpha": "focal loss alpha (one weight for every class)",
    "mean": "input normalization mean (0..1 scale)",
    "std": "input normalization std (0..1 scale)",
    "rotate_degrees": "augment: rotate each training image by up to this many degrees either way",
    "hflip": "augment: mirror each training image left-right with probability 1/2",
    "crop_padding": "augment: pad by this many pixels, then crop 28x28 at a random offset",
    "erase_prob": "augment: probability of erasing a random rectangle of each training image",
    "tta_flip": "evaluate each validation and test image and its mirror image, averaging the logits",
    "pretrained": "resnet18: start from ImageNet weights in PATH, or in torchvision's cache if no PATH",
    "val_size": "training images held out for validation",
    "split_seed": "seed of the validation split (independent of --seed)",
    "seed": "seed for weights, dropout and batch order",
    "device": "one of " + ", ".join(DEVICES),
    "eval_batch_size": "batch size for validation and test",
    "limit_batches": "stop each training epoch after this many batches (smoke tests)",
    "data_dir": "folder holding the four IDX files",
    "out": "folder for run folders",
    "name": "run folder name (default: time and model)",
    "tensorboard": "also write TensorBoard event files into RUN_DIR/tensorboard (needs fmnist[tensorboard])",
}


# Flags whose value may be left out, and what they mean then: `--pretrained` alone is the cache.
FLAG_DEFAULT_WHEN_BARE = {"pretrained": FROM_TORCHVISION_CACHE}


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line (and exit 2), not usage text plus a line."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see --help)")


class UsageError(FmnistError):
    pass


def add_train_options(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; unset flags stay None so the config file's values win."""
    for field in fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        kind = field.type
        if "bool" in kind:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=TRAIN_HELP[field.name])
            continue
        if field.name in FLAG_DEFAULT_WHEN_BARE:
            parser.add_argument(
                flag, nargs="?", const=FLAG_DEFAULT_WHEN_BARE[field.name], default=None, metavar="PATH",
                help=TRAIN_HELP[field.name],
            )
            continue
        value_type = int if "int" in kind else float if "float" in kind else str
        parser.add_argument(
            flag, type=value_type, default=None, metavar=field.name.upper(), help=TRAIN_HELP[field.name]
        )
    parser.add_argument("--config", help="TOML file of config values (flags override it)")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="fmnist", description="A fast, readable PyTorch lab for Fashion-MNIST.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model; prints the test accuracy and run folder")
    add_train_options(train)
    train.add_argument(
        "--resume", metavar="RUN_DIR",
        help="continue a stopped run from its last completed epoch, with its saved config",
    )

    evaluate = commands.add_parser("evaluate", help="test loss, accuracy and per-class accuracy of a checkpoint")
    evaluate.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--device", default="auto", choices=DEVICES)
    evaluate.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE)

    report = commands.add_parser("report", help="evaluate a run's best checkpoint and write its figures and report.md")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--data-dir")
    report.add_argument("--device", default="auto", choices=DEVICES)
    report.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE)

    summary = commands.add_parser("summary", help="layer table: output shapes, parameters, multiply-adds per image")
    summary.add_argument("model", metavar="MODEL")

    compare = commands.add_parser("compare", help="table and validation curves of several runs side by side")
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders, or folders of them (a sweep)")
    compare.add_argument("--out", default="comparison", help="folder for comparison.md/.csv/.png (default: comparison)")

    sweep = commands.add_parser("sweep", help="train a grid of --set values x seeds, then compare (mean ± std)")
    add_train_options(sweep)
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=V1,V2",
                       help="a config field and its values (repeatable; the grid is every combination)")
    sweep.add_argument("--seeds", type=int, default=1, help="runs per grid point, seeds --seed, --seed + 1, ...")
    predict = commands.add_parser("predict", help="classify image files (PNG, JPEG, BMP, WebP, GIF) or folders of them")
    predict.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    predict.add_argument("images", metavar="IMAGE", nargs="+", help="image files or folders")
    predict.add_argument("--top-k", type=int, default=3, help="how many classes to show per image (1-10)")
    predict.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    predict.add_argument(
        "--no-invert", dest="invert", action="store_false",
        help="never invert (by default images on a light background are inverted to light on black)",
    )

    export = commands.add_parser("export", help="write a checkpoint's model as ONNX (needs the fmnist[onnx] extra)")
    export.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    export.add_argument("--format", default="onnx", choices=["onnx"], help="only onnx for now")
    export.add_argument("--out", metavar="FILE", help="where to write (default: RUN_DIR/model.onnx)")

    commands.add_parser("models", help="list the registered models with parameter counts")
    commands.add_parser("recipes", help="list the named recipes, their source project and its claim")

    bench = commands.add_parser("bench", help="training/evaluation images/s against the conventional DataLoader loop")
    bench.add_argument("--recipe", help="benchmark this recipe's model and batch size")
    bench.add_argument("--model", help="model name (default: the recipe's, else affine-cnn)")
    bench.add_argument("--batch-size", type=int, help="training batch size (default: the recipe's)")
    bench.add_argument("--steps", type=int, default=200, help="timed training batches (default 200)")
    bench.add_argument("--warmup", type=int, default=20, help="untimed batches first (default 20)")
    bench.add_argument("--no-conventional", action="store_true", help="skip the conventional loop")
    bench.add_argument("--device", choices=DEVICES)
    bench.add_argument("--data-dir")
    bench.add_argument("--val-size", type=int, help="validation images held out, as in training (default 5000)")
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.add_argument("--time-to-accuracy", metavar="RECIPE",
                       help="train RECIPE, timing when test accuracy first reaches 0.90, 0.91, ..., 0.95")
    bench.add_argument("--seeds", type=int, default=1, help="with --time-to-accuracy: seeds 42, 43, ... (mean ± std)")
    bench.add_argument("--epochs", type=int, help="with --time-to-accuracy: override the recipe's epochs")

    data = commands.add_parser("data", help="find, verify or download the data set")
    data_commands = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    info = data_commands.add_parser("info", help="where the files are, verification, counts, mean and std")
    info.add_argument("--data-dir")
    download = data_commands.add_parser("download", help="download and verify the four files")
    download.add_argument("--dir", help="target folder (default: the user cache, ~/.cache/fmnist)")
    download.add_argument("--mirror", action="append", help="base URL to try (repeatable; default: official mirrors)")
    ensure = data_commands.add_parser("ensure", help="find the data set, else install it (apt) or download it")
    ensure.add_argument("--data-dir")
    ensure.add_argument("--mirror", action="append", help="base URL to try when downloading")
    ensure.add_argument("--no-apt", action="store_true", help="never try apt-get")
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from fmnist.config import build_config
    from fmnist.experiment import train_from_config
    from fmnist.runs import main_script

    overrides = {field.name: getattr(args, field.name) for field in fields(TrainConfig)}
    if args.resume:
        from fmnist.resume import config_to_resume

        if args.config:
            raise UsageError("fmnist train: --config with --resume: a resumed run keeps its own config; drop --config")
        config = config_to_resume(args.resume, overrides)
    else:
        config = build_config(args.config, overrides)
    try:
        result = train_from_config(config, main_script(), resume=Path(args.resume) if args.resume else None)
    except TrainingInterrupted as interruption:
        print(f"fmnist: {interruption}", file=sys.stderr)
        run_path = getattr(interruption, "run_path", None)
        if run_path is not None:
            print(f"resume with: fmnist train --resume {shlex.quote(str(run_path))}", file=sys.stderr)
        return interruption.exit_code
    print(f"test accuracy {result.test_accuracy:.4f}  test loss {result.test_loss:.4f}  "
          f"(best epoch {result.best_epoch}, {result.wall_seconds:.1f} s)")
    print(f"run folder: {result.path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from fmnist.data import CLASS_NAMES
    from fmnist.experiment import evaluate_checkpoint

    if args.batch_size < 1:
        raise UsageError(f"fmnist evaluate: --batch-size {args.batch_size}: must be at least 1")
    evaluation = evaluate_checkpoint(args.checkpoint, args.data_dir, args.device, args.batch_size)
    result, state = evaluation.result, evaluation.state
    print(f"checkpoint: {evaluation.path} ({state['model_name']}, epoch {state['epoch']})")
    print(f"test loss {result.loss:.4f}  test accuracy {result.accuracy:.4f}  ({len(result.labels):,} images)")
    for name, accuracy in zip(CLASS_NAMES, result.per_class_accuracy(), strict=True):
        print(f"  {name:<12} {accuracy:.4f}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fmnist.report import report_run

    if args.batch_size < 1:
        raise UsageError(f"fmnist report: --batch-size {args.batch_size}: must be at least 1")
    print(f"report: {report_run(args.run_dir, args.data_dir, args.device, args.batch_size)}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from fmnist.model_summary import model_summary

    print(model_summary(args.model))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from fmnist.compare import compare_runs

    print(compare_runs(args.run_dirs, args.out))
    print(f"written: {args.out}/comparison.md, comparison.csv, comparison.png")
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from fmnist.runs import main_script
    from fmnist.sweep import run_sweep

    overrides = {field.name: getattr(args, field.name) for field in fields(TrainConfig)}
    sweep_dir, table = run_sweep(args.config, overrides, args.set, args.seeds, main_script())
    print(table)
    print(f"sweep folder: {sweep_dir} (comparison.md/.csv/.png: per grid point; runs.md/.csv: per run)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from fmnist.data import NUM_CLASSES
    from fmnist.predict import predict_images, prepare_images
    from fmnist.preprocess import image_files
    from fmnist.runs import checkpoint_path, load_checkpoint, model_from_checkpoint, trained_with_flip_tta

    if not 1 <= args.top_k <= NUM_CLASSES:
        raise UsageError(f"fmnist predict: --top-k {args.top_k}: must be between 1 and {NUM_CLASSES}")
    path = checkpoint_path(args.checkpoint)
    state = load_checkpoint(path)
    model = model_from_checkpoint(state, path)
    readable, images, failures = prepare_images(image_files(args.images), args.invert)
    mean, std = state["config"]["mean"], state["config"]["std"]  # the model's own normalization
    predictions = predict_images(model, readable, images, mean, std, args.top_k, trained_with_flip_tta(state))
    for failure in failures:
        print(f"fmnist: error: {failure}", file=sys.stderr)
    if args.json:
        document = [prediction.to_dict() for prediction in predictions]
        document += [{"error": str(failure)} for failure in failures]
        print(json.dumps(document, indent=2))
    else:
        for prediction in predictions:
            print(prediction.to_line())
    return 1 if failures else 0


def cmd_export(args: argparse.Namespace) -> int:
    from fmnist.export import export_onnx

    written = export_onnx(args.checkpoint, args.out)
    print(f"wrote {written} (ONNX; input 'images' (N, 1, 28, 28) normalized, output 'logits' (N, 10))")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from fmnist.models import count_parameters, create_model, list_models

    for name in list_models():
        print(f"{name:<16} {count_parameters(create_model(name)):>12,} parameters")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from fmnist import download
    from fmnist.data import CLASS_NAMES, describe_split, find_data_dir, read_split

    if args.data_command == "download":
        directory = download.download(args.dir, args.mirror)
        print(f"Fashion-MNIST is in {directory}")
        return 0
    if args.data_command == "ensure":
        download.ensure(args.data_dir, args.mirror, use_apt=not args.no_apt)
        return 0
    directory = find_data_dir(args.data_dir)
    print(f"location: {directory}")
    verified = True
    for stem, problem in download.verify_dir(directory).items():
        print(f"  {stem}: {'verified (SHA-256 of the content)' if problem is None else problem}")
        verified = verified and problem is None
    for split in ("train", "test"):
        info = describe_split(read_split(directory, split))
        print(f"{split}: {info['count']:,} images, pixel mean {info['mean']:.4f}, std {info['std']:.4f}")
        print("  " + ", ".join(f"{name} {count:,}" for name, count in zip(CLASS_NAMES, info["per_class"], strict=True)))
    print("verification: " + ("all four files match the official Fashion-MNIST" if verified else "FAILED"))
    return 0 if verified else 1


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from fmnist import bench
    from fmnist.config import build_config

    if args.steps < 1 or args.warmup < 0 or args.seeds < 1:
        raise UsageError(
            f"fmnist bench: --steps and --seeds must be at least 1 and --warmup at least 0, "
            f"got {args.steps}, {args.seeds}, {args.warmup}"
        )
    overrides = {
        "recipe": args.time_to_accuracy or args.recipe, "model": args.model, "batch_size": args.batch_size,
        "device": args.device, "data_dir": args.data_dir, "val_size": args.val_size, "epochs": args.epochs,
    }
    if args.time_to_accuracy:
        configs = [build_config(None, {**overrides, "seed": 42 + offset}) for offset in range(args.seeds)]
        results = [bench.time_to_accuracy(config) for config in configs]
        summary = bench.summarize_seeds(results)
        document = {"summary": summary, "runs": results}
        print(json.dumps(document, indent=2) if args.json else bench.format_time_to_accuracy(summary))
        return 0
    config = build_config(None, overrides)
    result = bench.benchmark(config, warmup=args.warmup, steps=args.steps, conventional=not args.no_conventional)
    print(json.dumps(result, indent=2) if args.json else bench.format_result(result))
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    from fmnist.recipes import list_recipes

    for recipe in list_recipes():
        print(f"{recipe.name:<20} {recipe.source:<10} claimed: {recipe.claim}")
        print(f"{'':<20} {recipe.description}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "report": cmd_report,
    "summary": cmd_summary,
    "compare": cmd_compare,
    "sweep": cmd_sweep,
    "predict": cmd_predict,
    "export": cmd_export,
    "models": cmd_models,
    "recipes": cmd_recipes,
    "bench": cmd_bench,
    "data": cmd_data,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except FmnistError as error:
        print(f"fmnist: error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("fmnist: interrupted", file=sys.stderr)
        return 130
