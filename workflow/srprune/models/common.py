"""What every architecture's module shares: the attention-implementation switch, zero-width
layers, unit masks, and configurations read from and written to plain dicts.

An architecture builds on :class:`SRNet` (its network), :class:`SwitchableAttention` (each of
its attention modules) and :class:`DictConfig` (its configuration dataclass), and masks units
with :func:`scale_units`.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, ClassVar, Iterator, TypeVar

from torch import Tensor, nn

from ..settings import from_mapping

ATTENTION_IMPLS = ("fast", "reference")
C = TypeVar("C", bound="DictConfig")


class DictConfig:
    """Mixin of a configuration dataclass: ``to_dict`` and ``from_dict`` (unknown keys refused,
    named with :attr:`what`)."""

    what: ClassVar[str] = "model config"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        return from_mapping(cls, values, cls.what)

    @classmethod
    def with_overrides(cls: type[C], cfg: C | None, overrides: dict[str, Any]) -> C:
        """``cfg`` (default: the default config) with the keys of ``overrides`` replaced."""
        if cfg is None:
            return cls(**overrides)
        return cls.from_dict({**cfg.to_dict(), **overrides}) if overrides else cfg


class SwitchableAttention(nn.Module):
    """An attention module that computes the same numbers two ways: ``fast`` (default) or the
    authors' ``reference`` formulation; :meth:`SRNet.set_attention_impl` chooses."""

    def __init__(self) -> None:
        super().__init__()
        self.impl = "fast"


class SRNet(nn.Module):
    """A registered super-resolution network: ``cfg`` (a :class:`DictConfig` with ``upscale``)
    and the switch of all its attention modules."""

    cfg: Any

    @property
    def scale(self) -> int:
        """The upscaling factor."""
        return self.cfg.upscale

    def set_attention_impl(self, impl: str) -> None:
        """Choose ``fast`` (default) or the authors' ``reference`` attention formulation."""
        if impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
        for module in self.modules():
            if isinstance(module, SwitchableAttention):
                module.impl = impl


@contextmanager
def zero_width_ok() -> Iterator[None]:
    """Initialising zero-element tensors (a fully pruned module) without torch's warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        yield


def linear(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
    """nn.Linear that also accepts zero width (a fully pruned module) without a warning."""
    with zero_width_ok():
        return nn.Linear(n_in, n_out, bias=bias)


def scale_units(x: Tensor, mask: Tensor | None, axis: int = -1, width: int = 1) -> Tensor:
    """Multiply unit u of ``axis`` of ``x`` (entries ``[u*width, (u+1)*width)``) by its mask value.

    ``mask`` is (units,) for every sample, or (B, units) with one row per sample; the leading
    axis of ``x`` is then B times any number of sub-items (e.g. the patches of each image).
    """
    if mask is None:
        return x
    units = x.movedim(axis, -1).unflatten(-1, (-1, width))
    if mask.dim() == 1:
        out = units * mask[:, None].to(x)
    else:
        per_sample = units.unflatten(0, (mask.shape[0], -1))
        rows = mask.reshape(mask.shape[0], *[1] * (per_sample.dim() - 3), mask.shape[1], 1)
        out = (per_sample * rows.to(x)).flatten(0, 1)
    return out.flatten(-2).movedim(-1, axis)
