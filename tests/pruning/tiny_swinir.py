"""A tiny trained-looking SwinIR, and its physical narrowing written out by hand from the spec.

The slicing follows docs/swinir-spec.md, "What a head and a neuron are", on its own (head h owns
rows h*d.. of each of q, k and v in ``qkv``, column h of the bias table, columns of ``proj``;
neuron k row k of fc1, column k of fc2); it does not use the adapter's slice table.
"""
from __future__ import annotations

import torch
from torch import Tensor

from srprune.models import create_model, get_arch
from srprune.models.swinir import SwinIR

TINY = get_arch("swinir").tiny  # window 4, img_size 8: odd layers shifted; heads of 4, 16 neurons


def tiny_swinir(seed: int = 0, **overrides) -> SwinIR:
    """Tiny SwinIR in eval mode with seeded, perturbed weights (outputs of order 1, attention
    far from uniform)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = create_model("swinir", **{**TINY, **overrides})
    gen = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 1.0 if name.endswith("bias_table") else 0.3 if "qkv" in name else 0.1
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return model.eval()


def layer_names(model: SwinIR) -> list[str]:
    return [f"layers.{i}.residual_group.blocks.{j}" for i, d in enumerate(model.cfg.depths)
            for j in range(d)]


def narrowed(model: SwinIR, masks: dict[str, Tensor]) -> SwinIR:
    """The same class with the masked heads and neurons removed from a sliced state dict."""
    cfg = model.cfg.to_dict()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    names = layer_names(model)
    for name, mask in masks.items():
        layer, module = name.rsplit(".", 1)
        k = names.index(layer)
        keep = mask.bool().nonzero().flatten()
        if module == "attn":
            d = model.get_submodule(name).head_width
            heads = mask.numel()
            rows = [part * heads * d + h * d + j for part in range(3) for h in keep.tolist()
                    for j in range(d)]
            cols = [h * d + j for h in keep.tolist() for j in range(d)]
            rows, cols = torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)
            state[f"{name}.qkv.weight"] = state[f"{name}.qkv.weight"][rows]
            state[f"{name}.qkv.bias"] = state[f"{name}.qkv.bias"][rows]
            state[f"{name}.relative_position_bias_table"] = \
                state[f"{name}.relative_position_bias_table"][:, keep]
            state[f"{name}.proj.weight"] = state[f"{name}.proj.weight"][:, cols]
            cfg["layer_heads"][k] = len(keep)
        else:
            state[f"{name}.fc1.weight"] = state[f"{name}.fc1.weight"][keep]
            state[f"{name}.fc1.bias"] = state[f"{name}.fc1.bias"][keep]
            state[f"{name}.fc2.weight"] = state[f"{name}.fc2.weight"][:, keep]
            cfg["layer_mlp"][k] = len(keep)
    small = create_model("swinir", **cfg)
    small.load_state_dict(state, strict=True)
    return small.eval()


def random_masks(groups, seed: int, empty=(), keep: float = 0.6) -> dict[str, Tensor]:
    """Random 0/1 masks of ``groups``; groups named in ``empty`` keep nothing."""
    gen = torch.Generator().manual_seed(seed)
    return {g.name: torch.zeros(g.count) if g.name in empty
            else (torch.rand(g.count, generator=gen) < keep).float() for g in groups}
