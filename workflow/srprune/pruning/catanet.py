"""The CATANet adapter: its prunable groups, masked and restarted forwards, costs and weights.

Groups of block i (spec, "What a head and a neuron are"), named after the module that applies
the mask:

* ``blocks.i.0.iasa_attn`` (TAB heads): rows of IASA ``to_q``/``to_k``/``to_v`` and IRCA
  ``to_k``/``to_v``, columns of IASA ``proj``. The mask multiplies each head's output before
  ``proj``; a head's IRCA keys and values only feed that head, so this removes both terms.
* ``blocks.i.0.mlp.fn`` and ``blocks.i.1.layer.1.fn`` (ConvFFN neurons): row and bias of ``fc1``,
  channel and bias of the depthwise conv, column of ``fc2``. The mask is applied after the
  depthwise branch, so GELU(depthwise bias) of a removed neuron cannot leak through ``fc2``.
* ``blocks.i.1.layer.0.fn`` (LRSA heads): rows of ``to_q``/``to_k``/``to_v``, columns of ``proj``.

Trajectory layers: ``2i`` is block i's TAB output (TAB heads and TAB FFN write into it), ``2i + 1``
its block output (LRSA heads and LRSA FFN).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..complexity import analytic_macs, reference_lr_size
from ..models.catanet import CATANet, CATANetConfig, map_to_tokens
from .adapter import Adapter, UnitGroup, kept_counts

# group suffix -> (config field of its width, kind)
GROUP_FIELDS = {
    "0.iasa_attn": ("tab_heads", "head"),
    "0.mlp.fn": ("tab_mlp", "neuron"),
    "1.layer.0.fn": ("lrsa_heads", "head"),
    "1.layer.1.fn": ("lrsa_mlp", "neuron"),
}


@dataclass
class CATANetCache:
    """Teacher activations of a batch: input, embedding, each block's input and TAB output."""

    x: Tensor
    f: Tensor
    block_in: list[Tensor]
    tab_out: list[Tensor]


def _split(name: str) -> tuple[int, str]:
    """``blocks.3.1.layer.0.fn`` -> (3, ``1.layer.0.fn``)."""
    _, block, rest = name.split(".", 2)
    return int(block), rest


