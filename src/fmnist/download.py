"""Getting the data set: verify a copy, download it, or install Debian's package.

Files are checked by the SHA-256 of their *decompressed* bytes: Debian recompresses the .gz
files (so their own checksums differ from the official ones) while the content is the same. The
same check catches a mirror that silently serves MNIST instead of Fashion-MNIST.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

from fmnist.data import DEBIAN_DIR, FILES, file_path, find_data_dir, read_bytes, user_cache_dir
from fmnist.errors import DataError
from fmnist.runs import atomic_write_bytes

SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
)
TIMEOUT_SECONDS = 60


def verify_file(path: Path, checksums: dict[str, str] = SHA256) -> str | None:
    """None if the decompressed content has the expected SHA-256, else what is wrong."""
    stem = path.name.removesuffix(".gz")
    digest = hashlib.sha256(read_bytes(path)).hexdigest()
    if digest != checksums[stem]:
        return f"SHA-256 {digest[:12]}... differs from the official {checksums[stem][:12]}..."
    return None


def verify_dir(directory: Path, checksums: dict[str, str] = SHA256) -> dict[str, str | None]:
    """Verification result per file stem (None means verified)."""
    results = {}
    for stem in FILES.values():
        path = file_path(directory, stem)
        results[stem] = "missing" if path is None else verify_file(path, checksums)
    return results


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
        return response.read()


def download_file(stem: str, directory: Path, mirrors: list[str], checksums: dict[str, str]) -> str:
    """Fetch `stem`.gz from the first mirror that serves the right content; return that mirror."""
    problems = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + stem + ".gz"
        try:
            compressed = fetch(url)
            content = gzip.decompress(compressed)
        except (urllib.error.URLError, OSError, EOFError, ValueError) as error:
            problems.append(f"{url}: {getattr(error, 'reason', None) or error}")
            continue
        digest = hashlib.sha256(content).hexdigest()
        if digest != checksums[stem]:
            problems.append(f"{url}: wrong content (SHA-256 {digest[:12]}..., is it MNIST?)")
            continue
        atomic_write_bytes(directory / (stem + ".gz"), compressed)
        return mirror
    raise DataError(f"could not download {stem}: " + "; ".join(problems) + "; check the network or use --mirror")


def download(
    directory: Path | None = None,
    mirrors: list[str] | None = None,
    checksums: dict[str, str] = SHA256,
) -> Path:
    """Download and verify every file not already verified in `directory` (default: user cache)."""
    directory = Path(directory) if directory else user_cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(f"--dir {directory}: cannot create it ({error.strerror}); choose a writable folder") from None
    for stem in FILES.values():
        existing = file_path(directory, stem)
        if existing is not None and verify_file(existing, checksums) is None:
            print(f"{stem}: already here and verified")
            continue
        mirror = download_file(stem, directory, list(mirrors or MIRRORS), checksums)
        print(f"{stem}: downloaded from {mirror} and verified")
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
    """Make sure the data set is somewhere fmnist looks: found, else apt, else download."""
    try:
        directory = find_data_dir(data_dir)
        print(f"Fashion-MNIST found in {directory}")
        return directory
    except DataError:
        if data_dir or os.environ.get("FMNIST_DATA"):
            raise  # an explicit folder that lacks the files: the user must fix that choice
    if use_apt and apt_usable():
        print("Fashion-MNIST not found; installing Debian's package dataset-fashion-mnist")
        if install_debian_package():
            return DEBIAN_DIR
        print("apt-get could not install it; downloading instead")
    print(f"downloading Fashion-MNIST into {user_cache_dir()}")
    try:
        return download(user_cache_dir(), mirrors, checksums)
    except DataError as error:
        raise DataError(
            f"{error}. Other ways: `apt-get install dataset-fashion-mnist` as root on Debian/Ubuntu, "
            "or copy the four IDX files into a folder and set $FMNIST_DATA to it"
        ) from None
