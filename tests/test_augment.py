"""Batched augmentation: shapes, a fresh draw per image, determinism, and nothing when off."""

from __future__ import annotations

import pytest
import torch

from fmnist.arguments import command_line_spelling
from fmnist.data.augment import Augmentation, build_augmentation, random_crop, random_erase, random_hflip, random_rotate
from fmnist.data.loader import TensorLoader, scale_batch
from fmnist.data.splits import Split, read_split
from fmnist.errors import ConfigError
from fmnist.training.build import build_training
from fmnist.training.config import TrainConfig, build_config

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
        ({"alternate_flips": True}, "--alternate-flips: ignored by these settings: .*--hflip is off; add --hflip"),
        ({"alternate_flips": True, "hflip": False}, "--alternate-flips: ignored by these settings"),
    ],
)
def test_bad_augmentation_options_name_the_option(overrides, message):
    with command_line_spelling(), pytest.raises(ConfigError, match=message):  # as `fmnist train` says it
        build_config(None, overrides)


# ---------------------------------------------------------------- alternating flips

def distinct_split(count: int = 300) -> Split:
    """Images that differ from one another and from their mirrors; label i marks image i."""
    images = torch.randint(0, 256, (count, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
    return Split(images, torch.arange(count))


def mirrored_per_pass(loader: TensorLoader, passes: int) -> list[torch.Tensor]:
    """For each pass: which images (by index) the loader mirrored."""
    plain = scale_batch(loader.split.images, loader.mean, loader.std)
    found = []
    for _ in range(passes):
        mirrored = torch.zeros(len(loader.split), dtype=torch.bool)
        seen = torch.zeros(len(loader.split), dtype=torch.bool)
        for images, labels in loader:
            as_is = (images == plain[labels]).flatten(1).all(dim=1)
            flipped = (images == plain[labels].flip(3)).flatten(1).all(dim=1)
            assert bool((as_is ^ flipped).all())  # each image is itself or its mirror, nothing else
            mirrored[labels], seen[labels] = flipped, True
        assert bool(seen.all())
        found.append(mirrored)
    return found


def test_alternating_flips_show_every_image_both_ways_in_every_two_passes():
    loader = TensorLoader(distinct_split(), batch_size=64, shuffle=True, seed=3, alternate_flips=True)
    first, second, third, fourth = mirrored_per_pass(loader, 4)
    assert 0.4 < first.float().mean() < 0.6  # half of the images, drawn at random
    assert torch.equal(second, ~first) and torch.equal(third, first) and torch.equal(fourth, ~first)
    assert loader.passes == 4


def test_random_flips_repeat_a_side_where_alternating_ones_do_not():
    augmentation = Augmentation(hflip=True)
    loader = TensorLoader(distinct_split(), batch_size=64, shuffle=True, seed=3, augment=augmentation)
    first, second = mirrored_per_pass(loader, 2)
    assert 0.35 < (first == second).float().mean() < 0.65  # about half are shown the same way twice


def test_alternating_flips_follow_the_seed_and_leave_the_order_to_the_generator():
    def flips_and_order(seed: int, alternate: bool):
        loader = TensorLoader(distinct_split(), batch_size=300, shuffle=True, seed=seed, alternate_flips=alternate)
        _, labels = next(iter(loader))
        return (loader.mirrored_first, labels)

    (mirrors, order), (same_mirrors, same_order) = flips_and_order(3, True), flips_and_order(3, True)
    assert torch.equal(mirrors, same_mirrors) and torch.equal(order, same_order)
    assert not torch.equal(mirrors, flips_and_order(4, True)[0])
    assert torch.equal(order, flips_and_order(3, False)[1])  # the same batches, only the mirroring differs


def test_a_loader_restored_mid_way_mirrors_as_the_uninterrupted_one():
    """What a resume does (runs/resume.py): the generator's state and the passes done."""
    uninterrupted = TensorLoader(distinct_split(), batch_size=64, shuffle=True, seed=3, alternate_flips=True)
    mirrored_per_pass(uninterrupted, 3)
    state = uninterrupted.generator.get_state()
    restored = TensorLoader(distinct_split(), batch_size=64, shuffle=True, seed=3, alternate_flips=True)
    restored.generator.set_state(state)
    restored.passes = 3
    for (images, labels), (expected_images, expected_labels) in zip(restored, uninterrupted, strict=True):
        assert torch.equal(labels, expected_labels) and torch.equal(images, expected_images)


def test_alternating_flips_come_before_the_rest_of_the_augmentation():
    crops = Augmentation(crop_padding=2, fill=FILL)
    loader = TensorLoader(distinct_split(), batch_size=300, shuffle=True, seed=3, augment=crops, alternate_flips=True)
    plain = TensorLoader(distinct_split(), batch_size=300, shuffle=True, seed=3, alternate_flips=True)
    (cropped, labels), (flipped, same_labels) = next(iter(loader)), next(iter(plain))
    generator = torch.Generator().manual_seed(3)
    torch.randperm(300, generator=generator)  # the loader's permutation, then the crops' draws
    assert torch.equal(labels, same_labels)
    assert torch.equal(cropped, crops(flipped.contiguous(), generator))


@pytest.mark.parametrize(("arguments", "message"), [
    ({"alternate_flips": True}, r"TensorLoader\(alternate_flips=True\): .*give shuffle=True"),
    ({"alternate_flips": 1, "shuffle": True}, r"TensorLoader\(alternate_flips=1\): should be of type bool"),
    ({"alternate_flips": True, "shuffle": True, "augment": Augmentation(hflip=True, crop_padding=1)},
     r"TensorLoader\(alternate_flips=True\): augment also mirrors at random.*Augmentation\(hflip=False"),
])
def test_a_loader_refuses_alternating_flips_it_cannot_do(arguments, message):
    with pytest.raises(ConfigError, match=message):
        TensorLoader(distinct_split(), batch_size=64, **arguments)


def test_training_mirrors_in_the_loader_or_in_the_augmentation_never_both(tiny_data):
    splits = [read_split(tiny_data, "train")] * 3
    alternating = build_training(TrainConfig(hflip=True, alternate_flips=True, epochs=1), *splits)
    assert alternating.train_loader.mirrored_first is not None and alternating.train_loader.augment is None
    alternating_and_crops = build_training(TrainConfig(hflip=True, alternate_flips=True, crop_padding=1, epochs=1),
                                           *splits)
    rest = alternating_and_crops.train_loader.augment
    assert rest == Augmentation(crop_padding=1, fill=pytest.approx(-0.81, abs=0.01))
    random = build_training(TrainConfig(hflip=True, epochs=1), *splits)
    assert random.train_loader.mirrored_first is None and random.train_loader.augment.hflip
    assert build_training(TrainConfig(epochs=1), *splits).train_loader.mirrored_first is None