class CATANetAdapter(Adapter):
    """Prunes CATANet's TAB heads, LRSA heads and ConvFFN neurons."""

    def groups(self, model: CATANet) -> list[UnitGroup]:
        cfg = model.cfg
        return [UnitGroup(f"blocks.{i}.{suffix}", kind, i, getattr(cfg, field)[i],
                          2 * i + int(suffix.startswith("1.")))
                for i in range(cfg.block_num) for suffix, (field, kind) in GROUP_FIELDS.items()]

    def reference_lr_size(self, model: CATANet) -> tuple[int, int]:
        return reference_lr_size(model.cfg.upscale)

    def widths(self, model: CATANet, kept: dict[str, int]) -> dict[str, list[int]]:
        """Per-block width lists of the config with ``kept`` units left."""
        widths = {field: list(getattr(model.cfg, field)) for field, _ in GROUP_FIELDS.values()}
        for name, count in kept.items():
            block, suffix = _split(name)
            widths[GROUP_FIELDS[suffix][0]][block] = count
        return widths

    def macs(self, model: CATANet, kept: dict[str, int], lr_size: tuple[int, int]) -> int:
        cfg = {**model.cfg.to_dict(), **self.widths(model, kept)}
        return analytic_macs(cfg, lr_size)

    def set_masks(self, model: CATANet, masks: dict[str, Tensor] | None) -> None:
        for group in self.groups(model):
            model.get_submodule(group.name).unit_mask = None
        for name, mask in (masks or {}).items():
            model.get_submodule(name).unit_mask = mask

    def trajectory(self, model: CATANet, x: Tensor) -> tuple[list[Tensor], Tensor]:
        f = model.embed(x)
        feats, y = [], f
        for i in range(model.cfg.block_num):
            y = self._block_layers(model, i, y, feats)
        return feats, model.reconstruct(y + f, x)

    @staticmethod
    def _block_layers(model: CATANet, i: int, y: Tensor, feats: list[Tensor]) -> Tensor:
        """Run block i on map ``y``; append its TAB output and block output to ``feats``."""
        tab, lrsa = model.blocks[i]
        z = tab(y)
        feats.append(map_to_tokens(z))
        y = y + model.mid_convs[i](lrsa(z, model.cfg.patch_size[i]))
        feats.append(map_to_tokens(y))
        return y

    def cache(self, model: CATANet, x: Tensor) -> CATANetCache:
        f = model.embed(x)
        block_in, tab_out, y = [], [], f
        for i in range(model.cfg.block_num):
            block_in.append(y)
            tab_out.append(model.blocks[i][0](y))
            y = y + model.mid_convs[i](model.blocks[i][1](tab_out[-1], model.cfg.patch_size[i]))
        return CATANetCache(x, f, block_in, tab_out)

    def run_from(self, model: CATANet, cache: CATANetCache, group: UnitGroup,
                 masks: Tensor) -> tuple[list[Tensor], Tensor]:
        variants, batch = masks.shape[0], cache.x.shape[0]
        repeat = lambda t: t.repeat(variants, *[1] * (t.dim() - 1))  # noqa: E731
        i, suffix = _split(group.name)
        module = model.get_submodule(group.name)
        module.unit_mask = masks.repeat_interleave(batch, dim=0)
        try:
            tab, lrsa = model.blocks[i]
            x_in = repeat(cache.block_in[i])
            feats = []
            if suffix.startswith("0."):
                y = tab(x_in)
                feats.append(map_to_tokens(y))
            else:
                y = repeat(cache.tab_out[i])
            y = x_in + model.mid_convs[i](lrsa(y, model.cfg.patch_size[i]))
            feats.append(map_to_tokens(y))
            for j in range(i + 1, model.cfg.block_num):
                y = self._block_layers(model, j, y, feats)
            return feats, model.reconstruct(y + repeat(cache.f), repeat(cache.x))
        finally:
            module.unit_mask = None

    def local_layers(self, model: CATANet, cache: CATANetCache) -> list[Tensor]:
        feats = []
        for i, (tab, lrsa) in enumerate(model.blocks):
            feats.append(map_to_tokens(tab(cache.block_in[i])))
            block_out = lrsa(cache.tab_out[i], model.cfg.patch_size[i])
            feats.append(map_to_tokens(cache.block_in[i] + model.mid_convs[i](block_out)))
        return feats

    def slices(self, model: CATANet, group: UnitGroup) -> list[tuple[str, int, int]]:
        """(parameter name, axis, width per unit) of every weight slice the group's units own."""
        i, suffix = _split(group.name)
        if group.kind == "neuron":
            parts = [("fc1.weight", 0, 1), ("fc1.bias", 0, 1), ("fc2.weight", 1, 1)]
            if model.get_submodule(group.name).dwconv is not None:
                parts += [("dwconv.depthwise_conv.0.weight", 0, 1),
                          ("dwconv.depthwise_conv.0.bias", 0, 1)]
            return [(f"{group.name}.{name}", axis, width) for name, axis, width in parts]
        dq, dv = model.cfg.head_qk, model.cfg.head_v
        parts = [(f"{group.name}.to_q.weight", 0, dq), (f"{group.name}.to_k.weight", 0, dq),
                 (f"{group.name}.to_v.weight", 0, dv), (f"{group.name}.proj.weight", 1, dv)]
        if suffix == "0.iasa_attn":
            parts += [(f"blocks.{i}.0.irca_attn.to_k.weight", 0, dq),
                      (f"blocks.{i}.0.irca_attn.to_v.weight", 0, dv)]
        return parts

    def narrowed_config(self, model: CATANet, kept: dict[str, int]) -> CATANetConfig:
        return CATANetConfig.from_dict({**model.cfg.to_dict(), **self.widths(model, kept)})

    def params(self, model: CATANet, kept: dict[str, int]) -> int:
        with torch.device("meta"):
            narrow = CATANet(self.narrowed_config(model, kept))
        return sum(p.numel() for p in narrow.parameters())

    @torch.no_grad()
    def rebuild(self, model: CATANet, masks: dict[str, Tensor]) -> CATANet:
        state = self.sliced_state(model, masks)
        small = CATANet(self.narrowed_config(model, kept_counts(masks))).to(
            next(model.parameters()).device)
        small.load_state_dict({key: state[key] for key in small.state_dict()}, strict=True)
        return small.train(model.training)
