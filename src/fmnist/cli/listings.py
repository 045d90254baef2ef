"""`fmnist models` and `fmnist recipes` as text: one line per entry that says what it is for, laid
out for the terminal's width (80 columns when there is no terminal), so that nothing breaks on an
80-column screen. The --json forms, for scripts, are in main.py."""

from __future__ import annotations

import shutil
import textwrap

from fmnist.models import describe_model, list_models, parameter_count
from fmnist.training.config import TrainConfig
from fmnist.training.recipes import RECIPES, Recipe, list_recipes

# Narrower than this, the columns would leave no room for words; wider, lines get hard to read.
MIN_WIDTH, MAX_WIDTH = 60, 100
GAP = "  "
NARROWEST_TEXT = 24  # the fewest columns left for the words of a table's last column


def terminal_width() -> int:
    """The terminal's columns ($COLUMNS first, as shutil reads it), kept within MIN_WIDTH..MAX_WIDTH."""
    return max(MIN_WIDTH, min(MAX_WIDTH, shutil.get_terminal_size((80, 24)).columns))


def table(rows: list[list[str]], header: list[str], width: int, right: frozenset[int] = frozenset()) -> list[str]:
    """Columns sized to their widest cell; the last one wraps within `width`, indented under itself,
    or, where that would leave it too narrow to read, goes on lines of its own below its row."""
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header) - 1)]
    indent = sum(widths) + len(GAP) * len(widths)
    below = width - indent < NARROWEST_TEXT
    lines = []
    for row in [header, *rows]:
        cells = [cell.rjust(size) if column in right else cell.ljust(size)
                 for column, (cell, size) in enumerate(zip(row, widths, strict=False))]
        lead = GAP.join(cells)
        if below:
            lines.append(lead.rstrip())
            lines += textwrap.wrap(row[-1], width, initial_indent=GAP * 2, subsequent_indent=GAP * 2)
            continue
        wrapped = textwrap.wrap(row[-1], width - indent) or [""]
        lines.append((lead + GAP + wrapped[0]).rstrip())
        lines += [" " * indent + more for more in wrapped[1:]]
    return lines


def recipes_using(model: str) -> list[str]:
    return [recipe.name for recipe in list_recipes() if TrainConfig(recipe=recipe.name).model == model]


def model_rows() -> list[dict]:
    """Each registered model: its name, parameter count, what it is for and the recipes that use it."""
    return [{"name": name, "parameters": parameter_count(name), "summary": describe_model(name),
             "recipes": recipes_using(name)} for name in list_models()]


def models_text(width: int) -> str:
    rows = [[row["name"], f"{row['parameters']:,}", row["summary"] + ("" if row["recipes"] else "; in no recipe")]
            for row in model_rows()]
    lines = table(rows, ["model", "parameters", "what it is"], width, right=frozenset({1}))
    lines += ["", *textwrap.wrap("Train one with `fmnist train --model NAME`; `fmnist summary NAME` shows its "
                                 "layers; `fmnist recipes` says which recipe uses which.", width)]
    return "\n".join(lines)


def precision(config: TrainConfig) -> str:
    return "auto" if config.amp == "auto" else config.amp


def recipe_row(recipe: Recipe) -> list[str]:
    config = TrainConfig(recipe=recipe.name)
    return [recipe.name, config.model, str(config.epochs), precision(config), recipe.summary]


def training_size(recipe: Recipe) -> int:
    """Epochs times parameters: orders fmnist's recipes from the quickest to the longest."""
    config = TrainConfig(recipe=recipe.name)
    return config.epochs * parameter_count(config.model)


def ordered_recipes() -> tuple[list[Recipe], list[Recipe]]:
    """fmnist's own recipes, quickest first, then the re-runs of the five projects by name."""
    own = sorted((recipe for recipe in list_recipes() if recipe.source == "fmnist"), key=training_size)
    return own, [recipe for recipe in list_recipes() if recipe.source != "fmnist"]


def recipes_text(width: int) -> str:
    default = TrainConfig()
    [plain] = [recipe for recipe in RECIPES.values() if not recipe.overrides]
    intro = (f"Plain `fmnist train` runs `{plain.name}`: {default.model}, {default.optimizer}, {default.scheduler} "
             f"to a peak --lr of {default.lr}, batch {default.batch_size}, {default.epochs} epochs, --amp "
             f"{default.amp}. `fmnist train --recipe NAME` runs another; options given with it win.")
    own, projects = ordered_recipes()
    rows = table([recipe_row(recipe) for recipe in [*own, *projects]],
                 ["recipe", "model", "epochs", "--amp", "what it is for"], width, right=frozenset({2}))
    first_project = next(index for index, line in enumerate(rows) if line.startswith(projects[0].name + " "))
    lines = [*textwrap.wrap(intro, width), "", *rows[:first_project], "",
             *textwrap.wrap("The experiments of the five projects fmnist grew from, re-run:", width),
             *rows[first_project:]]
    lines += ["", *textwrap.wrap("--amp auto: bf16 where the CPU has bf16 matrix instructions (AVX-512 BF16 or "
                                 "AMX) or the GPU supports it, else fp32; none: fp32. `fmnist recipes NAME` "
                                 "shows one recipe in full: its source, claim, options and measured accuracy.",
                                 width)]
    return "\n".join(lines)


def recipe_text(recipe: Recipe, width: int) -> str:
    """One recipe in full: every field, each wrapped under its label."""
    config = TrainConfig(recipe=recipe.name)
    options = " ".join(f"{name}={value}" for name, value in recipe.overrides.items()) or "none: the defaults"
    fields = [("recipe", recipe.name), ("for", recipe.summary), ("source", recipe.source),
              ("claimed", recipe.claim), ("what", recipe.description), ("options", options),
              ("precision", f"--amp {precision(config)}"), ("measured", recipe.measured),
              ("at budget", f"`{recipe.budget_command()}`: {recipe.measured_at_budget}" if recipe.budget else "")]
    label = max(len(name) for name, _ in fields) + len(GAP)
    lines = []
    for name, value in fields:
        if value:
            lines += textwrap.wrap(value, width, initial_indent=f"{name:<{label}}", subsequent_indent=" " * label)
    return "\n".join(lines)
