"""Is this really Fashion-MNIST? The SHA-256 of each file's decompressed content says.

Valid IDX files with other images (MNIST, a damaged copy, a different data set) would train
without complaint, so fmnist checks the content, not just the format. Hashing the 55 MB of the
four files takes a fraction of a second; the result is still remembered per file (by path, size
and modification time) in the user cache, so a run does not pay for it twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from pathlib import Path

from fmnist.arguments import for_command_line
from fmnist.data.fashion import FILES, SHA256, SIZES
from fmnist.data.idx import cannot_read, open_idx
from fmnist.data.locate import file_path, user_cache_dir
from fmnist.errors import DataError
from fmnist.files import atomic_write_json

logger = logging.getLogger(__name__)
CHUNK = 1 << 20


def content_sha256(path: Path, limit: int) -> str | None:
    """SHA-256 of the decompressed content, or None once it grows past `limit` bytes (a gzip bomb or
    another file stops there instead of being inflated whole)."""
    digest, total = hashlib.sha256(), 0
    try:
        with open_idx(path) as handle:
            while chunk := handle.read(CHUNK):
                total += len(chunk)
                if total > limit:
                    return None
                digest.update(chunk)
    except (OSError, EOFError, zlib.error) as error:
        raise cannot_read(path, error) from None
    return digest.hexdigest()


def verify_file(path: Path, checksums: dict[str, str] = SHA256) -> str | None:
    """None if the decompressed content has the expected SHA-256, else what is wrong."""
    stem = path.name.removesuffix(".gz")
    digest = content_sha256(path, SIZES.get(stem, max(SIZES.values())))
    if digest is None:
        return f"longer than the official {SIZES[stem]:,} bytes: not Fashion-MNIST"
    if digest != checksums[stem]:
        return f"SHA-256 {digest[:12]}... differs from the official {checksums[stem][:12]}..."
    return None


def cache_file() -> Path:
    return user_cache_dir() / "verified.json"


def read_cache() -> dict:
    try:
        cache = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return cache if isinstance(cache, dict) else {}


def file_key(path: Path) -> str:
    status = path.stat()
    return f"{path.resolve()}|{status.st_size}|{status.st_mtime_ns}"


def verify_dir(directory: Path, checksums: dict[str, str] = SHA256, use_cache: bool = True) -> dict[str, str | None]:
    """Verification result per file stem (None means verified); verified files are remembered."""
    cache = read_cache() if use_cache and checksums is SHA256 else {}
    results, changed = {}, False
    for stem in FILES.values():
        path = file_path(directory, stem)
        if path is None:
            results[stem] = "missing"
            continue
        key = file_key(path)
        if cache.get(key) == checksums[stem]:
            results[stem] = None
            continue
        results[stem] = verify_file(path, checksums)
        if results[stem] is None and use_cache and checksums is SHA256:
            cache[key], changed = checksums[stem], True
    if changed:
        try:
            cache_file().parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(cache_file(), cache)
        except OSError as error:  # a read-only home costs a re-hash next time, nothing more
            logger.debug("could not remember the verification in %s: %s", cache_file(), error)
    return results


def allow_hint() -> str:
    """How to use unverified files anyway, in the words of the front door in force (arguments.py)."""
    if for_command_line():
        return "get the data set again, or pass --allow-unverified-data to use these files anyway"
    return ("get the data set again, or pass TrainConfig(allow_unverified_data=True) or load_splits(verify=False) "
            "to use these files anyway")


def unverified_files(directory: Path, hint: str | None = None) -> list[DataError]:
    """One DataError per file that is not the official Fashion-MNIST (empty: all four verified)."""
    hint = hint or allow_hint()
    return [
        DataError(f"{directory}: {stem} is not the official Fashion-MNIST ({problem}); {hint}")
        for stem, problem in verify_dir(directory).items() if problem is not None
    ]


def require_verified(directory: Path, hint: str | None = None) -> None:
    """Raise a one-line DataError unless all four files are the official Fashion-MNIST."""
    problems = unverified_files(directory, hint)
    if problems:
        raise problems[0]
