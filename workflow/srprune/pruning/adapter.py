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

Channel groups refine a head group: their ``parent`` is the head group and unit
``head * per_parent + channel`` is one channel of one head. A masks dict may omit any group (it
then keeps everything); valid masks (:meth:`Adapter.check_masks`) remove every channel of a
removed head and keep the same number (at least one) of channels in every kept head of a module,
so that the rebuilt module stays one batched attention.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError
from ..complexity import analytic_macs, reference_lr_size
from ..models import arch_of, scale_of

KINDS = ("head", "neuron", "qk_channel", "v_channel")
CHANNEL_KINDS = ("qk_channel", "v_channel")
UNIT_KINDS_DEFAULT = ("head", "neuron")


@dataclass(frozen=True)
class UnitGroup:
    """One prunable module: ``count`` units of one ``kind`` in ``block``, writing into ``layer``.

    ``layer`` indexes :meth:`Adapter.trajectory`'s outputs: the first layer whose output the
    units change. A channel group names its head group as ``parent`` and has ``per_parent``
    channels per head.
    """

    name: str
    kind: str
    block: int
    count: int
    layer: int = 0
    parent: str | None = None
    per_parent: int = 0


def check_unit_kinds(kinds: list[str] | tuple[str, ...] | str) -> tuple[str, ...]:
    """The unit kinds to prune, validated (a comma-separated string is accepted)."""
    if isinstance(kinds, str):
        kinds = [k.strip() for k in kinds.split(",") if k.strip()]
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"units must be distinct entries of {KINDS}, got {list(kinds)}")
    if any(k in CHANNEL_KINDS for k in kinds) and "head" not in kinds:
        raise ValueError(f"units {list(kinds)}: channel units (qk_channel, v_channel) need "
                         f"'head' too (a removed head takes its channels with it)")
    return kinds


def groups_of_kinds(groups: list[UnitGroup], kinds: list[str] | tuple[str, ...] | str
                    ) -> list[UnitGroup]:
    """The groups whose kind is one of ``kinds`` (validated), in their order."""
    kinds = check_unit_kinds(kinds)
    return [g for g in groups if g.kind in kinds]


@dataclass(frozen=True)
class ResidualTap:
    """Where a consumer layer's output joins the residual stream (for compensation).

    ``module``'s first input is the stream the output is added to; ``tokens`` turns that input
    into the consumer's token layout (None: already ``... x C`` in the same order); ``mix`` names
    a weight M between the two (stream += output @ M^T; None: added as it is).
    """

    module: str
    tokens: Callable[[Tensor], Tensor] | None = None
    mix: str | None = None


