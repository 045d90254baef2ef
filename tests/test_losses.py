"""Focal loss against a value computed by hand, and its reduction to cross-entropy."""

from __future__ import annotations

import math

import pytest
import torch

from fmnist.arguments import command_line_spelling
from fmnist.errors import ConfigError
from fmnist.training.config import TrainConfig, build_config
from fmnist.training.losses import FocalLoss, build_loss


def test_focal_loss_matches_a_hand_computed_value():
    # Image 1: equal logits, so p_true = 1/3. Image 2: logit ln 4 for the true class, so p_true = 4/6.
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(4), 0.0, 0.0]])
    labels = torch.tensor([1, 0])
    gamma, alpha = 2.0, 0.5
    by_hand = (alpha * (2 / 3) ** 2 * math.log(3) + alpha * (1 / 3) ** 2 * math.log(3 / 2)) / 2  # 0.13333
    loss = FocalLoss(gamma=gamma, alpha=alpha)(logits, labels)
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)


def test_gamma_0_alpha_1_is_cross_entropy_values_and_gradients():
    torch.manual_seed(0)
    logits = torch.randn(16, 10, requires_grad=True)
    labels = torch.randint(0, 10, (16,))
    focal = FocalLoss(gamma=0.0, alpha=1.0)(logits, labels)
    (focal_grad,) = torch.autograd.grad(focal, logits)
    cross_entropy = torch.nn.functional.cross_entropy(logits, labels)
    (ce_grad,) = torch.autograd.grad(cross_entropy, logits)
    torch.testing.assert_close(focal, cross_entropy)
    torch.testing.assert_close(focal_grad, ce_grad)


def test_focusing_down_weights_confident_correct_images():
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])  # the first is confidently right, the second a coin toss
    labels = torch.tensor([0, 0])
    per_image_ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    focal_easy = FocalLoss(gamma=2.0, alpha=1.0)(logits[:1], labels[:1])
    focal_hard = FocalLoss(gamma=2.0, alpha=1.0)(logits[1:], labels[1:])
    assert focal_easy / per_image_ce[0] < 0.001  # (1 - 0.982)^2
    assert focal_hard / per_image_ce[1] == pytest.approx(0.25)  # (1 - 0.5)^2


def test_build_loss_from_the_config():
    focal = build_loss(TrainConfig(loss="focal", focal_gamma=1.5, focal_alpha=0.25))
    assert isinstance(focal, FocalLoss) and (focal.gamma, focal.alpha) == (1.5, 0.25)
    assert build_loss(TrainConfig(label_smoothing=0.1)).label_smoothing == 0.1
    assert isinstance(build_loss(TrainConfig()), torch.nn.CrossEntropyLoss)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"loss": "hinge"}, "--loss 'hinge': choose one of ce, focal"),
        ({"focal_gamma": -1.0}, "--focal-gamma -1.0"),
        ({"focal_alpha": 0.0}, "--focal-alpha 0.0"),
        ({"loss": "focal", "label_smoothing": 0.1}, "--label-smoothing 0.1: .*applies to --loss ce only"),
    ],
)
def test_bad_loss_options_name_the_option(overrides, message):
    with command_line_spelling(), pytest.raises(ConfigError, match=message):  # as `fmnist train` says it
        build_config(None, overrides)
