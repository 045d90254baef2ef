"""Where the data set is: an explicit folder, else the user cache, else Debian's package folder."""

from __future__ import annotations

import os
from pathlib import Path

from fmnist.arguments import argument, named
from fmnist.data.fashion import FILES
from fmnist.errors import DataError

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")


def how_to_get() -> str:
    """Where to get the data set, naming the data folder's option as the front door in force does."""
    return ("get it with `fmnist data download`, or `apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as "
            f"root), or point {named('data_dir')} or $FMNIST_DATA at a folder holding the four IDX files")


def user_cache_dir() -> Path:
    """Where `fmnist data download` puts the files by default (honours $XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fmnist"


def file_path(directory: Path, stem: str) -> Path | None:
    """The IDX file `stem` in `directory`, compressed or not, or None if neither is there."""
    for name in (stem + ".gz", stem):
        candidate = directory / name
        if candidate.is_file():
            return candidate
    return None


def missing_files(directory: Path) -> list[str]:
    return [stem for stem in FILES.values() if file_path(directory, stem) is None]


def find_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Find the folder holding the four IDX files.

    An explicit choice (`data_dir`, then $FMNIST_DATA) must hold the files: silently falling back
    to another copy would hide the user's mistake. Otherwise the user cache and Debian's folder are
    searched in that order.
    """
    for explicit, from_environment in ((data_dir, False), (os.environ.get("FMNIST_DATA"), True)):
        if explicit:
            directory = Path(explicit).expanduser()
            where = f"$FMNIST_DATA {directory}" if from_environment else argument("data_dir", directory, "load_splits")
            if directory.exists() and not directory.is_dir():
                raise DataError(f"{where}: not a folder; give the folder that holds the four IDX files")
            missing = missing_files(directory)
            if missing:
                raise DataError(f"{where}: missing {', '.join(missing)} (.gz or decompressed); {how_to_get()}")
            return directory
    for directory in (user_cache_dir(), DEBIAN_DIR):
        if not missing_files(directory):
            return directory
    raise DataError(f"Fashion-MNIST not found in {user_cache_dir()} or {DEBIAN_DIR}; {how_to_get()}")
