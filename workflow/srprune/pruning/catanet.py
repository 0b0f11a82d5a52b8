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

Each head group is followed by its channel groups (tokens are assigned to centres from the
normalised tokens, not from q/k, so a channel can go on its own):

* ``<head group>.qk`` (q/k channels, unit ``head * width + channel``): the same row of ``to_q``,
  ``to_k`` and, for a TAB, IRCA ``to_k``. The mask multiplies q's channel, which removes it
  from every dot product (the softmax scale stays the full head's).
* ``<head group>.v`` (v channels): row of ``to_v`` (and IRCA ``to_v``), column of ``proj``. The
  mask multiplies the attention output's channel before ``proj``.

Trajectory layers: ``2i`` is block i's TAB output (TAB heads and TAB FFN write into it), ``2i + 1``
its block output (LRSA heads and LRSA FFN).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..models.catanet import CATANet, CATANetConfig, map_to_tokens
from .adapter import Adapter, ResidualTap, UnitGroup
from .registry import register_adapter

# group suffix -> (config field of its width, kind)
GROUP_FIELDS = {
    "0.iasa_attn": ("tab_heads", "head"),
    "0.mlp.fn": ("tab_mlp", "neuron"),
    "1.layer.0.fn": ("lrsa_heads", "head"),
    "1.layer.1.fn": ("lrsa_mlp", "neuron"),
}
# channel group suffix -> (config field of its per-head width, kind, mask attribute)
CHANNEL_FIELDS = {
    ".qk": ({"0.iasa_attn": "tab_qk", "1.layer.0.fn": "lrsa_qk"}, "qk_channel", "qk_mask"),
    ".v": ({"0.iasa_attn": "tab_v", "1.layer.0.fn": "lrsa_v"}, "v_channel", "v_mask"),
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


def _channel_suffix(name: str) -> str | None:
    """``.qk`` or ``.v`` for a channel group, None for a head or neuron group."""
    return next((end for end in CHANNEL_FIELDS if name.endswith(end)), None)


def _mask_target(name: str) -> tuple[str, str]:
    """(module that applies the group's mask, its attribute)."""
    end = _channel_suffix(name)
    return (name, "unit_mask") if end is None else (name[:-len(end)], CHANNEL_FIELDS[end][2])


@register_adapter("catanet")
class CATANetAdapter(Adapter):
    """Prunes CATANet's TAB and LRSA heads, their q/k and v channels, and ConvFFN neurons."""

    def groups(self, model: CATANet) -> list[UnitGroup]:
        cfg = model.cfg
        groups = []
        for i in range(cfg.block_num):
            for suffix, (field, kind) in GROUP_FIELDS.items():
                name, count = f"blocks.{i}.{suffix}", getattr(cfg, field)[i]
                layer = 2 * i + int(suffix.startswith("1."))
                groups.append(UnitGroup(name, kind, i, count, layer))
                if kind == "head":
                    groups += [UnitGroup(name + end, channel_kind, i,
                                         count * getattr(cfg, fields[suffix])[i], layer,
                                         parent=name, per_parent=getattr(cfg, fields[suffix])[i])
                               for end, (fields, channel_kind, _) in CHANNEL_FIELDS.items()]
        return groups

    def widths(self, model: CATANet, kept: dict[str, int]) -> dict[str, list[int]]:
        """Per-block width lists of the config with ``kept`` units left.

        A channel group's count is kept heads x channels per head; omitted or at its full count
        (every channel of every head of the unpruned module), the width stays.
        """
        widths = {field: list(getattr(model.cfg, field)) for field, _ in GROUP_FIELDS.values()}
        for name, count in kept.items():
            if _channel_suffix(name) is None:
                block, suffix = _split(name)
                widths[GROUP_FIELDS[suffix][0]][block] = count
        for name, count in kept.items():
            end = _channel_suffix(name)
            if end is not None:
                block, suffix = _split(name[:-len(end)])
                field = CHANNEL_FIELDS[end][0][suffix]
                heads = widths[GROUP_FIELDS[suffix][0]][block]
                current = getattr(model.cfg, field)[block]
                full = getattr(model.cfg, GROUP_FIELDS[suffix][0])[block] * current
                widths.setdefault(field, list(getattr(model.cfg, field)))
                if count not in (full, 0 if heads == 0 else full):
                    widths[field][block] = _per_head(name, count, heads)
        return widths

    def set_masks(self, model: CATANet, masks: dict[str, Tensor] | None) -> None:
        for group in self.groups(model):
            module, attribute = _mask_target(group.name)
            setattr(model.get_submodule(module), attribute, None)
        for name, mask in (masks or {}).items():
            module, attribute = _mask_target(name)
            setattr(model.get_submodule(module), attribute, mask)

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
        target, attribute = _mask_target(group.name)
        module = model.get_submodule(target)
        setattr(module, attribute, masks.repeat_interleave(batch, dim=0))
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
            setattr(module, attribute, None)

    def local_layers(self, model: CATANet, cache: CATANetCache) -> list[Tensor]:
        feats = []
        for i, (tab, lrsa) in enumerate(model.blocks):
            feats.append(map_to_tokens(tab(cache.block_in[i])))
            block_out = lrsa(cache.tab_out[i], model.cfg.patch_size[i])
            feats.append(map_to_tokens(cache.block_in[i] + model.mid_convs[i](block_out)))
        return feats

    def slices(self, model: CATANet, group: UnitGroup) -> list[tuple[str, int, int]]:
        """(parameter name, axis, width per unit) of every weight slice the group's units own."""
        if group.kind == "neuron":
            parts = [("fc1.weight", 0, 1), ("fc1.bias", 0, 1), ("fc2.weight", 1, 1)]
            if model.get_submodule(group.name).dwconv is not None:
                parts += [("dwconv.depthwise_conv.0.weight", 0, 1),
                          ("dwconv.depthwise_conv.0.bias", 0, 1)]
            return [(f"{group.name}.{name}", axis, width) for name, axis, width in parts]
        end = _channel_suffix(group.name)
        if end is not None:
            return self._channel_slices(group.name[:-len(end)], end == ".qk", (1, 1))
        module = model.get_submodule(group.name)
        return (self._channel_slices(group.name, True, (module.dqk, module.dv))
                + self._channel_slices(group.name, False, (module.dqk, module.dv)))

    @staticmethod
    def _channel_slices(head_group: str, qk: bool, width: tuple[int, int]
                        ) -> list[tuple[str, int, int]]:
        """q/k (``qk``) or v slices of a head group, ``width`` = (q/k, v) channels per unit."""
        block, suffix = _split(head_group)
        irca = f"blocks.{block}.0.irca_attn" if suffix == "0.iasa_attn" else None
        if qk:
            names = [f"{head_group}.to_q", f"{head_group}.to_k"] + ([f"{irca}.to_k"] if irca else [])
            return [(f"{name}.weight", 0, width[0]) for name in names]
        names = [f"{head_group}.to_v"] + ([f"{irca}.to_v"] if irca else [])
        return ([(f"{name}.weight", 0, width[1]) for name in names]
                + [(f"{head_group}.proj.weight", 1, width[1])])

    def block_count(self, model: CATANet) -> int:
        """Two compensation blocks per CATANet block, its TAB and its LRSA (with the mid conv
        and the residual), so that a consumer's refit reruns only its own half."""
        return 2 * model.cfg.block_num

    def enter(self, model: CATANet, x: Tensor) -> Tensor:
        return model.embed(x)

    def run_block(self, model: CATANet, i: int, stream: Tensor | tuple[Tensor, Tensor]
                  ) -> Tensor | tuple[Tensor, Tensor]:
        """Half ``i % 2`` of block ``i // 2``: the TAB takes the block's input y and gives (y, its
        output z); the LRSA takes (y, z) and gives the block's output, as :meth:`CATANet.block`."""
        block, half = divmod(i, 2)
        tab, lrsa = model.blocks[block]
        if half == 0:
            return stream, tab(stream)
        y, z = stream
        return y + model.mid_convs[block](lrsa(z, model.cfg.patch_size[block]))

    def leave(self, model: CATANet, x: Tensor, stream: Tensor) -> Tensor:
        """The global residual (the first conv's features again) and the upsampler."""
        return model.reconstruct(stream + model.embed(x), x)

    def block_of(self, weight: str) -> int:
        block, suffix = _split(weight)
        return 2 * block + int(suffix.startswith("1."))

    def residual(self, model: CATANet, weight: str) -> ResidualTap:
        """ConvFFN and LRSA outputs add to their PreNorm's input; IASA's, through the TAB's 1x1
        conv, to the TAB's input (a map, turned into tokens in raster order like ``proj``'s)."""
        i, suffix = _split(weight)
        if suffix.startswith("0.iasa_attn."):
            return ResidualTap(f"blocks.{i}.0", map_to_tokens, f"blocks.{i}.0.conv1x1.weight")
        return ResidualTap(weight.split(".fn.")[0])

    def narrowed_config(self, model: CATANet, kept: dict[str, int]) -> CATANetConfig:
        """The config with the per-block widths of :meth:`widths`."""
        return CATANetConfig.from_dict({**model.cfg.to_dict(), **self.widths(model, kept)})


def _per_head(name: str, kept: int, heads: int) -> int:
    """Channels per head of channel group ``name`` with ``kept`` channels over ``heads`` heads."""
    if heads == 0 or kept % heads or kept == 0:
        raise ValueError(f"{name}: {kept} channels kept is not a positive multiple of the "
                         f"{heads} kept heads (each kept head keeps the same number, >= 1)")
    return kept // heads
