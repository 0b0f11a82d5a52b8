"""Model architectures: every module of this package registers its architecture on import.

A new architecture is one module here that calls :func:`register_arch`; nothing else names it
(the modules are found by :func:`_discover`).
"""
from __future__ import annotations

import importlib
import pkgutil

from .registry import (ARCHS, DEFAULT_ARCH, Arch, arch_name, arch_of, create_model, get_arch, model_config,
                       register_arch, scale_of)


def _discover() -> None:
    """Import every module of this package, so that each registers its architecture."""
    for info in pkgutil.iter_modules(__path__):
        if info.name != "registry":
            importlib.import_module(f"{__name__}.{info.name}")


_discover()

__all__ = ["ARCHS", "DEFAULT_ARCH", "Arch", "arch_name", "arch_of", "create_model", "get_arch", "model_config",
           "register_arch", "scale_of"]
