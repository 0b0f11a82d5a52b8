"""What a model must describe to be pruned: the adapter interface.

Pruning is described by *groups*: a group is one prunable module (an attention with its heads,
an FFN with its neurons) whose units are coupled slices of several layers (rows of the layers
that produce a unit's channels, columns of the layer that consumes them). Importance
(:mod:`.importance`), selection (:mod:`.selection`) and zeroing or physical removal are separate
steps that talk to the model only through an :class:`Adapter`, so another architecture plugs in
by writing one adapter, not by editing the core.

Masks are ``{group name: tensor of shape (units,)}`` with 1 (keep) or 0 (remove); during scoring a
group's mask may carry one row per sample, ``(batch, units)``, so that many masked variants run in
one batched forward. Applying a mask must be exactly equivalent to removing the masked units, and
a mask is a multiplier that autograd differentiates through (the sketch scorer needs it).

The *trajectory* is the output of every layer in forward order (for CATANet two per block: the
TAB output and the block output). Each group names the ``layer`` its units write into; importance
scores a unit on the layers after it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

KINDS = ("head", "neuron")


@dataclass(frozen=True)
class UnitGroup:
    """One prunable module: ``count`` units of one ``kind`` in ``block``, writing into ``layer``.

    ``layer`` indexes :meth:`Adapter.trajectory`'s outputs: the first layer whose output the
    units change.
    """

    name: str
    kind: str
    block: int
    count: int
    layer: int


class Adapter(ABC):
    """Everything the pruning core needs to know about one architecture."""

    @abstractmethod
    def groups(self, model: nn.Module) -> list[UnitGroup]:
        """Prunable groups in forward order; every group is scored on its own."""

    @abstractmethod
    def reference_lr_size(self, model: nn.Module) -> tuple[int, int]:
        """The input size (H, W) at which MACs are counted and budgets are set."""

    @abstractmethod
    def macs(self, model: nn.Module, kept: dict[str, int], lr_size: tuple[int, int]) -> int:
        """Full MACs (attention included) of the model with ``kept[g]`` units left in group g."""

    @abstractmethod
    def set_masks(self, model: nn.Module, masks: dict[str, Tensor] | None) -> None:
        """Make the forward pass apply ``masks`` (None: remove all masks)."""

    @abstractmethod
    def trajectory(self, model: nn.Module, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Output of every layer as tokens (B x N x C), in order, and the model output."""

    @abstractmethod
    def cache(self, model: nn.Module, x: Tensor) -> Any:
        """Teacher activations needed to restart the forward at any group (opaque)."""

    @abstractmethod
    def run_from(self, model: nn.Module, cache: Any, group: UnitGroup,
                 masks: Tensor) -> tuple[list[Tensor], Tensor]:
        """Forward from ``group`` on with V masked variants of it at once.

        ``masks`` is (V, units) for ``group``; the cached batch of B inputs is repeated V times
        (variant-major: sample ``v * B + b``). Returns the token outputs of layers
        ``group.layer`` to the last, each (V*B) x N x C, and the model output, (V*B) x ...
        """

    @abstractmethod
    def local_layers(self, model: nn.Module, cache: Any) -> list[Tensor]:
        """Every layer's token output, each run alone from the teacher's cached input to it.

        Uses the masks that :meth:`set_masks` applied (one row per cached sample allowed), so
        that layer L's output depends on layer L's masks only.
        """

    @abstractmethod
    def slices(self, model: nn.Module, group: UnitGroup) -> list[tuple[str, int, int]]:
        """(parameter name, axis, channels per unit) of every slice the group's units own."""

    @abstractmethod
    def params(self, model: nn.Module, kept: dict[str, int]) -> int:
        """Parameters of the physically rebuilt model with ``kept[g]`` units left in group g."""

    @abstractmethod
    def rebuild(self, model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
        """A physically smaller model of the same class without the masked units."""

    # ---------------------------------------------------------------- built on the slices
    def unit_magnitude(self, model: nn.Module, group: UnitGroup) -> Tensor:
        """L1 norm of each unit's weights (all its coupled slices, biases included)."""
        total = torch.zeros(group.count)
        for name, axis, width in self.slices(model, group):
            weight = model.get_parameter(name).detach().abs().movedim(axis, 0)
            total += weight.reshape(group.count, -1).sum(dim=1).cpu()
        return total

    def _sliced(self, model: nn.Module, masks: dict[str, Tensor]
                ) -> Iterator[tuple[str, int, Tensor, Tensor]]:
        """(parameter name, axis, kept channel indices, removed channel indices) per slice."""
        by_name = {g.name: g for g in self.groups(model)}
        for group_name, mask in masks.items():
            keep = mask.detach().bool().cpu()
            for name, axis, width in self.slices(model, by_name[group_name]):
                channels = keep.repeat_interleave(width)
                yield name, axis, channels.nonzero().flatten(), (~channels).nonzero().flatten()

    @torch.no_grad()
    def zero_units(self, model: nn.Module, masks: dict[str, Tensor]) -> None:
        """Set every weight (and bias) slice of the masked units to zero, in place."""
        for name, axis, _, removed in self._sliced(model, masks):
            weight = model.get_parameter(name)
            weight.index_fill_(axis, removed.to(weight.device), 0.0)

    def sliced_state(self, model: nn.Module, masks: dict[str, Tensor]) -> dict[str, Tensor]:
        """The model's state dict with the masked units' slices cut out (for :meth:`rebuild`)."""
        state = dict(model.state_dict())
        for name, axis, kept, _ in self._sliced(model, masks):
            state[name] = state[name].index_select(axis, kept.to(state[name].device))
        return state

    @torch.no_grad()
    def write_back(self, model: nn.Module, small: nn.Module, masks: dict[str, Tensor]) -> None:
        """Copy a rebuilt model's weights into the full-size ``model``; removed units become 0."""
        small_state = small.state_dict()
        target = model.state_dict()
        placed = set()
        for name, axis, kept, _ in self._sliced(model, masks):
            full = target[name]
            full.zero_()
            if name in small_state:
                full.index_copy_(axis, kept.to(full.device), small_state[name].to(full))
            placed.add(name)
        for name, value in small_state.items():
            if name not in placed:
                target[name].copy_(value)


@contextmanager
def masked(adapter: Adapter, model: nn.Module, masks: dict[str, Tensor]) -> Iterator[nn.Module]:
    """Run ``model`` with ``masks`` applied inside the ``with`` block."""
    adapter.set_masks(model, masks)
    try:
        yield model
    finally:
        adapter.set_masks(model, None)


def full_kept(groups: list[UnitGroup]) -> dict[str, int]:
    return {g.name: g.count for g in groups}


def block_output_layers(groups: list[UnitGroup]) -> list[int]:
    """Trajectory index of each block's output (its last layer with units), in block order."""
    last: dict[int, int] = {}
    for g in groups:
        last[g.block] = max(last.get(g.block, g.layer), g.layer)
    return [last[b] for b in sorted(last)]


def kept_counts(masks: dict[str, Tensor]) -> dict[str, int]:
    return {name: int(mask.bool().sum()) for name, mask in masks.items()}


def unit_costs(adapter: Adapter, model: nn.Module, lr_size: tuple[int, int]) -> dict[str, int]:
    """MACs one unit of each group costs: full model minus the model with one unit fewer."""
    groups = adapter.groups(model)
    full = full_kept(groups)
    total = adapter.macs(model, full, lr_size)
    return {g.name: total - adapter.macs(model, {**full, g.name: g.count - 1}, lr_size)
            for g in groups}
