"""The model registry, and one forward/backward test over every registered model."""

from __future__ import annotations

import pytest
import torch

from fmnist.errors import ConfigError
from fmnist.models import count_parameters, create_model, list_models, register_model, registry


def test_every_model_runs_forward_and_backward():
    for name in list_models():
        torch.manual_seed(0)
        model = create_model(name)
        model.train()
        # Batch 2: cheap for the 26M-parameter v1-5-5, and the least BatchNorm can train on.
        logits = model(torch.randn(2, 1, 28, 28))
        assert logits.shape == (2, 10), name
        logits.logsumexp(dim=1).mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name


@pytest.mark.parametrize("name", ["affine-cnn", "lenet", "small-cnn", "v1"])
def test_channels_last_gives_the_same_logits(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    images = torch.randn(3, 1, 28, 28)
    expected = model(images)
    fast = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(images.contiguous(memory_format=torch.channels_last)), expected)


def relu_before_pool(model: torch.nn.Sequential) -> torch.nn.Sequential:
    """The textbook order: every MaxPool -> ReLU pair swapped back (same modules, same weights)."""
    layers = list(model)
    for index in range(len(layers) - 1):
        if isinstance(layers[index], torch.nn.MaxPool2d) and isinstance(layers[index + 1], torch.nn.ReLU):
            layers[index], layers[index + 1] = layers[index + 1], layers[index]
    return torch.nn.Sequential(*layers)


@pytest.mark.parametrize("name", ["affine-cnn", "lenet", "small-cnn", "fast-cnn", "fast-vgg"])
def test_pooling_before_relu_changes_neither_outputs_nor_gradients(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    textbook = relu_before_pool(model)
    assert [type(m) for m in textbook] != [type(m) for m in model]  # the swap really happened
    images = torch.randn(8, 1, 28, 28)
    gradients = []
    for network in (model, textbook):
        torch.manual_seed(1)  # the same dropout masks
        network.zero_grad()
        logits = network(images)
        logits.logsumexp(dim=1).mean().backward()
        gradients.append((logits.detach(), [p.grad.clone() for p in network.parameters()]))
    (ours, our_grads), (theirs, their_grads) = gradients
    torch.testing.assert_close(ours, theirs)
    for mine, other in zip(our_grads, their_grads, strict=True):
        torch.testing.assert_close(mine, other)


def test_affine_cnn_matches_seed_000():
    model = create_model("affine-cnn")
    assert count_parameters(model) == 421_898
    assert any(type(m).__name__ == "LearnedAffine" for m in model.modules())


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="affine-cnn"):
        create_model("no-such-model")


def test_duplicate_name_is_an_error(monkeypatch):
    monkeypatch.setattr(registry, "_MODELS", dict(registry._MODELS))
    with pytest.raises(ValueError, match="already registered"):
        register_model("affine-cnn")(lambda: None)
    register_model("brand-new")(lambda: torch.nn.Linear(1, 1))
    assert "brand-new" in list_models()


# The seeds' own figures: the BatchNorm study's torchinfo summaries, LeNet's and the quickstart MLP's layer sizes.
SEED_PARAMETER_COUNTS = {
    "v1": 39_358,
    "v1-5-5": 25_993_898,
    "v1-5-5-bn": 25_994_986,
    "resnet18": 11_175_370,
    "lenet": 60_074,  # 60 + 880 + 48,120 + 10,164 + 850
    "mlp": 669_706,  # 401,920 + 262,656 + 5,130
}


@pytest.mark.parametrize(("name", "expected"), SEED_PARAMETER_COUNTS.items())
def test_parameter_counts_match_the_seeds(name, expected):
    assert count_parameters(create_model(name)) == expected


def test_seed_models_return_logits_not_probabilities():
    torch.manual_seed(0)
    for name in ("lenet", "v1", "v1-5-5", "v1-5-5-bn"):
        assert not any(isinstance(m, (torch.nn.Softmax, torch.nn.LogSoftmax)) for m in create_model(name).modules())


def test_resnet18_has_a_one_channel_stem_and_ten_classes():
    model = create_model("resnet18")
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert (model.conv1.stride, model.conv1.padding) == ((2, 2), (3, 3))
    assert model.fc.out_features == 10
