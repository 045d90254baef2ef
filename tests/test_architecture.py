"""The package's shape: layers that only import downward, no cycles, and an API no module shadows.

Every `import` in every module counts, also the ones inside functions: a cycle hidden in a function
is still a cycle for a reader.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import fmnist

PACKAGE = Path(fmnist.__file__).parent

# Lowest first. A module may import from its own layer and the layers before it, never after.
LAYERS = [
    ("fmnist.version", "fmnist.errors", "fmnist.arguments"),
    ("fmnist.faults",),
    ("fmnist.files",),
    ("fmnist.data",),
    ("fmnist.models",),
    ("fmnist.training",),
    ("fmnist.runs",),
    ("fmnist.inference", "fmnist.explain"),
    ("fmnist.results",),
    ("fmnist.reports",),
    ("fmnist.experiment",),
    ("fmnist.tools",),
    ("fmnist.serve",),
    ("fmnist.cli", "fmnist.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    if module == "fmnist":
        return len(LAYERS)  # the public API sits on top of everything it names
    for index, prefixes in enumerate(LAYERS):
        if any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def imported_modules(module: str) -> set[str]:
    """fmnist modules that `module` imports anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found.update(name for name in names if name in MODULES and name != module)
    return found


GRAPH = {module: imported_modules(module) for module in MODULES}


def test_every_module_has_a_layer():
    for module in MODULES:
        layer_of(module)


def test_modules_import_only_their_own_or_lower_layers():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in GRAPH.items() for target in targets if layer_of(target) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    cycles, done, stack = [], set(), []

    def visit(module: str) -> None:
        if module in stack:
            cycles.append(" -> ".join(stack[stack.index(module):] + [module]))
            return
        if module in done:
            return
        stack.append(module)
        for target in sorted(GRAPH[module]):
            if target != "fmnist":  # importing the package itself is importing its __init__, checked above
                visit(target)
        stack.pop()
        done.add(module)

    for module in sorted(GRAPH):
        visit(module)
    assert not cycles, "\n".join(cycles)


def test_no_module_shadows_a_public_name():
    """`import fmnist.train` would rebind fmnist.train to a module: no API name may also be a module."""
    shadowed = [name for name in fmnist.__all__ if importlib.util.find_spec(f"fmnist.{name}") is not None]
    assert not shadowed


def test_the_public_api_is_importable_from_the_package():
    for name in fmnist.__all__:
        assert getattr(fmnist, name) is not None
    for name in ("TrainConfig", "train", "load_splits", "TensorLoader", "create_model", "list_models", "list_recipes",
                 "train_one_epoch", "evaluate", "fit", "load_model", "predict"):
        assert name in fmnist.__all__
