"""The SwinIR adapter: heads and MLP neurons of every Swin layer (spec: "What a head and a neuron are").

Groups of Swin layer j of residual group i, named after the module that applies the mask
(its ``unit_mask``), in forward order:

* ``layers.i.residual_group.blocks.j.attn`` (heads): head h's rows of ``qkv`` in each of its
  q, k and v parts (weight and bias), column h of the relative position bias table, and
  columns of ``proj``. The mask multiplies each head's attention output before ``proj``.
* ``layers.i.residual_group.blocks.j.mlp`` (neurons): row and bias of ``fc1``, column of ``fc2``;
  the mask multiplies the neuron after GELU.

Trajectory: the output of every Swin layer (layer k = the k-th Swin layer of the model; both
groups of a layer write into it), as tokens of the padded map. Compensation blocks are the
residual groups (RSTBs): the stream between them is the B x H x W x C token map.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.swinir import Features, SwinIR, SwinIRConfig, to_windows
from .adapter import Adapter, ResidualTap, UnitGroup
from .registry import register_adapter

KIND_FIELDS = {"attn": ("head", "layer_heads"), "mlp": ("neuron", "layer_mlp")}


@dataclass
class SwinIRCache:
    """Teacher activations of a batch: input size, shallow features, every group's and layer's input."""

    size: tuple[int, int]
    feats: Features
    group_in: list[Tensor]
    layer_in: list[Tensor]


def layer_name(i: int, j: int) -> str:
    return f"layers.{i}.residual_group.blocks.{j}"


def _split(name: str) -> tuple[int, int, str]:
    """``layers.1.residual_group.blocks.3.attn[...]`` -> (1, 3, ``attn``)."""
    parts = name.split(".")
    return int(parts[1]), int(parts[4]), parts[5]


def _tokens(t: Tensor) -> Tensor:
    """B x H x W x C map -> B x N x C tokens."""
    return t.flatten(1, 2)


@register_adapter("swinir")
class SwinIRAdapter(Adapter):
    """Prunes every Swin layer's attention heads and MLP neurons."""

    def groups(self, model: SwinIR) -> list[UnitGroup]:
        cfg, groups, k = model.cfg, [], 0
        for i, depth in enumerate(cfg.depths):
            for j in range(depth):
                groups += [UnitGroup(f"{layer_name(i, j)}.{module}", kind, i,
                                     getattr(cfg, field)[k], k)
                           for module, (kind, field) in KIND_FIELDS.items()]
                k += 1
        return groups

    def narrowed_config(self, model: SwinIR, kept: dict[str, int]) -> SwinIRConfig:
        """The config with ``kept[g]`` units left in group g (groups left out keep theirs)."""
        cfg = model.cfg.to_dict()
        index = {g.name: g.layer for g in self.groups(model)}
        for name, count in kept.items():
            field = KIND_FIELDS[_split(name)[2]][1]
            cfg[field] = list(cfg[field])
            cfg[field][index[name]] = int(count)
        return SwinIRConfig.from_dict(cfg)

    def set_masks(self, model: SwinIR, masks: dict[str, Tensor] | None) -> None:
        for group in self.groups(model):
            model.get_submodule(group.name).unit_mask = None
        for name, mask in (masks or {}).items():
            model.get_submodule(name).unit_mask = mask

    @staticmethod
    def _run(model: SwinIR, i: int, j: int, t: Tensor, start: Tensor, out: list[Tensor]) -> Tensor:
        """From Swin layer j of group i (input ``t``, group input ``start``) to the last group's
        output; every layer's output is appended to ``out`` as tokens."""
        for rstb in model.layers[i:]:
            for block in rstb.residual_group.blocks[j:]:
                t = block(t)
                out.append(_tokens(t))
            t = start = rstb.close(start, t)
            j = 0
        return t

    def trajectory(self, model: SwinIR, x: Tensor) -> tuple[list[Tensor], Tensor]:
        t, feats = model.embed(x)
        out: list[Tensor] = []
        t = self._run(model, 0, 0, t, t, out)
        return out, model.reconstruct(t, feats, x.shape[-2:])

    def cache(self, model: SwinIR, x: Tensor) -> SwinIRCache:
        t, feats = model.embed(x)
        group_in, layer_in = [], []
        for rstb in model.layers:
            group_in.append(t)
            for block in rstb.residual_group.blocks:
                layer_in.append(t)
                t = block(t)
            t = rstb.close(group_in[-1], t)
        return SwinIRCache(tuple(x.shape[-2:]), feats, group_in, layer_in)

    def run_from(self, model: SwinIR, cache: SwinIRCache, group: UnitGroup,
                 masks: Tensor) -> tuple[list[Tensor], Tensor]:
        variants = masks.shape[0]
        repeat = lambda t: t.repeat(variants, *[1] * (t.dim() - 1))  # noqa: E731
        i, j, _ = _split(group.name)
        module = model.get_submodule(group.name)
        module.unit_mask = masks.repeat_interleave(cache.group_in[0].shape[0], dim=0)
        try:
            out: list[Tensor] = []
            t = self._run(model, i, j, repeat(cache.layer_in[group.layer]),
                          repeat(cache.group_in[i]), out)
            feats = Features(repeat(cache.feats.f0), cache.feats.size)
            return out, model.reconstruct(t, feats, cache.size)
        finally:
            module.unit_mask = None

    def local_layers(self, model: SwinIR, cache: SwinIRCache) -> list[Tensor]:
        blocks = [block for rstb in model.layers for block in rstb.residual_group.blocks]
        return [_tokens(block(t)) for block, t in zip(blocks, cache.layer_in)]

    def slices(self, model: SwinIR, group: UnitGroup) -> list[tuple[str, int, int]]:
        """(parameter name, axis, width per unit); ``qkv``'s axis 0 holds the q, k and v parts,
        each with the heads side by side (see :meth:`Adapter.slices`)."""
        name = group.name
        if group.kind == "neuron":
            return [(f"{name}.fc1.weight", 0, 1), (f"{name}.fc1.bias", 0, 1),
                    (f"{name}.fc2.weight", 1, 1)]
        d = model.get_submodule(name).head_width
        return [(f"{name}.qkv.weight", 0, d), (f"{name}.qkv.bias", 0, d),
                (f"{name}.relative_position_bias_table", 1, 1), (f"{name}.proj.weight", 1, d)]

    # ---------------------------------------------------------------- compensation
    def block_count(self, model: SwinIR) -> int:
        return len(model.layers)

    def enter(self, model: SwinIR, x: Tensor) -> Tensor:
        return model.embed(x)[0]

    def run_block(self, model: SwinIR, i: int, stream: Tensor) -> Tensor:
        return model.layers[i](stream)

    def leave(self, model: SwinIR, x: Tensor, stream: Tensor) -> Tensor:
        """The reconstruction, with the first conv's features computed again (one conv)."""
        return model.reconstruct(stream, model.embed(x)[1], x.shape[-2:])

    def block_of(self, weight: str) -> int:
        return int(weight.split(".")[1])

    def consumes(self, weight: str) -> bool:
        """The bias table's columns are heads, not inputs: only ``proj`` and ``fc2`` consume."""
        return not weight.endswith("relative_position_bias_table")

    def residual(self, model: SwinIR, weight: str) -> ResidualTap:
        """Both branches add to the layer's stream, which ``norm1``/``norm2`` take; ``proj``
        writes windows of the shifted map, so the stream is shifted and cut the same way."""
        i, j, module = _split(weight)
        layer = model.get_submodule(layer_name(i, j))
        if module == "mlp":
            return ResidualTap(f"{layer_name(i, j)}.norm2")
        s, w = layer.shift, layer.window
        return ResidualTap(f"{layer_name(i, j)}.norm1",
                           lambda t: to_windows(torch.roll(t, (-s, -s), dims=(1, 2)), w))
