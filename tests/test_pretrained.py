"""resnet18 --pretrained: ImageNet weights from a file or torchvision's cache, or one clear error."""

from __future__ import annotations

import pytest
import torch
import torchvision

from fmnist.cli.main import build_parser, main
from fmnist.errors import ConfigError
from fmnist.models import create_model
from fmnist.models.resnet import cached_weights_path
from fmnist.training.config import build_config


@pytest.fixture(scope="module")
def imagenet_like_weights():
    """A state_dict with the layout of torchvision's ImageNet resnet18 (3-channel conv1, 1000 classes).

    Its values are a fresh initialization: there is no network here to fetch the real ones, and
    the loading logic only cares about names and shapes.
    """
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


@pytest.fixture
def empty_torch_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path / "torch-home"


def assert_loaded(model, weights):
    torch.testing.assert_close(model.conv1.weight, weights["conv1.weight"].sum(dim=1, keepdim=True))
    for key in ("layer1.0.conv1.weight", "layer4.1.bn2.running_var", "bn1.bias"):
        torch.testing.assert_close(model.state_dict()[key], weights[key])
    assert model.fc.weight.shape == (10, 512)  # ImageNet's 1000-class head is not used


def test_loads_a_saved_state_dict_from_a_path(imagenet_like_weights, tmp_path):
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet_like_weights, path)
    model = create_model("resnet18", pretrained=str(path))
    assert_loaded(model, imagenet_like_weights)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_loads_from_torchvisions_cache(imagenet_like_weights, empty_torch_cache):
    cached = cached_weights_path()
    assert str(cached).startswith(str(empty_torch_cache))
    cached.parent.mkdir(parents=True)
    torch.save(imagenet_like_weights, cached)
    assert_loaded(create_model("resnet18", pretrained="torchvision"), imagenet_like_weights)


def test_without_weights_the_cli_says_so_in_one_line(empty_torch_cache, tiny_data, tmp_path, capsys):
    code = main([
        "train", "--model", "resnet18", "--pretrained", "--data-dir", str(tiny_data), "--allow-unverified-data",
        "--val-size", "100", "--out", str(tmp_path / "runs"),
    ])
    error = capsys.readouterr().err
    assert code == 2
    assert error.count("\n") == 1 and "Traceback" not in error
    assert "no ImageNet weights for resnet18 in torchvision's cache" in error and "--pretrained PATH" in error


def test_a_file_that_is_not_a_resnet18_state_dict(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(torch.nn.Linear(2, 2).state_dict(), path)
    with pytest.raises(ConfigError, match="not a resnet18 state_dict"):
        create_model("resnet18", pretrained=str(path))
    with pytest.raises(ConfigError, match="no such file"):
        create_model("resnet18", pretrained=str(tmp_path / "absent.pth"))


def test_the_flag_takes_an_optional_path():
    parser = build_parser()
    assert parser.parse_args(["train", "--pretrained"]).pretrained == "torchvision"
    assert parser.parse_args(["train", "--pretrained", "w.pth"]).pretrained == "w.pth"
    assert parser.parse_args(["train"]).pretrained is None


def test_only_resnet18_takes_pretrained_weights():
    with pytest.raises(ConfigError, match=r"TrainConfig\(pretrained=.*only model='resnet18' has pretrained weights"):
        build_config(None, {"model": "mlp", "pretrained": "torchvision"})


def test_a_run_starts_from_the_given_weights(imagenet_like_weights, tiny_data, tmp_path):
    from fmnist.experiment import train

    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet_like_weights, path)
    config = build_config(None, {
        "recipe": "resnet18", "pretrained": str(path), "data_dir": str(tiny_data), "out": str(tmp_path / "runs"),
        "name": "pretrained", "epochs": 1, "limit_batches": 1, "batch_size": 8, "val_size": 100,
        "eval_batch_size": 100, "lr": 1e-12,  # a step too small to move the weights visibly
        "allow_unverified_data": True,
    })
    result = train(config)
    trained = torch.load(result.path / "last.pt", weights_only=True)["model"]
    torch.testing.assert_close(trained["layer2.0.conv1.weight"], imagenet_like_weights["layer2.0.conv1.weight"])
