"""A tiny trained-looking CATANet, and its physical narrowing written out by hand from the spec.

The slicing below follows docs/catanet-spec.md, "What a head and a neuron are", on its own: it
does not use the adapter's slice table, so that the tests compare two independent readings.
"""
from __future__ import annotations

import torch
from torch import Tensor

from srprune.models import create_model
from srprune.models.catanet import CATANet

TINY = dict(dim=8, block_num=2, qk_dim=8, mlp_dim=12, heads=2, patch_size=[8, 6],
            num_tokens=[4, 8], group_size=[16, 8], n_iters=[2, 2])


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
    if name.endswith(("iasa_attn", "layer.0.fn")):
        widths = {"q": model.cfg.head_qk, "v": model.cfg.head_v}
        return [(key, axis, widths[w]) for key, axis, w in head_slices(name)]
    return [(key, axis, 1) for key, axis in neuron_slices(name)]


WIDTH_FIELD = {"iasa_attn": "tab_heads", "mlp.fn": "tab_mlp", "layer.0.fn": "lrsa_heads",
               "layer.1.fn": "lrsa_mlp"}


def width_field(name: str) -> str:
    return next(field for suffix, field in WIDTH_FIELD.items() if name.endswith(suffix))


def narrowed(model: CATANet, masks: dict[str, Tensor]) -> CATANet:
    """The same class with the masked units physically removed from a sliced state dict."""
    cfg = model.cfg.to_dict()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, mask in masks.items():
        kept = kept_units(mask)
        block = int(name.split(".")[1])
        cfg[width_field(name)] = list(cfg[width_field(name)])
        cfg[width_field(name)][block] = len(kept)
        for key, axis, width in owned_slices(model, name):
            if not kept and ".dwconv." in key:  # a ConvFFN with no neuron has no depthwise conv
                del state[key]
                continue
            state[key] = state[key].index_select(axis, unit_index(kept, width)).contiguous()
        if not kept and name.endswith("iasa_attn"):  # a TAB with no head has no 1x1 conv
            del state[f"blocks.{block}.0.conv1x1.weight"]
    small = create_model("catanet", **cfg)
    small.load_state_dict(state, strict=True)
    return small.eval()
