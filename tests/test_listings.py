"""`fmnist models` and `fmnist recipes` (issue 30): one line per entry that says what it is for,
within the terminal's width, and the same facts as JSON for scripts."""

from __future__ import annotations

import json

import pytest

from fmnist.cli.listings import MAX_WIDTH, MIN_WIDTH
from fmnist.cli.main import main
from fmnist.models import describe_model, list_models
from fmnist.training.config import TrainConfig
from fmnist.training.recipes import RECIPES

LISTINGS = [["models"], ["recipes"], *(["recipes", name] for name in RECIPES)]


def printed(arguments: list[str], capsys, monkeypatch, columns: int) -> list[str]:
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(arguments) == 0
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("columns", [MIN_WIDTH, 80, MAX_WIDTH])
@pytest.mark.parametrize("arguments", LISTINGS, ids=" ".join)
def test_every_line_fits_the_terminal(arguments, columns, capsys, monkeypatch):
    lines = printed(arguments, capsys, monkeypatch, columns)
    assert lines and all(len(line) <= columns for line in lines), [line for line in lines if len(line) > columns]


def test_a_narrower_terminal_gets_the_narrowest_layout_and_no_terminal_80_columns(capsys, monkeypatch):
    assert printed(["recipes"], capsys, monkeypatch, 30) == printed(["recipes"], capsys, monkeypatch, MIN_WIDTH)
    monkeypatch.delenv("COLUMNS")
    assert main(["recipes"]) == 0  # under pytest, stdout is no terminal
    assert capsys.readouterr().out.splitlines() == printed(["recipes"], capsys, monkeypatch, 80)


def table_rows(lines: list[str], names) -> dict[str, str]:
    rows = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in names}
    assert set(rows) == set(names)
    return rows


def test_at_80_columns_each_model_is_one_line_saying_what_it_is(capsys, monkeypatch):
    lines = printed(["models"], capsys, monkeypatch, 80)
    rows = table_rows(lines, list_models())
    recipe_models = {TrainConfig(recipe=name).model for name in RECIPES}
    for name, line in rows.items():
        assert describe_model(name) and describe_model(name) in line
        assert ("in no recipe" in line) == (name not in recipe_models), line
        following = lines[lines.index(line) + 1]
        assert not following.startswith(" "), f"{name}'s line wraps at 80 columns"


def test_at_80_columns_each_recipe_is_one_line_with_its_model_epochs_and_precision(capsys, monkeypatch):
    lines = printed(["recipes"], capsys, monkeypatch, 80)
    rows = table_rows(lines, RECIPES)
    for name, line in rows.items():
        config = TrainConfig(recipe=name)
        assert line.split()[1:4] == [config.model, str(config.epochs), config.amp], line
        assert RECIPES[name].summary in line
        assert not lines[lines.index(line) + 1].startswith(" "), f"{name}'s line wraps at 80 columns"
    text = " ".join(lines)
    assert "Plain `fmnist train` runs `affine-onecycle`" in text
    assert {**TrainConfig().to_dict(), "recipe": None} == {**TrainConfig(recipe="affine-onecycle").to_dict(),
                                                            "recipe": None}


def test_the_json_forms_carry_every_entry(capsys):
    assert main(["models", "--json"]) == 0
    models = json.loads(capsys.readouterr().out)
    assert [model["name"] for model in models] == list_models()
    assert all(model["summary"] and isinstance(model["parameters"], int) for model in models)
    recipes_of = {model["name"]: model["recipes"] for model in models}
    assert recipes_of["whiten-vgg"] == ["best"] and recipes_of["fast-vgg"] == []
    assert recipes_of["whiten-res"] == ["top"] and recipes_of["res-cnn"] == ["top-long"]
    assert main(["recipes", "--json"]) == 0
    assert [recipe["name"] for recipe in json.loads(capsys.readouterr().out)] == sorted(RECIPES)
    assert main(["recipes", "top", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["options"] == RECIPES["top"].overrides


def test_an_unknown_recipe_is_one_line(capsys):
    assert main(["recipes", "nope"]) == 2
    assert "--recipe 'nope': unknown recipe; choose one of" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["lenet", "affine-cnn", "res-cnn-96"])
def test_counted_on_the_meta_device_is_the_real_count(name):
    from fmnist.models import count_parameters, create_model, parameter_count

    assert parameter_count(name) == count_parameters(create_model(name))
