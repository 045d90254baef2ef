"""Optimizers as build_optimizer makes them: Adam and AdamW fused on the CPU, with torch's loop's update."""

from __future__ import annotations

import copy

import pytest
import torch

from fmnist.training.config import TrainConfig
from fmnist.training.optim import build_optimizer


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 26 * 26, 10))


def train_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int = 5) -> None:
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        images = torch.randn(8, 1, 28, 28, generator=generator)
        labels = torch.randint(0, 10, (8,), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()


@pytest.mark.parametrize("name, torch_class", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_and_adamw_are_fused_on_the_cpu_and_update_as_torchs_loop_does(name, torch_class):
    config = TrainConfig(optimizer=name, lr=1e-2, weight_decay=0.01, scheduler="none")
    fused_model = small_model()
    fused = build_optimizer(fused_model, config)
    assert type(fused) is torch_class and fused.defaults["fused"] is True

    looped_model = copy.deepcopy(fused_model)
    looped = torch_class(looped_model.parameters(), lr=1e-2, weight_decay=0.01)  # torch's CPU default
    assert not looped.defaults["fused"]
    initial = [weight.detach().clone() for weight in fused_model.parameters()]
    train_steps(fused_model, fused)
    train_steps(looped_model, looped)
    for before, fused_weight, looped_weight in zip(initial, fused_model.parameters(), looped_model.parameters(),
                                                   strict=True):
        assert not torch.equal(fused_weight, before)  # the steps did move every weight
        torch.testing.assert_close(fused_weight, looped_weight, rtol=1e-5, atol=1e-6)


def test_sgd_keeps_torchs_own_implementation():
    optimizer = build_optimizer(small_model(), TrainConfig(optimizer="sgd", scheduler="none", lr=0.1))
    assert type(optimizer) is torch.optim.SGD and not optimizer.defaults.get("fused")
