"""The IDX file format of (Fashion-)MNIST -> validated uint8 arrays, one clear error per problem.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number of dimensions), one
4-byte big-endian size per dimension, then the values. The reader trusts nothing: it checks the
magic number, the dimensions, that the length matches the header, that labels are 0-9, and it reads
the header first so that a compressed file is never inflated beyond the size the header implies
(a 2 MB gzip "bomb" could otherwise inflate to gigabytes). Every problem is one DataError naming
the file, never a traceback.
"""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np

from fmnist.data.fashion import IMAGE_SIZE, NUM_CLASSES
from fmnist.errors import DataError

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
# Fashion-MNIST has 60,000 and 10,000 items; a header claiming far more is not this data set, and
# reading it would only exhaust memory.
MAX_ITEMS = 1_000_000


def open_idx(path: Path):
    """A binary file handle, decompressing when the name ends in .gz."""
    return gzip.open(path, "rb") if path.suffix == ".gz" else path.open("rb")


def cannot_read(path: Path, error: BaseException) -> DataError:
    reason = str(error) or type(error).__name__
    return DataError(f"{path}: cannot read ({reason}); delete it and get the data set again")


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """The file's content, decompressed if it ends in .gz; at most `limit` bytes."""
    try:
        with open_idx(path) as handle:
            return handle.read() if limit is None else handle.read(limit)
    except (OSError, EOFError, zlib.error) as error:
        raise cannot_read(path, error) from None


def expected_length(header: bytes, path: Path, expected_magic: int) -> int:
    """The file length the header implies, after checking the magic number and the dimensions."""
    if len(header) < 4:
        raise DataError(f"{path}: only {len(header)} bytes, too short for an IDX header; get the file again")
    magic = int.from_bytes(header[0:4], "big")
    if magic != expected_magic:
        kind = {IMAGES_MAGIC: "images", LABELS_MAGIC: "labels"}[expected_magic]
        raise DataError(
            f"{path}: magic number {magic}, expected {expected_magic} for an IDX {kind} file; "
            "is this the right file? get the data set again"
        )
    ndim = header[3]
    header_size = 4 + 4 * ndim
    if len(header) < header_size:
        raise DataError(f"{path}: header cut short ({len(header)} bytes); get the file again")
    shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if expected_magic == IMAGES_MAGIC and shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{path}: images of shape {shape[1:]}, expected ({IMAGE_SIZE}, {IMAGE_SIZE}); this is not Fashion-MNIST"
        )
    if shape and shape[0] > MAX_ITEMS:
        raise DataError(f"{path}: the header claims {shape[0]:,} items; Fashion-MNIST has 60,000 and 10,000: "
                        "this is not the data set, get it again")
    return header_size + math.prod(shape)  # Python ints: no overflow for absurd headers


def parse_idx(content: bytes, path: Path, expected_magic: int) -> np.ndarray:
    """Check an IDX file's header against its length and return its uint8 array."""
    size = expected_length(content[:4 + 4 * 255], path, expected_magic)
    if len(content) != size:
        raise DataError(
            f"{path}: {len(content)} bytes but its header needs {size}; "
            "the file is truncated or corrupt, get it again"
        )
    ndim = content[3]
    shape = tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(content, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Read and check one IDX file, inflating no more than its header implies (plus one byte, to
    notice a file that is longer than it says)."""
    try:
        with open_idx(path) as handle:
            header = handle.read(4)
            if len(header) == 4:
                header += handle.read(4 * header[3])
            size = expected_length(header, path, expected_magic)
            content = header + handle.read(size - len(header) + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise cannot_read(path, error) from None
    return parse_idx(content, path, expected_magic)


def read_images(path: Path) -> np.ndarray:
    return read_idx(path, IMAGES_MAGIC)


def read_labels(path: Path) -> np.ndarray:
    labels = read_idx(path, LABELS_MAGIC)  # the magic number says: one dimension
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(
            f"{path}: label {int(labels.max())} found, expected 0-{NUM_CLASSES - 1}; the file is corrupt"
        )
    return labels
