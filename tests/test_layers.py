"""Sanity tests for LearnedAffine: shape, parameters, init, exact gradients, state, learning."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fmnist.models.layers import LearnedAffine


@pytest.mark.parametrize("shape", [(8, 5), (4, 5, 3, 3)])
def test_output_shape_equals_input_shape(shape):
    assert LearnedAffine(5)(torch.randn(shape)).shape == shape


def test_exactly_two_parameters_per_feature():
    layer = LearnedAffine(128)
    assert sum(p.numel() for p in layer.parameters()) == 256
    assert {name for name, _ in layer.named_parameters()} == {"scale", "shift"}


def test_starts_as_the_identity():
    layer = LearnedAffine(6)
    assert torch.equal(layer.scale, torch.ones(6)) and torch.equal(layer.shift, torch.zeros(6))
    inputs = torch.randn(3, 6)
    assert torch.equal(layer(inputs), inputs)


@pytest.mark.parametrize("shape", [(7, 4), (3, 4, 5, 2)])
def test_gradients_equal_the_analytic_ones(shape):
    torch.manual_seed(0)
    layer = LearnedAffine(4)
    with torch.no_grad():
        layer.scale.copy_(torch.randn(4))
        layer.shift.copy_(torch.randn(4))
    inputs = torch.randn(shape, requires_grad=True)
    upstream = torch.randn(shape)
    layer(inputs).backward(upstream)
    other_dims = [d for d in range(len(shape)) if d != 1]
    broadcast = (1, 4) + (1,) * (len(shape) - 2)
    torch.testing.assert_close(layer.scale.grad, (inputs.detach() * upstream).sum(other_dims))
    torch.testing.assert_close(layer.shift.grad, upstream.sum(other_dims))
    torch.testing.assert_close(inputs.grad, layer.scale.detach().view(broadcast) * upstream)


def test_acts_per_channel_on_images():
    layer = LearnedAffine(2)
    with torch.no_grad():
        layer.scale.copy_(torch.tensor([2.0, -1.0]))
        layer.shift.copy_(torch.tensor([0.5, 3.0]))
    out = layer(torch.ones(1, 2, 2, 2))
    assert torch.equal(out[0, 0], torch.full((2, 2), 2.5)) and torch.equal(out[0, 1], torch.full((2, 2), 2.0))


def test_state_dict_round_trip():
    source = LearnedAffine(3)
    with torch.no_grad():
        source.scale.mul_(4)
        source.shift.add_(2)
    target = LearnedAffine(3)
    target.load_state_dict(source.state_dict())
    inputs = torch.randn(2, 3)
    assert torch.equal(target(inputs), source(inputs))


def test_wrong_feature_count_is_a_clear_error():
    expected = r"^LearnedAffine.forward\(inputs=Tensor of shape \(2, 4\).*\): expects a tensor whose "
    expected += "dimension 1 has size 3"
    with pytest.raises(ValueError, match=expected):
        LearnedAffine(3)(torch.randn(2, 4))


def test_extra_repr_names_features():
    assert "num_features=9" in repr(LearnedAffine(9))


def test_a_model_containing_it_learns():
    """A linear model whose only freedom besides the weights is a LearnedAffine fits a target."""
    torch.manual_seed(0)
    inputs = torch.randn(256, 8)
    targets = inputs @ torch.randn(8, 3) * 3.0 + 5.0  # needs a scale and a shift
    model = nn.Sequential(nn.Linear(8, 3, bias=False), LearnedAffine(3))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    first = None
    for _ in range(300):
        loss = nn.functional.mse_loss(model(inputs), targets)
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < first * 0.01
    assert model[1].shift.abs().mean() > 1.0  # the shift did the offsetting
