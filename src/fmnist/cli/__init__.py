"""The `fmnist` command line: a thin shell over the library (see main.py)."""

from fmnist.cli.main import main

__all__ = ["main"]
