"""A tiny ViT-style SR model and its pruning adapter, written for the tests only.

It shows that the pruning core talks to a model only through :class:`Adapter`: nothing here
imports CATANet. Model: a stride-p patch embedding, ``depth`` pre-norm blocks (multi-head
self-attention with q/k/v/proj Linears, then fc1 -> GELU -> fc2), and a Linear head whose
tokens are pixel-shuffled back into an x``scale`` image. Widths are per block, so a pruned
model is this same class with fewer heads or hidden neurons.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from srprune.pruning.adapter import Adapter, UnitGroup


def _scale_units(x: Tensor, mask: Tensor | None, dims: int) -> Tensor:
    """Multiply unit axis 1 (heads: B x h x N x d) or -1 (neurons: B x N x m) by the mask."""
    if mask is None:
        return x
    mask = mask.to(x)
    if dims == 4:  # heads
        return x * (mask.view(1, -1, 1, 1) if mask.dim() == 1 else mask[:, :, None, None])
    return x * (mask.view(1, 1, -1) if mask.dim() == 1 else mask[:, None, :])


class Block(nn.Module):
    def __init__(self, dim: int, head_dim: int, heads: int, hidden: int):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.q, self.k, self.v = (nn.Linear(dim, heads * head_dim) for _ in range(3))
        self.proj = nn.Linear(heads * head_dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.head_mask: Tensor | None = None
        self.neuron_mask: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        h = self.norm1(x)
        q, k, v = (lin(h).unflatten(-1, (self.heads, self.head_dim)).transpose(1, 2)
                   for lin in (self.q, self.k, self.v))                  # B x h x N x d
        attn = torch.softmax(q @ k.transpose(-1, -2) * self.head_dim ** -0.5, dim=-1) @ v
        x = x + self.proj(_scale_units(attn, self.head_mask, 4).transpose(1, 2).flatten(2))
        hidden = _scale_units(F.gelu(self.fc1(self.norm2(x))), self.neuron_mask, 3)
        return x + self.fc2(hidden)


@dataclass
class ViTConfig:
    dim: int = 12
    head_dim: int = 4
    heads: tuple[int, ...] = (3, 3)
    hidden: tuple[int, ...] = (16, 16)
    patch: int = 2
    scale: int = 2


class TinyViT(nn.Module):
    def __init__(self, cfg: ViTConfig):
        super().__init__()
        self.cfg = cfg
        p, s = cfg.patch, cfg.scale
        self.embed = nn.Conv2d(3, cfg.dim, p, stride=p)
        self.blocks = nn.ModuleList(Block(cfg.dim, cfg.head_dim, h, m)
                                    for h, m in zip(cfg.heads, cfg.hidden))
        self.head = nn.Linear(cfg.dim, 3 * (p * s) ** 2)

    def tokens(self, x: Tensor) -> Tensor:
        return self.embed(x).flatten(2).transpose(1, 2)                  # B x N x C

    def to_image(self, t: Tensor, hw: tuple[int, int]) -> Tensor:
        rows, cols = hw[0] // self.cfg.patch, hw[1] // self.cfg.patch
        grid = self.head(t).transpose(1, 2).unflatten(2, (rows, cols))
        return F.pixel_shuffle(grid, self.cfg.patch * self.cfg.scale)

    def forward(self, x: Tensor) -> Tensor:
        t = self.tokens(x)
        for block in self.blocks:
            t = block(t)
        return self.to_image(t, x.shape[-2:])


@dataclass
class ViTCache:
    block_in: list[Tensor]
    hw: tuple[int, int]


class TinyViTAdapter(Adapter):
    """Heads (``blocks.i.attn``) and hidden neurons (``blocks.i.mlp``) of every block."""

    @staticmethod
    def _block(name: str) -> int:
        return int(name.split(".")[1])

    def groups(self, model: TinyViT) -> list[UnitGroup]:
        return [g for i, (h, m) in enumerate(zip(model.cfg.heads, model.cfg.hidden))
                for g in (UnitGroup(f"blocks.{i}.attn", "head", i, h, i),
                          UnitGroup(f"blocks.{i}.mlp", "neuron", i, m, i))]

    def reference_lr_size(self, model: TinyViT) -> tuple[int, int]:
        return (12, 12)

    def macs(self, model: TinyViT, kept: dict[str, int], lr_size: tuple[int, int]) -> int:
        """N = HW/p^2 tokens, C = dim, d = head_dim, block i with h_i heads and m_i neurons:

        embed 3p^2*C*N; per block q/k/v/proj 4*N*C*h_i*d, QK^T and AV 2*h_i*N^2*d,
        fc1/fc2 2*N*C*m_i; head N*C*3(ps)^2. (Biases, norms, softmax, GELU are free.)
        """
        cfg = model.cfg
        n, c, d, p, s = (lr_size[0] // cfg.patch) * (lr_size[1] // cfg.patch), cfg.dim, \
            cfg.head_dim, cfg.patch, cfg.scale
        total = 3 * p * p * c * n + n * c * 3 * (p * s) ** 2
        for i, (h, m) in enumerate(zip(cfg.heads, cfg.hidden)):
            h, m = kept.get(f"blocks.{i}.attn", h), kept.get(f"blocks.{i}.mlp", m)
            total += 4 * n * c * h * d + 2 * h * n * n * d + 2 * n * c * m
        return total

    def set_masks(self, model: TinyViT, masks: dict[str, Tensor] | None) -> None:
        for block in model.blocks:
            block.head_mask = block.neuron_mask = None
        for name, mask in (masks or {}).items():
            block = model.blocks[self._block(name)]
            setattr(block, "head_mask" if name.endswith("attn") else "neuron_mask", mask)

    def trajectory(self, model: TinyViT, x: Tensor) -> tuple[list[Tensor], Tensor]:
        feats, t = [], model.tokens(x)
        for block in model.blocks:
            t = block(t)
            feats.append(t)
        return feats, model.to_image(t, x.shape[-2:])

    def cache(self, model: TinyViT, x: Tensor) -> ViTCache:
        block_in, t = [], model.tokens(x)
        for block in model.blocks:
            block_in.append(t)
            t = block(t)
        return ViTCache(block_in, tuple(x.shape[-2:]))

    def run_from(self, model: TinyViT, cache: ViTCache, group: UnitGroup,
                 masks: Tensor) -> tuple[list[Tensor], Tensor]:
        batch = cache.block_in[0].shape[0]
        self.set_masks(model, {group.name: masks.repeat_interleave(batch, dim=0)})
        try:
            t, feats = cache.block_in[group.layer].repeat(masks.shape[0], 1, 1), []
            for block in model.blocks[group.block:]:
                t = block(t)
                feats.append(t)
            return feats, model.to_image(t, cache.hw)
        finally:
            self.set_masks(model, None)

    def local_layers(self, model: TinyViT, cache: ViTCache) -> list[Tensor]:
        return [block(t) for block, t in zip(model.blocks, cache.block_in)]

    def block_count(self, model: TinyViT) -> int:
        return len(model.blocks)

    def enter(self, model: TinyViT, x: Tensor) -> Tensor:
        return model.tokens(x)

    def run_block(self, model: TinyViT, i: int, stream: Tensor) -> Tensor:
        return model.blocks[i](stream)

    def leave(self, model: TinyViT, x: Tensor, stream: Tensor) -> Tensor:
        return model.to_image(stream, x.shape[-2:])

    def block_of(self, weight: str) -> int:
        return self._block(weight)

    def slices(self, model: TinyViT, group: UnitGroup) -> list[tuple[str, int, int]]:
        """(parameter name, axis, width per unit) of every slice the group's units own."""
        b = f"blocks.{group.block}"
        if group.kind == "head":
            d = model.cfg.head_dim
            return [(f"{b}.{lin}.{p}", 0, d) for lin in ("q", "k", "v") for p in ("weight", "bias")] \
                + [(f"{b}.proj.weight", 1, d)]
        return [(f"{b}.fc1.weight", 0, 1), (f"{b}.fc1.bias", 0, 1), (f"{b}.fc2.weight", 1, 1)]

    def params(self, model: TinyViT, kept: dict[str, int]) -> int:
        """Embedding, head, and per block: 2 LayerNorms, q/k/v/proj of the heads, fc1/fc2."""
        cfg, d = model.cfg, model.cfg.dim
        total = sum(p.numel() for p in (*model.embed.parameters(), *model.head.parameters()))
        for i in range(len(cfg.heads)):
            h = kept.get(f"blocks.{i}.attn", cfg.heads[i]) * cfg.head_dim
            m = kept.get(f"blocks.{i}.mlp", cfg.hidden[i])
            total += 4 * d + 3 * (d * h + h) + h * d + d + (d * m + m) + (m * d + d)
        return total

    def rebuild(self, model: TinyViT, masks: dict[str, Tensor]) -> TinyViT:
        """The ViT with the masked heads and neurons sliced out of its state dict."""
        cfg = model.cfg
        kept = {name: int(mask.sum()) for name, mask in masks.items()}
        heads = [kept.get(f"blocks.{i}.attn", h) for i, h in enumerate(cfg.heads)]
        hidden = [kept.get(f"blocks.{i}.mlp", m) for i, m in enumerate(cfg.hidden)]
        state = self.sliced_state(model, masks)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Initializing zero-element tensors")
            small = TinyViT(ViTConfig(cfg.dim, cfg.head_dim, tuple(heads), tuple(hidden),
                                      cfg.patch, cfg.scale))
        small.load_state_dict(state, strict=True)
        return small.eval()
