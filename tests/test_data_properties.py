"""Property-based tests of the IDX reader: whatever the bytes, it returns valid arrays or raises
DataError with a one-line message, never another exception.

Hypothesis generates random bytes, and valid files it then damages: truncated, bytes overwritten
(the header included), wrong magic numbers, wrong dimensions, image and label counts that
disagree, labels out of range, and the same inside or outside gzip.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import idx_bytes
from fmnist.data.fashion import FILES, NUM_CLASSES
from fmnist.data.idx import IMAGES_MAGIC, LABELS_MAGIC, parse_idx, read_images, read_labels
from fmnist.data.splits import read_split
from fmnist.errors import DataError

# FMNIST_HYPOTHESIS_EXAMPLES raises the count for a longer hunt; 60 keeps the suite quick.
SETTINGS = settings(
    max_examples=int(os.environ.get("FMNIST_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def reads_or_one_line_error(read, *args):
    """Call the reader: a result must be well formed, an error a one-line DataError."""
    try:
        return read(*args)
    except DataError as error:
        assert "\n" not in str(error) and str(error)
        return None


def header(magic: int, dims: list[int]) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(size.to_bytes(4, "big") for size in dims)


@SETTINGS
@given(content=st.binary(max_size=64), magic=st.sampled_from([IMAGES_MAGIC, LABELS_MAGIC]))
def test_random_bytes(content, magic):
    array = reads_or_one_line_error(parse_idx, content, Path("random"), magic)
    if array is not None:
        assert array.dtype == np.uint8 and array.ndim == content[3]


@SETTINGS
@given(
    magic=st.one_of(st.sampled_from([IMAGES_MAGIC, LABELS_MAGIC]), st.integers(0, 2**32 - 1)),
    dims=st.lists(st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)), max_size=4),
    body=st.binary(max_size=2000),
)
def test_headers_with_any_magic_and_dimensions(tmp_path, magic, dims, body):
    path = tmp_path / "file"
    path.write_bytes(header(magic, dims) + body)
    images = reads_or_one_line_error(read_images, path)
    if images is not None:
        assert images.shape[1:] == (28, 28)
    labels = reads_or_one_line_error(read_labels, path)
    if labels is not None:
        assert labels.ndim == 1 and (labels.size == 0 or labels.max() < NUM_CLASSES)


def valid_split(count: int, seed: int) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, NUM_CLASSES, size=count, dtype=np.uint8)
    return idx_bytes(images, IMAGES_MAGIC), idx_bytes(labels, LABELS_MAGIC)


damage = st.one_of(
    st.tuples(st.just("truncate"), st.integers(0, 2000)),
    st.tuples(st.just("overwrite"), st.integers(0, 40), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("append"), st.binary(min_size=1, max_size=30)),
    st.tuples(st.just("label"), st.integers(0, 255)),
    st.tuples(st.just("none")),
)


def damaged(content: bytes, how: tuple) -> bytes:
    kind = how[0]
    if kind == "truncate":
        return content[: how[1] % (len(content) + 1)]
    if kind == "overwrite":
        position = how[1] % len(content)
        return content[:position] + how[2] + content[position + len(how[2]):]
    if kind == "append":
        return content + how[1]
    if kind == "label":  # the last byte: a label in a labels file, a pixel in an images file
        return content[:-1] + bytes([how[1]])
    return content


@SETTINGS
@given(
    images_count=st.integers(0, 4),
    labels_count=st.integers(0, 4),
    images_damage=damage,
    labels_damage=damage,
    compress=st.booleans(),
    gzip_damage=st.one_of(st.none(), st.integers(0, 200)),
)
def test_damaged_splits(tmp_path, images_count, labels_count, images_damage, labels_damage, compress, gzip_damage):
    images, _ = valid_split(images_count, 0)
    _, labels = valid_split(labels_count, 1)
    for stem, content in ((FILES["test_images"], damaged(images, images_damage)),
                          (FILES["test_labels"], damaged(labels, labels_damage))):
        for old in tmp_path.glob(stem + "*"):
            old.unlink()
        if compress:
            packed = gzip.compress(content)
            if gzip_damage is not None:  # cut the gzip stream itself
                packed = packed[: gzip_damage % (len(packed) + 1)]
            (tmp_path / (stem + ".gz")).write_bytes(packed)
        else:
            (tmp_path / stem).write_bytes(content)
    split = reads_or_one_line_error(read_split, tmp_path, "test")
    if split is not None:
        assert split.images.shape == (len(split), 28, 28) and len(split.labels) == len(split)
        assert len(split) == 0 or int(split.labels.max()) < NUM_CLASSES


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (header(LABELS_MAGIC, [3]) + bytes([1, 2, 10]), "label 10 found"),
        (header(IMAGES_MAGIC, [1, 28, 28]) + bytes(784), "magic number 2051, expected 2049"),
        (header(LABELS_MAGIC, [5]) + bytes(3), "truncated or corrupt"),
        (header(LABELS_MAGIC, [2**32 - 1]), "this is not the data set"),
    ],
)
def test_examples_of_each_kind_of_damage(tmp_path, content, fragment):
    path = tmp_path / "labels"
    path.write_bytes(content)
    with pytest.raises(DataError, match=fragment):
        read_labels(path)
