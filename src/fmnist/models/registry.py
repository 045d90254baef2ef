"""A registry of models by name, so the CLI, configs and checkpoints can name a model."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from fmnist.errors import ConfigError

ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}
_SUMMARIES: dict[str, str] = {}


def register_model(name: str, summary: str = "") -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: make a model factory available as `create_model(name)`.

    `summary` is one short line on what the network is and what it is for (`fmnist models` shows it);
    without it, the first line of the factory's docstring.
    """

    def decorator(factory: ModelFactory) -> ModelFactory:
        if name in _MODELS:
            # A silent overwrite would make a name mean two different networks.
            raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__module__}")
        _MODELS[name] = factory
        _SUMMARIES[name] = summary or (factory.__doc__ or "").strip().split("\n")[0]
        return factory

    return decorator


def list_models() -> list[str]:
    return sorted(_MODELS)


def describe_model(name: str) -> str:
    """The one line register_model was given for `name`."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _SUMMARIES[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; an unknown name lists the valid ones."""
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _MODELS[name](**kwargs)


def count_parameters(model: nn.Module) -> int:
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
