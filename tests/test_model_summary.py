"""`fmnist summary`: shapes, parameters and multiply-adds checked against counts done by hand."""

from __future__ import annotations

import pytest
from torch import nn

from fmnist.cli import main
from fmnist.models import count_parameters, create_model
from fmnist.models.summary import summarize


def test_affine_cnn_counts_by_hand():
    rows = {row.name: row for row in summarize(create_model("affine-cnn"))}
    # conv1: 32 output maps of 28x28, each value a 1x3x3 window.
    assert rows["0"].output_shape == (1, 32, 28, 28)
    assert rows["0"].macs == 28 * 28 * 32 * 9 and rows["0"].parameters == 32 * 9 + 32
    # conv2 after pooling: 64 maps of 14x14, each value a 32x3x3 window.
    assert rows["3"].output_shape == (1, 64, 14, 14)
    assert rows["3"].macs == 14 * 14 * 64 * 32 * 9 and rows["3"].parameters == 64 * 32 * 9 + 64
    assert rows["7"].output_shape == (1, 3136)  # Flatten
    assert rows["8"].macs == 3136 * 128 and rows["8"].parameters == 3136 * 128 + 128
    assert rows["10"].kind == "LearnedAffine" and rows["10"].macs == 128 and rows["10"].parameters == 256
    assert rows["12"].output_shape == (1, 10) and rows["12"].macs == 128 * 10
    assert rows["1"].macs == 0 and rows["2"].macs == 0  # ReLU, MaxPool: no multiply-adds
    total = sum(row.macs for row in rows.values())
    assert total == 28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 3136 * 128 + 128 + 128 * 10
    assert sum(row.parameters for row in rows.values()) == count_parameters(create_model("affine-cnn"))


def test_grouped_strided_conv_and_batchnorm():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2),
    )
    rows = summarize(model)
    assert [row.output_shape for row in rows] == [(1, 4, 28, 28), (1, 4, 28, 28), (1, 8, 14, 14)]
    assert [row.macs for row in rows] == [28 * 28 * 4 * 9, 4 * 28 * 28, 14 * 14 * 8 * 2 * 9]
    assert [row.parameters for row in rows] == [4 * 9 + 4, 8, 8 * 2 * 9 + 8]


def test_cli_summary_prints_the_table(capsys):
    assert main(["summary", "affine-cnn"]) == 0
    out = capsys.readouterr().out
    assert "LearnedAffine" in out and "1x32x28x28" in out
    assert "421,898" in out and "4,241,280" in out  # totals: parameters, multiply-adds


def test_cli_summary_unknown_model_is_one_line(capsys):
    assert main(["summary", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model 'nope': unknown model" in err


@pytest.mark.parametrize("plain_name, whitened_name", [("fast-vgg", "whiten-vgg"), ("res-cnn", "whiten-res")])
def test_a_whitened_first_conv_counts_its_fixed_filters_work_but_not_as_parameters(plain_name, whitened_name):
    plain, whitened = (summarize(create_model(name)) for name in (plain_name, whitened_name))
    assert whitened[0].kind == "PatchWhitening" and whitened[0].output_shape == (1, 32, 28, 28)
    assert whitened[0].macs == plain[0].macs == 28 * 28 * 32 * 9  # 18 fixed filters and 14 learned
    assert whitened[0].parameters == 14 * 9 and plain[0].parameters == 32 * 9  # the plain conv has no bias
    assert sum(row.macs for row in whitened) == sum(row.macs for row in plain)