class Adapter(ABC):
    """Everything the pruning core needs to know about one architecture."""

    @abstractmethod
    def groups(self, model: nn.Module) -> list[UnitGroup]:
        """Prunable groups in forward order; every group is scored on its own."""

    def reference_lr_size(self, model: nn.Module) -> tuple[int, int]:
        """The input size (H, W) at which MACs are counted and budgets are set.

        Default: the field's reference, the input whose output is 1280x720 at the model's scale.
        """
        return reference_lr_size(scale_of(model))

    def narrowed_config(self, model: nn.Module, kept: dict[str, int]) -> Any:
        """The config of the model with ``kept[g]`` units left in group g (omitted: all).

        The one model-specific piece of the default :meth:`macs`, :meth:`params` and
        :meth:`rebuild`; an adapter that overrides all three need not give it.
        """
        raise NotImplementedError(f"{type(self).__name__} gives no narrowed_config: override "
                                  f"it, or macs, params and rebuild")

    def macs(self, model: nn.Module, kept: dict[str, int], lr_size: tuple[int, int]) -> int:
        """Full MACs (attention included) of the model with ``kept[g]`` units left in group g.

        Default: the architecture's registered closed-form count of :meth:`narrowed_config`.
        """
        return analytic_macs(self.narrowed_config(model, kept), lr_size)

    @abstractmethod
    def set_masks(self, model: nn.Module, masks: dict[str, Tensor] | None) -> None:
        """Make the forward pass apply ``masks`` (None: remove all masks)."""

    @abstractmethod
    def trajectory(self, model: nn.Module, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """Output of every layer as tokens (B x N x C), in order, and the model output."""

    def cache(self, model: nn.Module, x: Tensor) -> Any:
        """Teacher activations needed to restart the forward at any group (opaque).

        Default: the input itself (:meth:`run_from` then runs the whole forward).
        """
        return x

    def run_from(self, model: nn.Module, cache: Any, group: UnitGroup,
                 masks: Tensor) -> tuple[list[Tensor], Tensor]:
        """Forward from ``group`` on with V masked variants of it at once.

        ``masks`` is (V, units) for ``group``; the cached batch of B inputs is repeated V times
        (variant-major: sample ``v * B + b``). Returns the token outputs of layers
        ``group.layer`` to the last, each (V*B) x N x C, and the model output, (V*B) x ...

        Default (with the default :meth:`cache`): the whole masked forward on the repeated
        input, one mask row per sample; an adapter restarts from cached activations to save
        the layers before the group.
        """
        x = cache.repeat(masks.shape[0], *[1] * (cache.dim() - 1))
        with masked(self, model, {group.name: masks.repeat_interleave(cache.shape[0], dim=0)}):
            feats, out = self.trajectory(model, x)
        return feats[group.layer:], out

    @abstractmethod
    def local_layers(self, model: nn.Module, cache: Any) -> list[Tensor]:
        """Every layer's token output, each run alone from the teacher's cached input to it.

        Uses the masks that :meth:`set_masks` applied (one row per cached sample allowed), so
        that layer L's output depends on layer L's masks only.
        """

    @abstractmethod
    def slices(self, model: nn.Module, group: UnitGroup) -> list[tuple[str, int, int]]:
        """(parameter name, axis, channels per unit) of every slice the group's units own.

        Unit u owns channels ``[u * width, (u + 1) * width)`` of the axis; an axis that holds
        several equal parts of ``units * width`` channels (a fused q/k/v projection) gives unit
        u those channels in every part (:func:`unit_channels`).
        """

    def params(self, model: nn.Module, kept: dict[str, int]) -> int:
        """Parameters of the physically rebuilt model with ``kept[g]`` units left in group g.

        Default: :meth:`narrowed_config` built on the meta device (shapes only), counted.
        """
        with torch.device("meta"):
            narrow = arch_of(model).build(self.narrowed_config(model, kept).to_dict())
        return sum(p.numel() for p in narrow.parameters())

    @torch.no_grad()
    def rebuild(self, model: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
        """A physically smaller model of the same class without the masked units.

        Default: :meth:`narrowed_config` built on the model's device, loaded strictly with the
        model's weights less the masked units' slices (:meth:`sliced_state`).
        """
        self.check_masks(model, masks)
        state = self.sliced_state(model, masks)
        config = self.narrowed_config(model, kept_counts(masks)).to_dict()
        small = arch_of(model).build(config).to(next(model.parameters()).device)
        small.load_state_dict({key: state[key] for key in small.state_dict()}, strict=True)
        return small.train(model.training)

    # ---------------------------------------------------------------- compensation
    @abstractmethod
    def block_count(self, model: nn.Module) -> int:
        """Number of blocks: the parts of the forward that :meth:`run_block` runs in turn."""

    @abstractmethod
    def enter(self, model: nn.Module, x: Tensor) -> Tensor:
        """The stream that block 0 takes, for inputs ``x``."""

    @abstractmethod
    def run_block(self, model: nn.Module, i: int, stream: Tensor) -> Tensor:
        """Block i on ``stream`` (with the masks :meth:`set_masks` applied); the next stream."""

    @abstractmethod
    def leave(self, model: nn.Module, x: Tensor, stream: Tensor) -> Tensor:
        """The model's output for inputs ``x`` from the stream after the last block."""

    @abstractmethod
    def block_of(self, weight: str) -> int:
        """The block whose forward uses parameter ``weight``."""

    def consumer_layer(self, model: nn.Module, weight: str) -> nn.Linear:
        """The Linear layer owning ``weight``, a slice with axis 1 (it consumes units)."""
        layer = model.get_submodule(weight.rsplit(".", 1)[0])
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"{weight} consumes units but is not an nn.Linear weight; override "
                            f"{type(self).__name__}.consumer_layer")
        return layer

    def consumes(self, weight: str) -> bool:
        """Whether ``weight``, a slice with axis 1, takes the units as its inputs (compensation
        refits it); False where axis 1 only lists units, e.g. a per-head bias table."""
        return True

    def residual(self, model: nn.Module, weight: str) -> ResidualTap | None:
        """The residual stream the consumer of ``weight`` writes to (None: not known)."""
        return None

    # ---------------------------------------------------------------- built on the slices
    def unit_magnitude(self, model: nn.Module, group: UnitGroup) -> Tensor:
        """L1 norm of each unit's weights (all its coupled slices, biases included)."""
        total = torch.zeros(group.count)
        for name, axis, width in self.slices(model, group):
            weight = model.get_parameter(name).detach().abs().movedim(axis, 0)
            parts = weight.shape[0] // max(group.count * width, 1)
            total += weight.reshape(parts, group.count, -1).sum(dim=(0, 2)).cpu()
        return total

    def check_masks(self, model: nn.Module, masks: dict[str, Tensor]) -> None:
        """Raise ValueError naming the first invalid entry of ``masks`` (see the module doc)."""
        by_name = {g.name: g for g in self.groups(model)}
        for name, mask in masks.items():
            if name not in by_name:
                raise ValueError(f"masks name an unknown group {name!r}")
            if not isinstance(mask, Tensor) or tuple(mask.shape) != (by_name[name].count,):
                shape = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
                raise ValueError(f"mask of {name!r} must have shape ({by_name[name].count},), "
                                 f"got {shape}")
        for group in by_name.values():
            if group.parent is not None and group.count and group.name in masks:
                _check_channels(group, masks[group.name], masks.get(group.parent))

    def _sliced(self, model: nn.Module, masks: dict[str, Tensor]
                ) -> Iterator[tuple[str, int, Tensor, Tensor]]:
        """(parameter name, axis, kept indices, removed indices), one per (parameter, axis).

        A parameter cut by several groups (a head group and its channel groups) gets one keep
        vector: the channels every one of them keeps.
        """
        by_name = {g.name: g for g in self.groups(model)}
        keeps: dict[tuple[str, int], Tensor] = {}
        for group_name, mask in masks.items():
            keep = mask.detach().bool().cpu()
            for name, axis, width in self.slices(model, by_name[group_name]):
                size = model.get_parameter(name).shape[axis]
                channels = unit_channels(keep, width, size, f"mask of {group_name!r}",
                                         f"{name} (axis {axis})")
                previous = keeps.get((name, axis), torch.ones(size, dtype=torch.bool))
                keeps[(name, axis)] = previous & channels
        for (name, axis), channels in keeps.items():
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


def unit_channels(keep: Tensor, width: int, size: int, what: str, where: str) -> Tensor:
    """Channel keep vector of an axis of ``size`` channels from the units' ``keep`` vector.

    The axis holds ``size / (units * width)`` equal parts (1 for most layers, 3 for a fused
    q/k/v projection); unit u owns ``width`` channels at ``u * width`` in each part.
    """
    block = keep.numel() * width
    if (size % block if block else size):
        raise ValueError(f"{what} covers {block} channels of {where}, which has {size} (not a "
                         f"whole number of parts)")
    return keep.repeat_interleave(width).repeat(size // block if block else 1)


@contextmanager
def masked(adapter: Adapter, model: nn.Module, masks: dict[str, Tensor]) -> Iterator[nn.Module]:
    """Run ``model`` with ``masks`` applied inside the ``with`` block."""
    adapter.set_masks(model, masks)
    try:
        yield model
    finally:
        adapter.set_masks(model, None)


def _check_channels(group: UnitGroup, mask: Tensor, parent: Tensor | None) -> None:
    """A channel mask: removed heads keep nothing, kept heads keep the same number (>= 1)."""
    per_head = mask.detach().bool().cpu().view(-1, group.per_parent)
    heads = (torch.ones(per_head.shape[0], dtype=torch.bool) if parent is None
             else parent.detach().bool().cpu())
    kept = per_head.sum(dim=1)
    if kept[~heads].any():
        head = int((~heads & (kept > 0)).nonzero()[0])
        raise ValueError(f"mask of {group.name!r} keeps channels of head {head}, which "
                         f"{group.parent!r} removes")
    widths = sorted({int(k) for k in kept[heads]})
    if widths and (widths[0] == 0 or len(widths) > 1):
        raise ValueError(f"mask of {group.name!r} keeps {kept[heads].tolist()} channels in the "
                         f"kept heads: every kept head must keep the same number, at least 1")


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


def recorded_groups(artifact: dict[str, Any]) -> dict[str, int]:
    """The ``{group: units}`` an artifact (scores, masks, checkpoint meta) says it was made for."""
    return {str(g["name"]): int(g["count"]) for g in artifact["groups"]}


def sizes(per_group: dict[str, Any]) -> dict[str, int]:
    """``{group: units}`` of per-group masks or scores."""
    return {name: len(values) for name, values in per_group.items()}


def check_groups(groups: list[UnitGroup], recorded: dict[str, int], source: str,
                 complete: bool = True) -> None:
    """Refuse an artifact made for other groups than the model's, naming the first mismatch.

    ``recorded`` maps group names to unit counts; with ``complete`` it must list every group of
    the model, else (masks or scores of some groups) only groups the model has.
    """
    counts = full_kept(groups)
    for name, count in recorded.items():
        if name not in counts:
            raise CheckpointError(f"{source} has a group {name!r} that this model lacks: it was "
                                  f"made for another model (check --model-config)")
        if count != counts[name]:
            raise CheckpointError(f"{source} has {count} units in group {name!r}, this model "
                                  f"{counts[name]}: it was made for another model (check "
                                  f"--model-config)")
    missing = [name for name in counts if name not in recorded]
    if complete and missing:
        raise CheckpointError(f"{source} lacks the group {missing[0]!r} of this model "
                              f"({len(missing)} missing): it was made for another model")
