"""Pruning adapters by architecture name (the name :func:`srprune.models.arch_name` gives).

An adapter registers itself with :func:`register_adapter` in ``srprune.pruning.<arch name>``;
:func:`adapter_for` imports that module the first time a model of the architecture is pruned,
so nothing else names it.
"""
from __future__ import annotations

import importlib
from typing import Callable

from torch import nn

from ..models import arch_name
from .adapter import Adapter

ADAPTERS: dict[str, type[Adapter]] = {}


def register_adapter(name: str) -> Callable[[type[Adapter]], type[Adapter]]:
    """Class decorator: the pruning adapter of architecture ``name``."""
    def add(cls: type[Adapter]) -> type[Adapter]:
        if name in ADAPTERS:
            raise ValueError(f"a pruning adapter for {name!r} is registered twice")
        ADAPTERS[name] = cls
        return cls
    return add


def adapter_for(model: nn.Module) -> Adapter:
    """A new adapter for ``model``'s architecture (its module imported on first use)."""
    name = arch_name(model)
    if name not in ADAPTERS:
        try:
            importlib.import_module(f"{__package__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__package__}.{name}":
                raise
    if name not in ADAPTERS:
        raise ValueError(f"no pruning adapter for architecture {name!r}; known: {sorted(ADAPTERS)}")
    return ADAPTERS[name]()
