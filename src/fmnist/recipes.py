"""Named recipes: the experiments of the five seed projects (and our own), runnable by name.

A recipe is a set of config overrides plus where it comes from and what its source claimed.
`fmnist train --recipe NAME [flags]` starts from the recipe; explicit flags still win.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fmnist.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str  # which project it re-runs, e.g. "seed 000", or "fmnist"
    claim: str  # the figure the source claimed, or "none claimed"
    description: str
    overrides: dict = field(default_factory=dict)


RECIPES: dict[str, Recipe] = {}


def add_recipe(recipe: Recipe) -> Recipe:
    if recipe.name in RECIPES:
        raise ValueError(f"recipe {recipe.name!r} is defined twice")
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {', '.join(sorted(RECIPES))}")
    return RECIPES[name]


def list_recipes() -> list[Recipe]:
    return [RECIPES[name] for name in sorted(RECIPES)]


add_recipe(Recipe(
    name="affine-onecycle",
    source="seed 000",
    claim="test accuracy 0.88-0.90",
    description="LearnedAffine CNN, AdamW lr 1e-3 wd 0.01, OneCycle max_lr 0.01 per batch, batch 64, 3 epochs",
    overrides={},  # the defaults are this recipe
))
add_recipe(Recipe(
    name="affine-steplr",
    source="seed 001",
    claim="none claimed",
    description="LearnedAffine CNN, AdamW lr 1e-3, StepLR (every epoch, gamma 0.7), 3 epochs, CPU",
    overrides={"scheduler": "steplr", "step_size": 1, "gamma": 0.7, "device": "cpu"},
))
