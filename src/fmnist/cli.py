"""The `fmnist` command: parse arguments and dispatch. The library modules do the work."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from fmnist.config import DEVICES, OPTIMIZERS, SCHEDULERS, TrainConfig
from fmnist.errors import FmnistError
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

    evaluate = commands.add_parser("evaluate", help="test loss, accuracy and per-class accuracy of a checkpoint")
    evaluate.add_argument("checkpoint", metavar="RUN_DIR|CHECKPOINT")
    evaluate.add_argument("--data-dir")
    evaluate.add_argument("--device", default="auto", choices=DEVICES)
    evaluate.add_argument("--batch-size", type=int, default=1000)

    commands.add_parser("models", help="list the registered models with parameter counts")
    commands.add_parser("recipes", help="list the named recipes, their source project and its claim")

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
    config = build_config(args.config, overrides)
    result = train_from_config(config, main_script())
    print(f"test accuracy {result.test_accuracy:.4f}  test loss {result.test_loss:.4f}  "
          f"(best epoch {result.best_epoch}, {result.wall_seconds:.1f} s)")
    print(f"run folder: {result.path}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from fmnist.config import TrainConfig
    from fmnist.data import CLASS_NAMES, find_data_dir, read_split
    from fmnist.loader import TensorLoader
    from fmnist.runs import checkpoint_path, load_checkpoint, model_from_checkpoint
    from fmnist.runtime import resolve_device
    from fmnist.train import evaluate

    if args.batch_size < 1:
        raise UsageError(f"fmnist evaluate: --batch-size {args.batch_size}: must be at least 1")
    path = checkpoint_path(args.checkpoint)
    state = load_checkpoint(path)
    config = TrainConfig(**state["config"])
    device = resolve_device(args.device)
    model = model_from_checkpoint(state, path).to(device=device, memory_format=torch.channels_last)
    test = read_split(find_data_dir(args.data_dir or config.data_dir), "test").to(device)
    result = evaluate(model, TensorLoader(test, args.batch_size, mean=config.mean, std=config.std))
    print(f"checkpoint: {path} ({state['model_name']}, epoch {state['epoch']})")
    print(f"test loss {result.loss:.4f}  test accuracy {result.accuracy:.4f}  ({len(test):,} images)")
    for name, accuracy in zip(CLASS_NAMES, result.per_class_accuracy(), strict=True):
        print(f"  {name:<12} {accuracy:.4f}")
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


def cmd_recipes(args: argparse.Namespace) -> int:
    from fmnist.recipes import list_recipes

    for recipe in list_recipes():
        print(f"{recipe.name:<20} {recipe.source:<10} claimed: {recipe.claim}")
        print(f"{'':<20} {recipe.description}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "models": cmd_models,
    "recipes": cmd_recipes,
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
