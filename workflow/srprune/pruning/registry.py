"""Pruning adapters by architecture name (the name :func:`srprune.models.arch_name` gives)."""
from __future__ import annotations

from torch import nn

from ..models import arch_name
from .adapter import Adapter
from .catanet import CATANetAdapter
from .swinir import SwinIRAdapter

ADAPTERS: dict[str, type[Adapter]] = {"catanet": CATANetAdapter, "swinir": SwinIRAdapter}

def adapter_for(model: nn.Module) -> Adapter:
    name = arch_name(model)
    if name not in ADAPTERS:
        raise ValueError(f"no pruning adapter for architecture {name!r}; known: {sorted(ADAPTERS)}")
    return ADAPTERS[name]()
