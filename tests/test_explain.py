"""Attribution maps (issue 28): the model-randomization sanity check, `fmnist predict --explain`, and its
bad inputs (one line, exit 2, nothing written)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fmnist_here, one_line, write_dataset
from fmnist.cli import main
from fmnist.data.splits import load_splits
from fmnist.experiment import train
from fmnist.explain import attribution_maps
from fmnist.inference import TrainedModel, load_model
from fmnist.models import create_model
from fmnist.training.config import TrainConfig

# Adebayo et al. (NeurIPS 2018) compare the maps of the trained model with those of the same network
# with re-initialised weights by the Spearman rank correlation of their absolute values (ours are
# absolute already), per image. A method whose maps depend on what the model learned gives a low
# correlation; one that mostly redraws the input (an edge detector) a high one. Thresholds: the mean
# over 100 images below 0.5 against the re-initialised network, and above 0.8 against the trained
# weights perturbed by 1% (the control: the measure does see two maps of nearly the same model as alike).
RANDOMIZED_AT_MOST = 0.5
PERTURBED_AT_LEAST = 0.8


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
    """A model that learned the generated data (bars at a row per class) well, and 100 of its test images."""
    root = tmp_path_factory.mktemp("explain")
    data = write_dataset(root / "data", train_count=1200)
    config = TrainConfig(model="fast-cnn-16", epochs=3, batch_size=50, val_size=100, device="cpu",
                         data_dir=str(data), allow_unverified_data=True, out=str(root / "runs"), name="learned")
    result = train(config)
    assert result.test_accuracy > 0.9
    return result.path, load_splits(data, 100, verify=False).test.images[:100]


def mean_rank_correlation(maps: np.ndarray, others: np.ndarray) -> float:
    # Imported where it is used: torchmetrics loads torchvision's models (seconds), which every pytest
    # worker would otherwise pay while it collects this file.
    from torchmetrics.functional import spearman_corrcoef

    flat, other_flat = torch.from_numpy(maps).flatten(1), torch.from_numpy(others).flatten(1)
    return float(np.mean([spearman_corrcoef(a, b).item() for a, b in zip(flat, other_flat, strict=True)]))


def test_the_maps_pass_the_model_randomization_sanity_check(learned):
    run, images = learned
    trained = load_model(run)
    torch.manual_seed(1234)
    random_network = create_model("fast-cnn-16")  # the same architecture, re-initialised weights
    randomized = TrainedModel(random_network, trained.mean, trained.std, trained.flip_tta, {}).eval()
    perturbed = copy.deepcopy(trained)
    with torch.no_grad():
        for parameter in perturbed.parameters():
            parameter.mul_(1 + 0.01 * torch.randn_like(parameter))
    maps = attribution_maps(trained, images)
    against_random = mean_rank_correlation(maps, attribution_maps(randomized, images))
    against_perturbed = mean_rank_correlation(maps, attribution_maps(perturbed, images))
    assert against_perturbed > PERTURBED_AT_LEAST, against_perturbed
    assert against_random < RANDOMIZED_AT_MOST, against_random


def test_maps_are_repeatable_in_range_and_work_through_flip_tta(learned):
    run, images = learned
    model = load_model(run)
    maps = attribution_maps(model, images[:8])
    assert maps.shape == (8, 28, 28) and maps.dtype == np.float32
    assert maps.min() >= 0 and np.allclose(maps.max(axis=(1, 2)), 1.0)
    assert np.array_equal(maps, attribution_maps(model, images[:8]))
    model.flip_tta = True
    assert attribution_maps(model, images[:8]).shape == (8, 28, 28)


def write_images(folder, images) -> list:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        path = folder / f"item-{index}.png"
        Image.fromarray(image.numpy()).save(path)
        paths.append(path)
    return paths


def test_predict_explain_writes_one_map_per_input_image(learned, tmp_path, capsys):
    run, images = learned
    paths = write_images(tmp_path / "a", images[:3]) + write_images(tmp_path / "b", images[:1])  # two "item-0"
    (tmp_path / "b" / "broken.png").write_text("not an image")
    out = tmp_path / "maps" / "new"
    assert main(["predict", str(run), str(tmp_path / "a"), str(tmp_path / "b"), "--explain", str(out),
                 "--json"]) == 1  # the broken file: one error line, the others answered
    answers = json.loads(capsys.readouterr().out)
    written = sorted(path.name for path in out.iterdir())
    assert written == ["0001-item-0.png", "0002-item-1.png", "0003-item-2.png", "0005-item-0.png"]
    assert [file_name(answer.get("map")) for answer in answers] == [*written[:3], None, written[3]]
    with Image.open(out / written[0]) as picture:
        assert picture.size[0] > 2 * 28 * 4  # the image and its map side by side, enlarged
    assert len(paths) == 4


def file_name(path: str | None) -> str | None:
    return None if path is None else path.rsplit("/", 1)[-1]


def test_explain_into_a_file_an_unwritable_folder_or_over_a_map_is_one_line_and_nothing_is_written(
        learned, tmp_path, make_read_only):
    run, images = learned
    [image] = write_images(tmp_path / "in", images[:1])
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me\n")
    line = one_line(fmnist_here(["predict", str(run), str(image), "--explain", str(a_file)]))
    assert "a file, not a folder" in line and a_file.read_text() == "keep me\n"

    (tmp_path / "locked").mkdir()
    locked = make_read_only(tmp_path / "locked")
    line = one_line(fmnist_here(["predict", str(run), str(image), "--explain", str(locked)]))
    assert "--explain" in line and not any(locked.iterdir())

    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "0001-item-0.png").write_bytes(b"an earlier map")
    line = one_line(fmnist_here(["predict", str(run), str(image), "--explain", str(taken)]))
    assert "already holds 0001-item-0.png" in line
    assert (taken / "0001-item-0.png").read_bytes() == b"an earlier map" and len(list(taken.iterdir())) == 1
