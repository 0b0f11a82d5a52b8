"""A tiny trained-looking CATANet, and its physical narrowing written out by hand from the spec.

The slicing below follows docs/catanet-spec.md, "What a head and a neuron are", on its own: it
does not use the adapter's slice table, so that the tests compare two independent readings.
"""
from __future__ import annotations

import torch
from torch import Tensor

from srprune.models import create_model, get_arch
from srprune.models.catanet import CATANet

TINY = get_arch("catanet").tiny


def tiny_catanet(seed: int = 0, **overrides) -> CATANet:
    """Tiny CATANet in eval mode with ``initted`` centres and seeded, perturbed weights.

    Outputs stay of order 1 (as for a trained SR model), so 1e-5 is a float32 round-off bound.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model("catanet", **{**TINY, **overrides})
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
            if name.endswith("to_q.weight"):  # sharper, far-from-uniform attention
                p.mul_(2.0)
        for tab, _ in model.blocks:
            tab.means.copy_(torch.randn(tab.means.shape, generator=gen))
            tab.initted.fill_(True)
    return model.eval()


def unit_index(kept: list[int], width: int) -> Tensor:
    """Channel indices of the kept units, ``width`` channels each."""
    return torch.tensor([u * width + j for u in kept for j in range(width)], dtype=torch.long)


def kept_units(mask: Tensor) -> list[int]:
    return [int(u) for u in mask.nonzero().flatten()]


# (path of a weight, axis, "q" or "v" width) of the slices owned by each head / neuron
def head_slices(name: str) -> list[tuple[str, int, str]]:
    """``name`` is the group (module applying the mask); returns state-dict keys and axes."""
    block = name.split(".")[1]
    if name.endswith("iasa_attn"):
        iasa, irca = f"blocks.{block}.0.iasa_attn", f"blocks.{block}.0.irca_attn"
        return [(f"{iasa}.to_q.weight", 0, "q"), (f"{iasa}.to_k.weight", 0, "q"),
                (f"{irca}.to_k.weight", 0, "q"), (f"{iasa}.to_v.weight", 0, "v"),
                (f"{irca}.to_v.weight", 0, "v"), (f"{iasa}.proj.weight", 1, "v")]
    return [(f"{name}.to_q.weight", 0, "q"), (f"{name}.to_k.weight", 0, "q"),
            (f"{name}.to_v.weight", 0, "v"), (f"{name}.proj.weight", 1, "v")]


def neuron_slices(name: str) -> list[tuple[str, int]]:
    dw = f"{name}.dwconv.depthwise_conv.0"
    return [(f"{name}.fc1.weight", 0), (f"{name}.fc1.bias", 0), (f"{dw}.weight", 0),
            (f"{dw}.bias", 0), (f"{name}.fc2.weight", 1)]


def owned_slices(model: CATANet, name: str) -> list[tuple[str, int, int]]:
    """(state-dict key, axis, channels per unit) of every slice the units of group ``name`` own."""
    for end, kind in ((".qk", "q"), (".v", "v")):
        if name.endswith(end):  # a channel group: one channel of the head's q/k or v slices
            return [(key, axis, 1) for key, axis, w in head_slices(name[:-len(end)]) if w == kind]
    if name.endswith(("iasa_attn", "layer.0.fn")):
        block = int(name.split(".")[1])
        prefix = "tab" if name.endswith("iasa_attn") else "lrsa"
        widths = {"q": getattr(model.cfg, f"{prefix}_qk")[block],
                  "v": getattr(model.cfg, f"{prefix}_v")[block]}
        return [(key, axis, widths[w]) for key, axis, w in head_slices(name)]
    return [(key, axis, 1) for key, axis in neuron_slices(name)]


WIDTH_FIELD = {"iasa_attn": "tab_heads", "mlp.fn": "tab_mlp", "layer.0.fn": "lrsa_heads",
               "layer.1.fn": "lrsa_mlp", "iasa_attn.qk": "tab_qk", "iasa_attn.v": "tab_v",
               "layer.0.fn.qk": "lrsa_qk", "layer.0.fn.v": "lrsa_v"}


def width_field(name: str) -> str:
    return next(field for suffix, field in WIDTH_FIELD.items() if name.endswith(suffix))


def new_width(name: str, mask: Tensor, masks: dict[str, Tensor], model: CATANet) -> int:
    """The config width of group ``name`` after pruning: units, or channels per kept head."""
    if not name.endswith((".qk", ".v")):
        return len(kept_units(mask))
    head, block = name.rsplit(".", 1)[0], int(name.split(".")[1])
    heads = masks.get(head, torch.ones(getattr(model.cfg, width_field(head))[block]))
    kept_heads = kept_units(heads)
    if not kept_heads:
        return getattr(model.cfg, width_field(name))[block]
    return int(mask.view(heads.numel(), -1)[kept_heads[0]].sum())


def narrowed(model: CATANet, masks: dict[str, Tensor]) -> CATANet:
    """The same class with the masked units physically removed from a sliced state dict.

    Every (key, axis) gets one keep vector, the channels that every group slicing it keeps.
    """
    cfg = model.cfg.to_dict()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    keeps: dict[tuple[str, int], Tensor] = {}
    for name, mask in masks.items():
        block = int(name.split(".")[1])
        cfg[width_field(name)] = list(cfg[width_field(name)])
        cfg[width_field(name)][block] = new_width(name, mask, masks, model)
        for key, axis, width in owned_slices(model, name):
            keep = mask.bool().repeat_interleave(width)
            keeps[(key, axis)] = keeps.get((key, axis), torch.ones_like(keep)) & keep
        if not kept_units(mask) and name.endswith(".fn") and "layer.0" not in name:
            for key in [k for k in state if k.startswith(f"{name}.dwconv.")]:
                del state[key]  # a ConvFFN with no neuron has no depthwise conv
        if not kept_units(mask) and name.endswith("iasa_attn"):  # a TAB with no head: no 1x1 conv
            del state[f"blocks.{block}.0.conv1x1.weight"]
    for (key, axis), keep in keeps.items():
        if key in state:
            state[key] = state[key].index_select(axis, keep.nonzero().flatten()).contiguous()
    small = create_model("catanet", **cfg)
    small.load_state_dict(state, strict=True)
    return small.eval()


def random_masks(groups, seed: int, empty=(), keep: float = 0.6) -> dict[str, Tensor]:
    """Valid random masks of ``groups`` (UnitGroups in forward order); ``empty`` keep nothing.

    A channel group keeps nothing of a removed head and, in every kept head, the same random
    number (>= 1) of channels, each head its own random choice.
    """
    gen = torch.Generator().manual_seed(seed)
    masks: dict[str, Tensor] = {}
    for g in groups:
        if g.parent is None:
            masks[g.name] = (torch.zeros(g.count) if g.name in empty
                             else (torch.rand(g.count, generator=gen) < keep).float())
            continue
        heads = masks.get(g.parent, torch.ones(g.count // g.per_parent))
        width = int(torch.randint(1, g.per_parent + 1, (1,), generator=gen))
        mask = torch.zeros(heads.numel(), g.per_parent)
        for head in kept_units(heads):
            mask[head, torch.randperm(g.per_parent, generator=gen)[:width]] = 1.0
        masks[g.name] = mask.flatten()
    return masks
