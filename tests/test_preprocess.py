"""Image files -> Fashion-MNIST-like tensors: formats, modes, inversion, aspect ratio, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from fmnist.data.images import has_light_background, image_files, read_image, to_fashion_mnist
from fmnist.errors import DataError


def item_on_black() -> np.ndarray:
    """A light, textured blob on black, like a Fashion-MNIST item."""
    image = np.zeros((28, 28), dtype=np.uint8)
    image[6:22, 9:19] = np.arange(160, 240, 5, dtype=np.uint8)[:, None]
    return image


def test_a_fashion_mnist_sized_png_passes_through_unchanged(tmp_path):
    original = item_on_black()
    Image.fromarray(original).save(tmp_path / "item.png")
    assert torch.equal(to_fashion_mnist(read_image(tmp_path / "item.png")), torch.from_numpy(original))


def test_a_light_background_is_inverted_unless_told_not_to(tmp_path):
    original = item_on_black()
    Image.fromarray(255 - original).save(tmp_path / "on-white.png")
    image = read_image(tmp_path / "on-white.png")
    assert torch.equal(to_fashion_mnist(image), torch.from_numpy(original))
    assert torch.equal(to_fashion_mnist(image, invert=False), torch.from_numpy(255 - original))
    assert has_light_background(255 - original) and not has_light_background(original)


def test_aspect_ratio_is_kept_and_the_rest_padded_black():
    wide = np.full((40, 80), 200, dtype=np.uint8)  # 2:1, light everywhere but the border is the item
    wide[0, :] = wide[-1, :] = wide[:, 0] = wide[:, -1] = 0  # a dark border: no inversion
    fitted = to_fashion_mnist(Image.fromarray(wide))
    assert fitted.shape == (28, 28)
    rows_with_item = torch.nonzero(fitted.amax(dim=1) > 100).flatten()
    assert rows_with_item.min() >= 7 and rows_with_item.max() <= 20  # 14 of 28 rows, centred
    assert fitted[:6].max() == 0 and fitted[22:].max() == 0


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp", ".gif"])
def test_every_supported_format_gives_the_item(tmp_path, suffix):
    original = item_on_black()
    Image.fromarray(original).resize((100, 100)).convert("RGB").save(tmp_path / f"item{suffix}")
    fitted = to_fashion_mnist(read_image(tmp_path / f"item{suffix}")).float()
    assert fitted.shape == (28, 28)
    assert (fitted - torch.from_numpy(original).float()).abs().mean() < 12  # lossy formats differ a little


def test_transparency_16_bit_and_palette_modes(tmp_path):
    # A dark item on a transparent background is shown on white, so it is inverted to light on black.
    rgba = np.zeros((28, 28, 4), dtype=np.uint8)
    rgba[6:22, 9:19] = (20, 20, 20, 255)
    fitted = to_fashion_mnist(Image.fromarray(rgba, "RGBA"))
    assert fitted[14, 14] > 200 and fitted[0, 0] == 0
    wide_range = Image.fromarray(item_on_black().astype(np.uint16) * 257)
    assert wide_range.mode.startswith("I")
    assert to_fashion_mnist(wide_range)[14, 14] > 150
    palette = Image.fromarray(item_on_black()).convert("P")
    assert torch.equal(to_fashion_mnist(palette), to_fashion_mnist(Image.fromarray(item_on_black())))


def test_unreadable_files_are_one_line_errors(tmp_path):
    Image.fromarray(item_on_black()).save(tmp_path / "good.png")
    (tmp_path / "truncated.png").write_bytes((tmp_path / "good.png").read_bytes()[:60])
    (tmp_path / "text.png").write_text("not an image")
    for name, fragment in [("truncated.png", "cannot decode"), ("text.png", "not an image"), ("gone.png", "no such")]:
        with pytest.raises(DataError, match=fragment) as caught:
            read_image(tmp_path / name)
        assert "\n" not in str(caught.value)


def test_folders_expand_to_their_image_files(tmp_path):
    for name in ("b.PNG", "a.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "empty").mkdir()
    assert image_files([tmp_path, tmp_path / "x.gif"]) == [tmp_path / "a.jpg", tmp_path / "b.PNG", tmp_path / "x.gif"]
    assert image_files([tmp_path / "empty"]) == [tmp_path / "empty"]
