"""The IDX reader and the data set search: every failure is one clear DataError."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from conftest import idx_bytes, write_dataset
from fmnist.data import locate
from fmnist.data.fashion import FILES, MEAN, STD
from fmnist.data.idx import IMAGES_MAGIC, LABELS_MAGIC
from fmnist.data.locate import find_data_dir
from fmnist.data.splits import describe_split, load_splits, read_split, train_val_split
from fmnist.errors import DataError

TRAIN_IMAGES = FILES["train_images"] + ".gz"
TRAIN_LABELS = FILES["train_labels"] + ".gz"


def rewrite(path, content: bytes) -> None:
    path.write_bytes(gzip.compress(content))


def test_reads_gz_and_plain_files(tmp_path):
    for compress in (True, False):
        directory = write_dataset(tmp_path / str(compress), 100, 50, compress=compress)
        train = read_split(directory, "train")
        assert train.images.shape == (100, 28, 28) and train.images.dtype == torch.uint8
        assert train.labels.dtype == torch.int64 and int(train.labels.max()) <= 9
        assert len(read_split(directory, "test")) == 50


@pytest.mark.parametrize(
    ("name", "corrupt", "message"),
    [
        ("wrong image magic", lambda d: rewrite(d / TRAIN_IMAGES, idx_bytes(np.zeros((5, 28, 28)), LABELS_MAGIC)),
         "magic number 2049, expected 2051"),
        ("wrong label magic", lambda d: rewrite(d / TRAIN_LABELS, idx_bytes(np.zeros((5, 28, 28)), IMAGES_MAGIC)),
         "magic number 2051, expected 2049"),
        ("wrong dimensions", lambda d: rewrite(d / TRAIN_IMAGES, idx_bytes(np.zeros((5, 32, 32)), IMAGES_MAGIC)),
         "expected (28, 28)"),
        ("truncated content", lambda d: rewrite(d / TRAIN_IMAGES, idx_bytes(np.zeros((5, 28, 28)), IMAGES_MAGIC)[:-10]),
         "truncated or corrupt"),
        ("short header", lambda d: rewrite(d / TRAIN_IMAGES, b"\x00\x00"), "too short for an IDX header"),
        ("counts differ", lambda d: rewrite(d / TRAIN_LABELS, idx_bytes(np.zeros(7), LABELS_MAGIC)),
         "600 images but"),
        ("label out of range", lambda d: rewrite(d / TRAIN_LABELS, idx_bytes(np.full(600, 10), LABELS_MAGIC)),
         "label 10 found, expected 0-9"),
        ("corrupt gzip", lambda d: (d / TRAIN_IMAGES).write_bytes(b"\x1f\x8b\x08\x00garbage"), "cannot read"),
        ("truncated gzip", lambda d: (d / TRAIN_IMAGES).write_bytes((d / TRAIN_IMAGES).read_bytes()[:500]),
         "cannot read"),
    ],
)
def test_every_corruption_is_one_clear_error(tmp_path, name, corrupt, message):
    directory = write_dataset(tmp_path / "data", 600, 100)
    corrupt(directory)
    with pytest.raises(DataError) as caught:
        read_split(directory, "train")
    text = str(caught.value)
    assert message in text
    assert "\n" not in text
    assert "train-" in text  # names the file


def test_search_order(tmp_path, monkeypatch):
    explicit = write_dataset(tmp_path / "explicit", 20, 10)
    env = write_dataset(tmp_path / "env", 20, 10)
    cache = write_dataset(tmp_path / "cache" / "fmnist", 20, 10)
    monkeypatch.setattr(locate, "DEBIAN_DIR", tmp_path / "nowhere")
    assert find_data_dir() == cache
    monkeypatch.setenv("FMNIST_DATA", str(env))
    assert find_data_dir() == env
    assert find_data_dir(explicit) == explicit


def test_explicit_folder_without_files_is_an_error(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"^load_splits\(data_dir='.*empty'\): missing train-images"):
        find_data_dir(tmp_path / "empty")
    monkeypatch.setenv("FMNIST_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match=r"\$FMNIST_DATA"):
        find_data_dir()


def test_missing_data_set_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(locate, "DEBIAN_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError) as caught:
        find_data_dir()
    for way in ("fmnist data download", "apt-get install dataset-fashion-mnist", "$FMNIST_DATA"):
        assert way in str(caught.value)


def test_validation_split_is_stable_disjoint_and_seeded(tiny_data):
    train = read_split(tiny_data, "train")
    train_a, val_a = train_val_split(train, 100, split_seed=0)
    train_b, val_b = train_val_split(train, 100, split_seed=0)
    _, val_c = train_val_split(train, 100, split_seed=1)
    assert len(train_a) == 500 and len(val_a) == 100
    assert torch.equal(val_a.images, val_b.images)
    assert not torch.equal(val_a.images, val_c.images)
    # Every training image lands in exactly one of the two parts.
    combined = torch.cat([train_a.images, val_a.images]).flatten(1)
    assert torch.unique(combined, dim=0).shape[0] == torch.unique(train.images.flatten(1), dim=0).shape[0]


def test_load_splits(tiny_data):
    splits = load_splits(str(tiny_data), val_size=50, split_seed=0, verify=False)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (550, 50, 200)
    assert not splits.verified


def test_load_splits_refuses_data_that_is_not_fashion_mnist(tiny_data):
    """Valid IDX files with other content must not train silently."""
    with pytest.raises(DataError, match=r"not the official Fashion-MNIST .*load_splits\(verify=False\)"):
        load_splits(str(tiny_data))


def test_the_real_data_is_verified_and_the_result_remembered(real_data):
    from fmnist.data.verify import cache_file

    assert load_splits(real_data).verified
    assert cache_file().is_file()  # the next run skips hashing these files


def test_real_data_set_has_the_published_shape_and_statistics(real_data):
    train = read_split(real_data, "train")
    test = read_split(real_data, "test")
    assert train.images.shape == (60000, 28, 28) and test.images.shape == (10000, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    info = describe_split(train)
    assert info["mean"] == pytest.approx(MEAN, abs=5e-4)
    assert info["std"] == pytest.approx(STD, abs=5e-4)
