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
        logits = model(torch.randn(4, 1, 28, 28))
        assert logits.shape == (4, 10), name
        logits.logsumexp(dim=1).mean().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name


@pytest.mark.parametrize("name", ["affine-cnn"])
def test_channels_last_gives_the_same_logits(name):
    torch.manual_seed(0)
    model = create_model(name).eval()
    images = torch.randn(3, 1, 28, 28)
    expected = model(images)
    fast = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(fast(images.contiguous(memory_format=torch.channels_last)), expected)


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
