"""The architecture registry: each model module registers itself here once, by name.

An :class:`Arch` says everything srprune needs to know about an architecture without importing
its module: how to build it from a config, how to read a config off a state dict (and which
hyper-parameters a state dict cannot tell), and its closed-form MAC count. Pruning adapters
register separately, in :mod:`srprune.pruning.registry`, under the same name.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn


@dataclass(frozen=True)
class Arch:
    """How to build an architecture, read its config off a state dict and count its MACs.

    ``hidden`` maps the hyper-parameters a state dict cannot tell (CATANet's ``heads``) to their
    defaults; :func:`srprune.checkpoint.resolve_config` passes them to ``infer_config``.
    ``macs(config, (H, W))`` returns ``{"total", "per_module", "per_layer"}`` (see
    :func:`srprune.complexity.macs_full`). ``float_buffers`` keeps buffers such as CATANet's
    token centres out of the weight counts of ``srprune inspect``. The built model must expose ``cfg`` (an instance of
    ``config_class`` with ``to_dict()``) and ``scale`` (its upscaling factor). ``tiny`` is a
    config of a few hundred parameters that still has every kind of prunable unit (the adapter
    conformance suite, tests/pruning/test_adapter_conformance.py, runs every architecture at it).
    """

    name: str
    config_class: type
    build: Callable[[dict[str, Any]], nn.Module]
    infer_config: Callable[..., dict[str, Any]]
    inferable: tuple[str, ...]
    macs: Callable[[Any, tuple[int, int]], dict[str, Any]]
    hidden: dict[str, Any] = field(default_factory=dict)
    float_buffers: tuple[str, ...] = ()  # name suffixes of floating buffers that are not weights
    shape_hint: str = ""  # added to the error when a file that does not describe itself misfits
    # smallest LR tile side (of a config) that tiled inference accepts: windows, patches, groups
    min_tile: Callable[[Any], int] = lambda config: 1
    tiny: dict[str, Any] = field(default_factory=dict)


ARCHS: dict[str, Arch] = {}
DEFAULT_ARCH = "catanet"  # of a checkpoint that does not name its architecture


def register_arch(arch: Arch) -> Arch:
    """Add ``arch`` under its name (once: a second registration of a name is a bug)."""
    key = arch.name.lower()
    if key in ARCHS:
        raise ValueError(f"architecture {arch.name!r} is registered twice")
    ARCHS[key] = arch
    return arch


def get_arch(name: str) -> Arch:
    """The registered architecture ``name`` (case-insensitive); a clear error otherwise."""
    try:
        return ARCHS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHS)}") from None


def create_model(arch: str = DEFAULT_ARCH, **config: Any) -> nn.Module:
    """Build an architecture by name; unspecified hyper-parameters take their defaults."""
    return get_arch(arch).build(config)


def arch_of(model_or_config: Any) -> Arch:
    """The registered architecture of a model or of a config object."""
    cfg = getattr(model_or_config, "cfg", model_or_config)
    for arch in ARCHS.values():
        if isinstance(cfg, arch.config_class):
            return arch
    raise ValueError(f"{type(model_or_config).__name__} is not a registered architecture "
                     f"(known: {sorted(ARCHS)})")


def arch_name(model: nn.Module) -> str:
    """The registered name of ``model``'s architecture."""
    return arch_of(model).name


def model_config(model: nn.Module) -> dict[str, Any]:
    """The full configuration a registered model was built from (plain types)."""
    return model.cfg.to_dict()


def scale_of(model: nn.Module) -> int:
    """The upscaling factor of a registered model (its declared ``scale``)."""
    scale = getattr(model, "scale", None)
    if not isinstance(scale, int):
        raise ValueError(f"{type(model).__name__} does not declare its upscaling factor "
                         f"(an int property 'scale')")
    return scale
