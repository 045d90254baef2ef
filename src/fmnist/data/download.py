"""Getting the data set: download it (verified), or install Debian's package.

Downloads are checked by the SHA-256 of their decompressed content (verify.py), which also catches
a mirror that silently serves MNIST instead of Fashion-MNIST. Progress goes to the `fmnist.data`
logger; the CLI shows it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from fmnist.data.fashion import FILES, SHA256, SIZES
from fmnist.data.locate import DEBIAN_DIR, file_path, find_data_dir, user_cache_dir
from fmnist.data.verify import require_verified, verify_file
from fmnist.errors import DataError
from fmnist.files import atomic_write_bytes

logger = logging.getLogger(__name__)

MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
TIMEOUT_SECONDS = 60
# The largest official .gz file is 26 MB; a mirror sending far more is not serving Fashion-MNIST.
MAX_DOWNLOAD_BYTES = 64 << 20


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
        data = response.read(MAX_DOWNLOAD_BYTES + 1)
    if len(data) > MAX_DOWNLOAD_BYTES:
        raise ValueError(f"more than {MAX_DOWNLOAD_BYTES >> 20} MB")
    return data


def inflate(compressed: bytes, limit: int) -> bytes:
    """gunzip at most `limit` + 1 bytes: enough to tell the right size from a gzip bomb."""
    with gzip.GzipFile(fileobj=io.BytesIO(compressed)) as handle:
        return handle.read(limit + 1)


def download_file(stem: str, directory: Path, mirrors: list[str], checksums: dict[str, str]) -> str:
    """Fetch `stem`.gz from the first mirror that serves the right content; return that mirror."""
    problems = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + stem + ".gz"
        try:
            compressed = fetch(url)
            content = inflate(compressed, SIZES[stem])
        except (urllib.error.URLError, OSError, EOFError, ValueError, zlib.error) as error:
            problems.append(f"{url}: {getattr(error, 'reason', None) or error}")
            continue
        digest = hashlib.sha256(content).hexdigest()
        if digest != checksums[stem]:
            problems.append(f"{url}: wrong content (SHA-256 {digest[:12]}..., is it MNIST?)")
            continue
        try:
            atomic_write_bytes(directory / (stem + ".gz"), compressed)
        except OSError as error:
            raise DataError(f"{directory}: cannot write {stem}.gz ({error.strerror or error}); "
                            "free some space or choose another --dir") from None
        return mirror
    raise DataError(f"could not download {stem}: " + "; ".join(problems) + "; check the network or use --mirror")

def download(
    directory: Path | None = None,
    mirrors: list[str] | None = None,
    checksums: dict[str, str] = SHA256,
    force: bool = False,
) -> Path:
    """Download and verify every file not already verified in `directory` (default: user cache).

    A file of the same name that is not the official content (another data set, a modified copy)
    is replaced only with `force`: it may be someone's work.
    """
    directory = Path(directory) if directory else user_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"--dir {directory}: cannot create it ({error.strerror}); choose a writable folder") from None
    for stem in FILES.values():
        existing = file_path(directory, stem)
        if existing is not None:
            try:
                problem = verify_file(existing, checksums)
            except DataError as error:  # unreadable: as much not the official file as a wrong one
                problem = str(error)
            if problem is None:
                logger.info("%s: already here and verified", stem)
                continue
            if not force:
                raise DataError(f"{existing}: already there and not the official file ({problem}); "
                                "pass --force to replace it, or choose another --dir")
        mirror = download_file(stem, directory, list(mirrors or MIRRORS), checksums)
        logger.info("%s: downloaded from %s and verified", stem, mirror)
    return directory


def apt_usable() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def install_debian_package() -> bool:
    """Install Debian's dataset-fashion-mnist; True if its files are then in place."""
    for command in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"]):
        if subprocess.run(command, stdout=subprocess.DEVNULL).returncode != 0:
            return False
    return not [stem for stem in FILES.values() if file_path(DEBIAN_DIR, stem) is None]


def ensure(
    data_dir: str | None = None,
    mirrors: list[str] | None = None,
    use_apt: bool = True,
    checksums: dict[str, str] = SHA256,
) -> Path:
    """Make sure the verified data set is somewhere fmnist looks: found, else apt, else download.

    A copy that is found but is not the official content is an error, not something to train on.
    """
    try:
        directory = find_data_dir(data_dir)
    except DataError:
        if data_dir or os.environ.get("FMNIST_DATA"):
            raise  # an explicit folder that lacks the files: the user must fix that choice
    else:
        if checksums is SHA256:
            require_verified(directory, "replace it with `fmnist data download --dir DIR --force`, or point "
                                        "--data-dir or $FMNIST_DATA at the official files")
        logger.info("Fashion-MNIST found in %s (verified)", directory)
        return directory
    if use_apt and apt_usable():
        logger.info("Fashion-MNIST not found; installing Debian's package dataset-fashion-mnist")
        if install_debian_package():
            require_verified(DEBIAN_DIR)
            return DEBIAN_DIR
        logger.info("apt-get could not install it; downloading instead")
    logger.info("downloading Fashion-MNIST into %s", user_cache_dir())
    try:
        return download(user_cache_dir(), mirrors, checksums)
    except DataError as error:
        raise DataError(
            f"{error}. Other ways: `apt-get install dataset-fashion-mnist` as root on Debian/Ubuntu, "
            "or copy the four IDX files into a folder and set $FMNIST_DATA to it"
        ) from None
