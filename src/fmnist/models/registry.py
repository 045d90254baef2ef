"""A registry of models by name, so the CLI, configs and checkpoints can name a model."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch import nn

from fmnist.arguments import check_callable, check_int, check_names, check_type, invalid, shown
from fmnist.errors import ConfigError, one_line_reason

ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make a model factory available as `create_model(name)`."""

    check_type(name, str, "name", "register_model", "of type str")
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
        return factory

    return decorator


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; an unknown name lists the valid ones, an unknown keyword the factory's."""
    check_type(name, str, "name", "create_model", "of type str")
    if name not in _MODELS:
        raise invalid("name", name, f"unknown model; choose one of {', '.join(list_models())}", "create_model")
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


def count_parameters(model: nn.Module) -> int:
    check_type(model, nn.Module, "model", "count_parameters", "a torch.nn.Module")
    return sum(parameter.numel() for parameter in model.parameters())


@functools.cache
def has_batch_norm(name: str) -> bool:
    """Whether the registered model `name` has BatchNorm layers (built once per name to look: without
    memory, on the meta device, and without touching the random number generator)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        model = create_model(name)
    return any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules())
