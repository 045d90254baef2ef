"""Batched augmentation: shapes, a fresh draw per image, determinism, and nothing when off."""

from __future__ import annotations

import pytest
import torch

from fmnist.arguments import command_line_spelling
from fmnist.data.augment import Augmentation, build_augmentation, random_crop, random_erase, random_hflip, random_rotate
from fmnist.data.loader import TensorLoader
from fmnist.data.splits import read_split
from fmnist.errors import ConfigError
from fmnist.training.config import build_config

FILL = -0.81  # a normalized black pixel, -mean/std, for Fashion-MNIST's statistics


def lopsided_image() -> torch.Tensor:
    """One image whose mirror, shifts and rotations all differ from it: an off-centre L."""
    image = torch.full((1, 28, 28), FILL)
    image[0, 4:20, 6:9] = 2.0
    image[0, 17:20, 6:16] = 2.0
    return image


def copies(count: int = 32) -> torch.Tensor:
    return lopsided_image().expand(count, 1, 28, 28).contiguous()


OPS = {
    "hflip": lambda images, gen: random_hflip(images, gen),
    "crop": lambda images, gen: random_crop(images, gen, padding=3, fill=FILL),
    "rotate": lambda images, gen: random_rotate(images, gen, degrees=15, fill=FILL),
    "erase": lambda images, gen: random_erase(images, gen, probability=0.5),
}


@pytest.mark.parametrize("name", OPS)
def test_each_op_keeps_the_shape_and_draws_per_image(name):
    images = copies()
    out = OPS[name](images, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == images.dtype
    # 32 copies of one image must not all come out alike: each image gets its own draw.
    distinct = torch.unique(out.flatten(1), dim=0)
    assert len(distinct) > 1
    assert (out != images).flatten(1).any(dim=1).any()  # some image changed
    if name in ("hflip", "erase"):  # these leave some images untouched (probability 1/2)
        assert (out == images).flatten(1).all(dim=1).any()


@pytest.mark.parametrize("name", OPS)
def test_same_generator_seed_same_result_other_seed_other_result(name):
    first = OPS[name](copies(), torch.Generator().manual_seed(5))
    again = OPS[name](copies(), torch.Generator().manual_seed(5))
    other = OPS[name](copies(), torch.Generator().manual_seed(6))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_hflip_gives_the_image_or_its_mirror():
    image = lopsided_image()
    out = random_hflip(copies(), torch.Generator().manual_seed(0))
    is_same = (out == image).flatten(1).all(dim=1)
    is_mirror = (out == image.flip(2)).flatten(1).all(dim=1)
    assert (is_same | is_mirror).all() and is_same.any() and is_mirror.any()


def test_crop_shifts_by_at_most_the_padding_and_brings_in_black():
    images = torch.full((64, 1, 28, 28), FILL)
    images[:, 0, 14, 14] = 1.0  # one bright pixel to follow
    out = random_crop(images, torch.Generator().manual_seed(0), padding=2, fill=FILL)
    bright = (out == 1.0).nonzero()[:, 2:]  # (row, column) of the bright pixel, one per image
    assert len(bright) == 64
    assert ((bright - 14).abs() <= 2).all()
    assert len(torch.unique(bright, dim=0)) > 5  # shifts vary from image to image
    assert ((out == FILL) | (out == 1.0)).all()  # nothing but the image and black background


def test_rotation_keeps_a_black_background_black():
    black = torch.full((8, 1, 28, 28), FILL)
    out = random_rotate(black, torch.Generator().manual_seed(0), degrees=30, fill=FILL)
    torch.testing.assert_close(out, black)


def test_rotation_by_small_angles_stays_close_and_by_large_ones_does_not():
    image = lopsided_image()
    small = random_rotate(copies(32), torch.Generator().manual_seed(0), degrees=0.01, fill=FILL)
    large = random_rotate(copies(32), torch.Generator().manual_seed(0), degrees=45, fill=FILL)
    assert (small - image).abs().max() < 0.05
    # Angles are uniform in [-45, 45]: most of them move the L's pixels a lot.
    assert ((large - image).abs().flatten(1).max(dim=1).values > 0.5).float().mean() > 0.7


def test_erase_sets_one_rectangle_to_zero():
    images = torch.full((16, 1, 28, 28), 3.0)
    out = random_erase(images, torch.Generator().manual_seed(0), probability=1.0)
    for image in out[:, 0]:
        erased = (image == 0).nonzero()
        assert len(erased) > 0
        height = erased[:, 0].max() - erased[:, 0].min() + 1
        width = erased[:, 1].max() - erased[:, 1].min() + 1
        assert len(erased) == height * width  # a full rectangle, no holes
        assert len(erased) <= 28 * 28 * 0.33 * 1.2  # at most a third of the image, give or take rounding


def test_off_means_no_augmentation_at_all():
    assert build_augmentation(0.0, False, 0, 0.0, mean=0.286, std=0.353) is None
    images = copies()
    assert torch.equal(Augmentation()(images, torch.Generator().manual_seed(0)), images)


def test_build_augmentation_fills_with_normalized_black():
    augmentation = build_augmentation(10.0, True, 2, 0.25, mean=0.5, std=0.5)
    assert augmentation == Augmentation(10.0, True, 2, 0.25, fill=-1.0)


def test_loader_applies_the_augmentation_to_its_batches(tiny_data):
    split = read_split(tiny_data, "train")
    augmentation = Augmentation(rotate_degrees=20, hflip=True, crop_padding=2, erase_prob=0.5, fill=-0.81)
    plain = TensorLoader(split, batch_size=100, seed=1, limit_batches=1)
    augmented = TensorLoader(split, batch_size=100, seed=1, augment=augmentation, limit_batches=1)
    (plain_images, plain_labels), (augmented_images, augmented_labels) = next(iter(plain)), next(iter(augmented))
    assert torch.equal(plain_labels, augmented_labels)
    assert augmented_images.shape == plain_images.shape
    assert augmented_images.is_contiguous(memory_format=torch.channels_last)
    changed = (augmented_images != plain_images).flatten(1).any(dim=1)
    assert changed.float().mean() > 0.9


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rotate_degrees": -1.0}, "--rotate-degrees -1.0"),
        ({"rotate_degrees": 200.0}, "--rotate-degrees 200.0"),
        ({"crop_padding": 15}, "--crop-padding 15"),
        ({"erase_prob": 1.5}, "--erase-prob 1.5"),
    ],
)
def test_bad_augmentation_options_name_the_option(overrides, message):
    with command_line_spelling(), pytest.raises(ConfigError, match=message):  # as `fmnist train` says it
        build_config(None, overrides)
