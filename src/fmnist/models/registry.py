"""A registry of models by name, so the CLI, configs and checkpoints can name a model.

Other packages add models through the `fmnist.models` entry-point group (as pytest plugins and timm's
registry let packages extend them): in their pyproject.toml,

    [project.entry-points."fmnist.models"]
    my-models = "my_package.models"          # a module whose @register_model decorators run on import
    tiny-net = "my_package.models:tiny_net"  # or one factory, registered under the entry point's name

They are loaded the first time a model is looked up, so `fmnist train/evaluate/serve/models` in a new
process know them as well as fmnist's own.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
from collections.abc import Callable

import torch
from torch import nn

from fmnist.arguments import check_callable, check_int, check_names, check_type, invalid, shown
from fmnist.errors import ConfigError, one_line_reason

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "fmnist.models"
ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}
_FROM_DISTRIBUTION: dict[str, str] = {}  # model name -> the installed package whose entry point registered it
_plugins_loaded = False
_SUMMARIES: dict[str, str] = {}


def register_model(name: str, summary: str = "") -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make a model factory available as `create_model(name)`.

    `summary` is one short line on what the network is and what it is for (`fmnist models` shows it);
    without it, the first line of the factory's docstring.
    """
    check_type(name, str, "name", "register_model", "of type str")
    check_type(summary, str, "summary", "register_model", "one line of text, a str")
    if not name or name != "".join(name.split()) or not name.isprintable():
        raise invalid("name", name, "give a non-empty name without spaces, as configs and the command line name "
                                    "models", "register_model")
    if name in _MODELS:
        # A silent overwrite would make a name mean two different networks.
        raise invalid("name", name, f"already registered by {_MODELS[name].__module__}", "register_model")

    def decorator(factory: ModelFactory) -> ModelFactory:
        check_callable(factory, "factory", f"register_model({name!r})")
        if name in _MODELS:
            raise invalid("name", name, f"already registered by {_MODELS[name].__module__}", "register_model")
        _MODELS[name] = factory
        _SUMMARIES[name] = summary or (factory.__doc__ or "").strip().split("\n")[0]
        return factory

    return decorator


def load_plugins() -> None:
    """Import the models other installed packages declare in the `fmnist.models` entry-point group, once.

    A plugin that fails to load is logged (a warning naming it and why) and skipped: one broken
    package must not take `fmnist models` or the models of every other package down with it.
    """
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True  # first: a plugin's own import may look models up
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        distribution = entry_point.dist.name if entry_point.dist is not None else entry_point.value
        before = set(_MODELS)
        try:
            loaded = entry_point.load()
            if not inspect.ismodule(loaded) and entry_point.name not in _MODELS:
                register_model(entry_point.name)(loaded)
        except Exception as error:  # any error of someone else's import
            logger.warning("models of %s (entry point %s = %s) not loaded: %s: %s", distribution, entry_point.name,
                           entry_point.value, type(error).__name__, one_line_reason(error))
            continue
        for name in set(_MODELS) - before:
            _FROM_DISTRIBUTION[name] = distribution


def list_models() -> list[str]:
    load_plugins()
    return sorted(_MODELS)


def describe_model(name: str) -> str:
    """The one line register_model was given for `name`."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _SUMMARIES[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; an unknown name lists the valid ones, an unknown keyword the factory's."""
    check_type(name, str, "name", "create_model", "of type str")
    load_plugins()
    if name not in _MODELS:
        raise invalid("name", name, f"unknown model; choose one of {', '.join(list_models())} (other packages add "
                      f"models through the {ENTRY_POINT_GROUP!r} entry-point group)", "create_model")
    factory = _MODELS[name]
    check_factory_arguments(name, factory, kwargs)
    if not kwargs:
        return factory()
    try:
        return factory(**kwargs)
    except (TypeError, ValueError, RuntimeError) as error:  # a value the network cannot be built with
        given = ", ".join(f"{key}={shown(value)}" for key, value in kwargs.items())
        raise ConfigError(f"create_model({name!r}, {given}): {name} cannot be built with these "
                          f"({type(error).__name__}: {one_line_reason(error)})", next(iter(kwargs))) from None


def check_factory_arguments(name: str, factory: ModelFactory, kwargs: dict) -> None:
    """Keywords the factory takes (a did-you-mean for the rest), and whole numbers >= 1 where it wants an int."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable without a signature to read: the factory will say
        return
    if not any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        check_names(kwargs, list(parameters), "create_model")
    for key, value in kwargs.items():
        if key in parameters and parameters[key].annotation in (int, "int"):
            check_int(value, key, "create_model", minimum=1)


def model_origin(name: str) -> dict:
    """Where a registered model comes from, so a run can say what another process must import to
    rebuild it: {"module": ..., "distribution": ... (an installed package's entry point) or None}."""
    load_plugins()
    factory = _MODELS[name]
    return {"module": getattr(factory, "__module__", None), "distribution": _FROM_DISTRIBUTION.get(name)}


def is_builtin(origin: dict | None) -> bool:
    """Whether a model's origin (model_origin) is fmnist's own zoo, which every process has."""
    module = (origin or {}).get("module") or ""
    return module.startswith("fmnist.")


def how_to_make_known(name: str, origin: dict | None) -> str:
    """What makes the model `name` known to another process, from what its run recorded."""
    origin = origin or {}
    if origin.get("distribution"):
        return (f"it came from the installed package {origin['distribution']!r}: install it here "
                f"(pip install {origin['distribution']})")
    module = origin.get("module")
    if module and module != "__main__":
        return (f"it was registered by the module {module!r}: import {module} before loading, or install it "
                f"with an entry point in the {ENTRY_POINT_GROUP!r} group (docs/python-api.md)")
    where = "in a script or notebook (__main__)" if module == "__main__" else "outside fmnist"
    return (f"it was registered {where}: run that register_model code again before loading, or move it into "
            f"a module or package with an entry point in the {ENTRY_POINT_GROUP!r} group (docs/python-api.md)")


def count_parameters(model: nn.Module) -> int:
    check_type(model, nn.Module, "model", "count_parameters", "a torch.nn.Module")
    return sum(parameter.numel() for parameter in model.parameters())


@functools.cache
def parameter_count(name: str) -> int:
    """The registered model `name`'s parameter count, built on the meta device to count (no memory, no
    random numbers drawn): `fmnist models` lists 26-million-parameter networks in no time."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return count_parameters(create_model(name))


@functools.cache
def has_batch_norm(name: str) -> bool:
    """Whether the registered model `name` has BatchNorm layers (built once per name to look: without
    memory, on the meta device, and without touching the random number generator)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = create_model(name)
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())
