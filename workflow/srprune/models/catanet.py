"""CATANet (Liu et al., CVPR 2025), compatible with the authors' released checkpoints.

One readable file: the configuration, the building blocks and the network. Parameter names and
shapes follow the authors' code, so their BasicSR checkpoints load strictly, and the eval output
matches theirs to float32 round-off (see ``docs/catanet-spec.md`` of the shared material).

Two deliberate differences, both invisible where the authors' code works:

* **Attention formulation.** PyTorch's fused CPU attention kernel needs 4-D tensors whose q/k and
  v widths are equal; CATANet's heads have q/k width ``qk_dim/heads`` (9) and v width
  ``dim/heads`` (10), so the authors' calls take the slow math path. We compute q, k and v of
  every head with one matmul whose weights are zero-padded per head to a width of 16 (where the
  fused kernel runs fastest; zero channels change no dot product, the scale being passed
  explicitly, and the zero v channels are cut off the output), fold IASA's group axis into the
  batch (q, k and v sorted by one row gather), and attend to the token centres in token order
  (no sorting needed there). Features are channels-last from the first conv on. ``set_attention_impl("reference")`` selects the authors'
  formulation (benchmarks, MAC counting).
* **Inputs the authors' code cannot handle** get a well-defined answer (documented in README):
  - Sequences are extended by *symmetric reflection* (``reflect_index``): the authors append the
    last ``pad`` tokens in reverse order, which is the first step of a reflection, and raise when
    ``pad`` exceeds the sequence length (IASA with ``gs < N < 1.5 gs``; token centres with
    ``N < num_tokens / 2``). Reflection continues where theirs stops.
  - LRSA on a side ``L < patch_size`` uses one patch spanning the whole side. For ``L <= p/2``
    this is what the authors compute; for ``p/2 < L < p`` theirs returns zeros for the first
    ``2L - p`` rows, and for ``L <= 2`` it divides by zero.
  - In eval mode with ``initted`` False, token centres are computed per image, so an image's
    output does not depend on the other images of the batch (the authors share centres across
    the batch). For a batch of one both agree.

Per-block widths (heads kept per attention, q/k and v channels per head, hidden width per
ConvFFN) are part of the configuration, so a structurally pruned model is this same class with
narrower blocks. Heads and channels are pruned as if zeroed, so the softmax scale stays
``(qk_dim/heads) ** -0.5`` whatever the widths.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .catanet_macs import catanet_macs
from .common import DictConfig, SRNet, SwitchableAttention, linear, scale_units
from .catanet_sort import token_order
from .registry import Arch, register_arch



# --------------------------------------------------------------------------- configuration
def _per_block(value: int | list[int] | tuple[int, ...], n: int, name: str) -> list[int]:
    if isinstance(value, int):
        return [value] * n
    value = [int(v) for v in value]
    if len(value) != n:
        raise ValueError(f"{name} has {len(value)} entries but block_num is {n}")
    return value


@dataclass
class CATANetConfig(DictConfig):
    """Hyper-parameters of CATANet; defaults are the released model (x2)."""

    what = "CATANet config"

    dim: int = 40
    block_num: int = 8
    qk_dim: int = 36
    mlp_dim: int = 96
    heads: int = 4
    patch_size: list[int] = field(default_factory=lambda: [16, 20, 24, 28, 16, 20, 24, 28])
    num_tokens: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 16, 32, 64, 128])
    group_size: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 256, 128, 64, 32])
    n_iters: list[int] = field(default_factory=lambda: [5] * 8)
    upscale: int = 2
    # Per-block widths; None means the full width (heads, mlp_dim).
    tab_heads: list[int] | None = None
    lrsa_heads: list[int] | None = None
    tab_mlp: list[int] | None = None
    lrsa_mlp: list[int] | None = None
    # Per-block q/k and v channels of every kept head; None means the full head_qk / head_v.
    tab_qk: list[int] | None = None
    tab_v: list[int] | None = None
    lrsa_qk: list[int] | None = None
    lrsa_v: list[int] | None = None

    def __post_init__(self) -> None:
        n = self.block_num
        if n < 1:
            raise ValueError(f"block_num must be at least 1, got {n}")
        if self.upscale not in (1, 2, 3, 4):
            raise ValueError(f"upscale must be 1, 2, 3 or 4, got {self.upscale}")
        for name in ("dim", "qk_dim", "mlp_dim", "heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.heads or self.qk_dim % self.heads:
            raise ValueError(f"dim ({self.dim}) and qk_dim ({self.qk_dim}) must be divisible by "
                             f"heads ({self.heads})")
        for name in ("patch_size", "num_tokens", "group_size", "n_iters"):
            setattr(self, name, _per_block(getattr(self, name), n, name))
            if min(getattr(self, name)) < 1:
                raise ValueError(f"{name} entries must be positive: {getattr(self, name)}")
        if min(self.patch_size) < 3:
            raise ValueError(f"patch_size entries must be at least 3 (stride is p - 2): "
                             f"{self.patch_size}")
        for name, low, full in (("tab_heads", 0, self.heads), ("lrsa_heads", 0, self.heads),
                                ("tab_mlp", 0, self.mlp_dim), ("lrsa_mlp", 0, self.mlp_dim),
                                ("tab_qk", 1, self.head_qk), ("lrsa_qk", 1, self.head_qk),
                                ("tab_v", 1, self.head_v), ("lrsa_v", 1, self.head_v)):
            widths = _per_block(full if getattr(self, name) is None else getattr(self, name),
                                n, name)
            if any(w < low or w > full for w in widths):
                raise ValueError(f"{name} entries must lie in [{low}, {full}]: {widths}")
            setattr(self, name, widths)

    @property
    def head_qk(self) -> int:
        """q/k channels of one head."""
        return self.qk_dim // self.heads

    @property
    def head_v(self) -> int:
        """v channels of one head."""
        return self.dim // self.heads



# --------------------------------------------------------------------------- helpers
def size_min(a: int, b: int) -> int:
    """``min`` of sizes that stays symbolic under ``torch.export`` (a traced size becomes constant)."""
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return torch.sym_min(a, b)
    return min(int(a), int(b))


def size_max(a: int, b: int) -> int:
    """``max`` of sizes, as :func:`size_min`."""
    if isinstance(a, torch.SymInt) or isinstance(b, torch.SymInt):
        return torch.sym_max(a, b)
    return max(int(a), int(b))


def reflect_index(length: int, target: int, device: torch.device | None = None) -> Tensor:
    """Indices extending a sequence of ``length`` to ``target`` by symmetric reflection."""
    period = torch.full((), 2 * length, device=device)  # a tensor, so ONNX export keeps it symbolic
    idx = torch.arange(target, device=device) % period
    return torch.where(idx < period // 2, idx, period - 1 - idx)


def reflect_pad(x: Tensor, target: int, dim: int) -> Tensor:
    """Extend ``x`` along ``dim`` to ``target`` entries by symmetric reflection."""
    length = x.shape[dim]
    same = target == length
    if not isinstance(same, torch.SymBool) and same:  # an exported graph always gathers
        return x
    return x.index_select(dim, reflect_index(length, target, x.device))


def split_heads(x: Tensor, width: int) -> Tensor:
    """(..., N, h*width) -> (..., h, N, width)."""
    return x.unflatten(-1, (-1, width)).transpose(-3, -2)


def merge_heads(x: Tensor) -> Tensor:
    """(..., h, N, width) -> (..., N, h*width)."""
    return x.transpose(-3, -2).flatten(-2)


def fast_width(*widths: int) -> int:
    """Head width of the ``fast`` attention: the smallest multiple of 16 holding every width.

    PyTorch's fused CPU attention kernel runs 1.7-2.6x faster at head width 16 than at 9 or 10
    (and faster than at any width below 16), measured with torch 2.13 on AVX2 and AVX512.
    """
    return 16 * math.ceil(max(widths) / 16)


def pad_heads(x: Tensor, width: int, target: int, dim: int = -1) -> Tensor:
    """Zero-pad every head's ``width`` entries along ``dim`` (heads side by side) to ``target``."""
    x = x.movedim(dim, -1).unflatten(-1, (-1, width))
    return F.pad(x, (0, target - width)).flatten(-2).movedim(-1, dim)


def batch_rows(index: Tensor, n: int) -> Tensor:
    """Per-image row indices (B, L) into sequences of ``n`` rows -> indices into all B*n rows."""
    return (index + n * torch.arange(index.shape[0], device=index.device)[:, None]).flatten()


def take_rows(x: Tensor, index: Tensor) -> Tensor:
    """``x[b, index[b]]`` for every image b of ``x`` (B, n, ...): one row gather."""
    b, n = x.shape[:2]
    return x.flatten(0, 1).index_select(0, batch_rows(index, n)).unflatten(0, (b, -1))


def put_rows(x: Tensor, index: Tensor) -> Tensor:
    """Inverse of :func:`take_rows` for a permutation: row i of image b goes to ``index[b, i]``."""
    b, n = x.shape[:2]
    out = x.new_empty(x.shape).flatten(0, 1)
    return out.index_copy_(0, batch_rows(index, n), x.flatten(0, 1)).unflatten(0, (b, n))


def add_rows(x: Tensor, index: Tensor, n: int) -> Tensor:
    """Sum row i of image b of ``x`` into row ``index[b, i]`` of n zero rows (transposes take_rows)."""
    b = x.shape[0]
    out = x.new_zeros(b * n, *x.shape[2:])
    return out.index_add_(0, batch_rows(index, n), x.flatten(0, 1)).unflatten(0, (b, n))


def tokens_to_map(x: Tensor, h: int, w: int) -> Tensor:
    """(B, h*w, C) tokens -> B x C x h x w map; contiguous tokens give a channels-last map.

    Unflattening before the permute keeps the batch stride: a map of one image made the other
    way round is not recognised as channels-last, and convolutions then copy it (9x slower
    depthwise conv measured).
    """
    return x.unflatten(1, (h, w)).permute(0, 3, 1, 2)


def map_to_tokens(x: Tensor) -> Tensor:
    return x.flatten(2).transpose(1, 2)


# --------------------------------------------------------------------------- building blocks
class PreNorm(nn.Module):
    """LayerNorm, then ``fn`` (names follow the authors' checkpoints)."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fn = fn

    def forward(self, x: Tensor, *args: Any) -> Tensor:
        return self.fn(self.norm(x), *args)


class DWConv(nn.Module):
    """5x5 depthwise conv then GELU."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise_conv = nn.Sequential(
            nn.Conv2d(channels, channels, 5, padding=2, groups=channels), nn.GELU())

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        return map_to_tokens(self.depthwise_conv(tokens_to_map(x, h, w)))


class ConvFFN(nn.Module):
    """fc1 -> GELU -> (+ GELU(dwconv)) -> fc2, on tokens of an h x w map; ``hidden`` may be 0."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.unit_mask: Tensor | None = None  # neuron mask, see scale_units
        self.fc1 = linear(dim, hidden)
        self.dwconv = DWConv(hidden) if hidden else None
        self.fc2 = linear(hidden, dim)

    def forward(self, x: Tensor, h: int, w: int) -> Tensor:
        if self.dwconv is None:  # every neuron removed: only fc2's bias remains
            return torch.zeros_like(x) + self.fc2.bias
        x = F.gelu(self.fc1(x))
        x = x + self.dwconv(x, h, w)
        # Masking after the depthwise branch removes GELU(dw bias) too: exact removal.
        return self.fc2(scale_units(x, self.unit_mask))


class HeadProjections(SwitchableAttention):
    """q/k/v/proj of ``kept`` heads of ``dqk`` q/k and ``dv`` v channels each.

    Pruned heads and channels act as if zeroed, so the softmax scale stays the full head's.
    Masks (see :func:`.common.scale_units`): ``unit_mask`` per head; ``qk_mask`` per q/k channel
    (on q: zeroing a q channel removes its term from every dot product); ``v_mask`` per v
    channel (on the attention output before ``proj``).
    """

    def __init__(self, cfg: CATANetConfig, kept: int, dqk: int, dv: int):
        super().__init__()
        self.kept, self.dqk, self.dv = kept, dqk, dv
        self.width = fast_width(dqk, dv)
        self.scale = cfg.head_qk ** -0.5
        self.unit_mask: Tensor | None = None
        self.qk_mask: Tensor | None = None
        self.v_mask: Tensor | None = None
        self.to_q = linear(cfg.dim, kept * dqk, bias=False)
        self.to_k = linear(cfg.dim, kept * dqk, bias=False)
        self.to_v = linear(cfg.dim, kept * dv, bias=False)
        self.proj = linear(kept * dv, cfg.dim, bias=False)

    def query(self, x: Tensor) -> Tensor:
        """q projection with the q/k channel mask applied."""
        return scale_units(self.to_q(x), self.qk_mask)

    def qkv(self, x: Tensor) -> Tensor:
        """q, k and v of every head from one matmul, zero-padded to ``width``: (..., N, 3, h, width).

        Equal to :meth:`query`, ``to_k`` and ``to_v`` on the real channels (the q/k mask too).
        """
        w = self.width
        weight = torch.cat([pad_heads(self.to_q.weight, self.dqk, w, 0),
                            pad_heads(self.to_k.weight, self.dqk, w, 0),
                            pad_heads(self.to_v.weight, self.dv, w, 0)])
        qkv = F.linear(x, weight)
        if self.qk_mask is not None:  # ones on k and v
            mask = pad_heads(self.qk_mask, self.dqk, w)
            mask = torch.cat([mask, mask.new_ones(*mask.shape[:-1], 2 * mask.shape[-1])], -1)
            qkv = scale_units(qkv, mask)
        return qkv.unflatten(-1, (3, self.kept, w))

    def project(self, out: Tensor) -> Tensor:
        """``proj`` of the merged head outputs, with the head and v channel masks applied."""
        out = scale_units(scale_units(out, self.unit_mask, width=self.dv), self.v_mask)
        return self.proj(out)

    def project_padded(self, out: Tensor) -> Tensor:
        """:meth:`project` of padded head outputs (..., N, h, width)."""
        return self.project(out[..., :self.dv].flatten(-2))


def heads_first(qkv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(..., N, 3, h, w) -> q, k, v as strided (..., h, N, w) views, as the fused kernel takes them."""
    return qkv.movedim(-3, 0).transpose(-3, -2).unbind(0)


class Attention(HeadProjections):
    """Multi-head self-attention of LRSA with ``kept`` of ``heads`` heads."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.kept:
            return torch.zeros_like(x)
        if self.impl == "fast":
            q, k, v = heads_first(self.qkv(x))
            out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
            return self.project_padded(out.transpose(-3, -2))
        q = split_heads(self.query(x), self.dqk)
        k = split_heads(self.to_k(x), self.dqk)
        v = split_heads(self.to_v(x), self.dv)
        return self.project(merge_heads(F.scaled_dot_product_attention(q, k, v, scale=self.scale)))


class IRCA(nn.Module):
    """Inter-group cross-attention: keys and values of the token centres."""

    def __init__(self, cfg: CATANetConfig, kept: int, dqk: int, dv: int):
        super().__init__()
        self.to_k = linear(cfg.dim, kept * dqk, bias=False)
        self.to_v = linear(cfg.dim, kept * dv, bias=False)


class IASA(HeadProjections):
    """Intra-group self-attention over content-sorted tokens, plus attention to all centres.

    Tokens sorted by ``order`` are extended by reflection to (ng+1)*gs and cut into ng groups of
    gs queries; group j attends to the 2*gs keys starting at j*gs. Every token also attends to
    the centres' keys ``k_g`` and values ``v_g`` (B or 1, h, K, width).
    """

    def forward(self, t: Tensor, order: Tensor, k_g: Tensor, v_g: Tensor, group_size: int) -> Tensor:
        n = t.shape[1]
        gs = size_min(n, group_size)  # size_min and // keep n symbolic in export
        ng = (n + gs - 1) // gs
        if self.impl == "fast":
            return self._fast(t, order, k_g, v_g, ng, gs)
        gather = order.unsqueeze(-1)
        q = self.query(t).gather(1, gather.expand(-1, -1, self.kept * self.dqk))
        k = self.to_k(t).gather(1, gather.expand(-1, -1, self.kept * self.dqk))
        v = self.to_v(t).gather(1, gather.expand(-1, -1, self.kept * self.dv))
        q = split_heads(reflect_pad(q, ng * gs, 1), self.dqk)          # b h ng*gs d
        k = split_heads(reflect_pad(k, (ng + 1) * gs, 1), self.dqk)    # b h (ng+1)*gs d
        v = split_heads(reflect_pad(v, (ng + 1) * gs, 1), self.dv)
        out = self._grouped(q, k, v, ng, gs) + F.scaled_dot_product_attention(
            q, k_g, v_g, scale=self.scale)
        out = merge_heads(out)[:, :n]
        unsorted = torch.empty_like(out).scatter_(1, gather.expand_as(out), out)
        return self.project(unsorted)

    def _grouped(self, q: Tensor, k: Tensor, v: Tensor, ng: int, gs: int) -> Tensor:
        """The authors' formulation: 5-D windows (math path)."""
        b, h = q.shape[:2]
        qg = q.unflatten(2, (ng, gs))
        kw, vw = (self._windows(x, ng, gs) for x in (k, v))            # b h ng 2gs d
        out = F.scaled_dot_product_attention(qg, kw, vw, scale=self.scale)
        return out.reshape(b, h, ng * gs, -1)

    def _fast(self, t: Tensor, order: Tensor, k_g: Tensor, v_g: Tensor, ng: int, gs: int) -> Tensor:
        """Groups folded into the batch axis (b*ng); centres attended in token order."""
        b, n = t.shape[:2]
        qkv = self.qkv(t)                                               # b n 3 h w
        rows = order.gather(1, reflect_index(n, (ng + 1) * gs, t.device).expand(b, -1))
        ordered = take_rows(qkv, rows)                                  # b (ng+1)*gs 3 h w
        q = ordered[:, :ng * gs, 0].unflatten(1, (ng, gs)).transpose(2, 3).flatten(0, 1)
        k, v = (self._windows(ordered[:, :, i].transpose(1, 2), ng, gs).transpose(1, 2).flatten(0, 1)
                for i in (1, 2))                                        # b*ng h 2gs w
        grouped = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        grouped = grouped.transpose(1, 2).reshape(b, ng * gs, self.kept, self.width)[:, :n]
        q, k_g, v_g = qkv[:, :, 0].transpose(1, 2), *(
            F.pad(x, (0, self.width - x.shape[-1])) for x in (k_g, v_g))
        centres = F.scaled_dot_product_attention(q, k_g, v_g, scale=self.scale).transpose(1, 2)
        return self.project_padded(put_rows(grouped, order) + centres)

    @staticmethod
    def _windows(x: Tensor, ng: int, gs: int) -> Tensor:
        """Windows of 2*gs tokens with stride gs over (ng+1)*gs: group j and group j + 1.

        Concatenation rather than ``unfold``, whose size and step export makes constants.
        """
        return torch.cat([x[:, :, :ng * gs].unflatten(2, (ng, gs)),
                          x[:, :, gs:].unflatten(2, (ng, gs))], dim=3)


class TAB(nn.Module):
    """Token-aggregation block: content-aware grouping (IASA) and centre attention (IRCA)."""

    def __init__(self, cfg: CATANetConfig, index: int):
        super().__init__()
        self.num_tokens = cfg.num_tokens[index]
        self.group_size = cfg.group_size[index]
        self.n_iters = cfg.n_iters[index]
        self.dqk, self.dv = cfg.tab_qk[index], cfg.tab_v[index]
        heads = (cfg.tab_heads[index], self.dqk, self.dv)
        self.norm = nn.LayerNorm(cfg.dim)
        self.mlp = PreNorm(cfg.dim, ConvFFN(cfg.dim, cfg.tab_mlp[index]))
        self.irca_attn = IRCA(cfg, *heads)
        self.iasa_attn = IASA(cfg, *heads)
        # A TAB with every head removed has no attention output to mix: no conv1x1 either.
        self.conv1x1 = nn.Conv2d(cfg.dim, cfg.dim, 1, bias=False) if cfg.tab_heads[index] else None
        self.register_buffer("means", torch.randn(self.num_tokens, cfg.dim))
        self.register_buffer("initted", torch.tensor(False))

    def initial_centres(self, t: Tensor, shared: bool) -> Tensor:
        """Mean of num_tokens consecutive chunks of the reflect-padded tokens."""
        b, n, c = t.shape
        k = self.num_tokens
        padded = reflect_pad(t, n + k - n % k, 1).view(b, k, -1, c)
        return padded.mean(dim=(0, 2)) if shared else padded.mean(dim=2)

    @staticmethod
    def kmeans_step(t_norm: Tensor, centres: Tensor) -> Tensor:
        """One spherical k-means step over the whole batch; empty clusters keep their centre."""
        owner = (t_norm @ F.normalize(centres, dim=-1).t()).argmax(-1).flatten()
        flat = t_norm.reshape(-1, t_norm.shape[-1])
        sums = torch.zeros_like(centres).index_add_(0, owner, flat)
        counts = torch.bincount(owner, minlength=centres.shape[0]).unsqueeze(1)
        return torch.where(counts > 0, sums / counts.clamp(min=1), centres)

    def centres(self, t: Tensor) -> Tensor:
        """Token centres: (1, K, C) from ``means`` or training k-means, or (B, K, C) per image."""
        if not self.training:
            if bool(self.initted):
                return self.means.unsqueeze(0)
            return self.initial_centres(t, shared=False)
        with torch.no_grad():
            c = self.means if bool(self.initted) else self.initial_centres(t, shared=True)
            t_norm = F.normalize(t, dim=-1)
            for _ in range(self.n_iters - 1):
                c = self.kmeans_step(t_norm, c)
            g = self.kmeans_step(t_norm, F.normalize(c, dim=-1))
            self._update_means(g)
        return g.unsqueeze(0)

    def _update_means(self, g: Tensor) -> None:
        if bool(self.initted):
            self.means.mul_(0.999).add_(g, alpha=0.001)
        else:
            self.means.copy_(g)
            self.initted.fill_(True)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        res = map_to_tokens(x)
        t = self.norm(res)
        g = self.centres(t)
        if self.iasa_attn.kept:
            y = tokens_to_map(self._attention(t, g), h, w)
            res = res + map_to_tokens(self.conv1x1(y))
        res = res + self.mlp(res, h, w)
        return tokens_to_map(res, h, w)

    @torch.no_grad()
    def assign(self, t: Tensor, g: Tensor) -> Tensor:
        """Token order (B, N): tokens sorted by the centre they are most similar to."""
        score = F.normalize(t, dim=-1) @ F.normalize(g, dim=-1).transpose(-1, -2)
        return token_order(score.argmax(dim=-1))  # the authors' tie order, also when exported

    def _attention(self, t: Tensor, g: Tensor) -> Tensor:
        k_g = split_heads(self.irca_attn.to_k(g), self.dqk).expand(t.shape[0], -1, -1, -1)
        v_g = split_heads(self.irca_attn.to_v(g), self.dv).expand(t.shape[0], -1, -1, -1)
        return self.iasa_attn(t, self.assign(t, g), k_g, v_g, self.group_size)


def patch_starts(length: int, patch: int) -> tuple[Tensor, int]:
    """Start of every patch along one side, and the patch side (the whole side if shorter).

    Starts are 0, s, 2s, ... (s = patch - 2) while below ``length - 2``, each clamped to end at
    the border; a side no longer than the patch is one patch. Tensor ops and ``size_min``/
    ``size_max`` instead of Python branches and loops, so an exported graph keeps sizes dynamic.
    """
    steps = torch.arange(0, size_max(length - 2, 1), patch - 2)
    return steps.clamp(max=size_max(length - patch, 0)), size_min(length, patch)


def overlap_weights(length: int, patch: int) -> Tensor:
    """Per-row factor of the authors' overlap rule (halving, not exact averaging).

    For every patch start i = s, 2s, ... the rows from its (clamped) start up to ``i + 2`` are
    halved; a row halved k times gets 2 ** -k, counted at once instead of looping.
    """
    starts, _ = patch_starts(length, patch)
    index = torch.arange(starts.shape[0])
    rows = torch.arange(length).unsqueeze(1)
    halved = (index > 0) & (rows >= starts) & (rows < index * (patch - 2) + 2)
    return torch.exp2(-halved.sum(1).float())


def patch_index(h: int, w: int, patch: int) -> Tensor:
    """Raster index of every token of every LRSA patch: (patches, tokens per patch)."""
    rows, ph = patch_starts(h, patch)
    cols, pw = patch_starts(w, patch)
    ri = torch.as_tensor(rows).unsqueeze(1) + torch.arange(ph)               # nh ph
    ci = torch.as_tensor(cols).unsqueeze(1) + torch.arange(pw)               # nw pw
    return (ri[:, None, :, None] * w + ci[None, :, None, :]).reshape(-1, ph * pw)


def overlap_scale(h: int, w: int, patch: int) -> Tensor:
    """Per-token factor (h*w, 1) of the overlap rule on an h x w map."""
    return (overlap_weights(h, patch)[:, None] * overlap_weights(w, patch)).reshape(-1, 1)


def fold_gain(length: int, patch: int) -> Tensor:
    """Per-row factor that cutting and putting back (without attention) applies to the map.

    Rows covered by k patches are summed k times, then scaled by the overlap rule; the result
    is 1 except where three patches overlap. A module with every head removed still applies it.
    """
    starts, side = patch_starts(length, patch)
    rows = torch.arange(length).unsqueeze(1)
    coverage = ((rows >= starts) & (rows < starts + side)).sum(1)
    return coverage * overlap_weights(length, patch)


class LRSA(nn.Module):
    """Local-region self-attention on overlapping patches, then a ConvFFN on the whole map."""

    def __init__(self, cfg: CATANetConfig, index: int):
        super().__init__()
        self.layer = nn.ModuleList([
            PreNorm(cfg.dim, Attention(cfg, cfg.lrsa_heads[index], cfg.lrsa_qk[index],
                                       cfg.lrsa_v[index])),
            PreNorm(cfg.dim, ConvFFN(cfg.dim, cfg.lrsa_mlp[index])),
        ])

    def forward(self, x: Tensor, patch: int) -> Tensor:
        b, c, h, w = x.shape
        if self.layer[0].fn.kept:
            x = self._local_attention(x, patch)
        else:  # no attention left, but the patch put-back still scales triple overlaps
            x = x * (fold_gain(h, patch).to(x)[:, None] * fold_gain(w, patch).to(x))
        tokens = map_to_tokens(x)
        return tokens_to_map(tokens + self.layer[1](tokens, h, w), h, w)

    def _local_attention(self, x: Tensor, patch: int) -> Tensor:
        b, c, h, w = x.shape
        index = patch_index(h, w, patch).to(x.device)                   # patches x tokens
        rows = index.flatten().expand(b, -1)
        tok = take_rows(map_to_tokens(x), rows).view(-1, index.shape[1], c)
        tok = tok + self.layer[0](tok)
        out = add_rows(tok.view(b, -1, c), rows, h * w)
        return tokens_to_map(out * overlap_scale(h, w, patch).to(x), h, w)


# --------------------------------------------------------------------------- network
class CATANet(SRNet):
    """CATANet for x1/x2/x3/x4 super-resolution; input B x 3 x H x W in [0, 1]."""

    def __init__(self, cfg: CATANetConfig | None = None, **overrides: Any):
        super().__init__()
        self.cfg = cfg = CATANetConfig.with_overrides(cfg, overrides)
        dim, s = cfg.dim, cfg.upscale
        self.first_conv = nn.Conv2d(3, dim, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.ModuleList([TAB(cfg, i), LRSA(cfg, i)]) for i in range(cfg.block_num))
        self.mid_convs = nn.ModuleList(nn.Conv2d(dim, dim, 3, padding=1) for _ in range(cfg.block_num))
        if s == 4:
            self.upconv1 = nn.Conv2d(dim, dim * 4, 3, padding=1)
            self.upconv2 = nn.Conv2d(dim, dim * 4, 3, padding=1)
        else:
            self.upconv = nn.Conv2d(dim, dim * s * s, 3, padding=1)
        self.last_conv = nn.Conv2d(dim, 3, 3, padding=1)

    def embed(self, x: Tensor) -> Tensor:
        """First conv; its features are made channels-last (token rows), as they stay after it.

        The conv itself runs on the input as given: its channels-last kernel rounds differently,
        enough to move a token to another centre (the parity fixtures notice).
        """
        return self.first_conv(x).contiguous(memory_format=torch.channels_last)

    def block(self, i: int, x: Tensor) -> Tensor:
        """Run block i (TAB, LRSA, mid conv, residual) on a feature map."""
        tab, lrsa = self.blocks[i]
        return x + self.mid_convs[i](lrsa(tab(x), self.cfg.patch_size[i]))

    def reconstruct(self, f: Tensor, x: Tensor) -> Tensor:
        """Upsample features ``f`` (after the global residual) and add the bilinear base of x."""
        if self.cfg.upscale == 4:
            f = F.leaky_relu(F.pixel_shuffle(self.upconv1(f), 2), 0.1)
            f = F.leaky_relu(F.pixel_shuffle(self.upconv2(f), 2), 0.1)
        else:
            f = F.leaky_relu(F.pixel_shuffle(self.upconv(f), self.cfg.upscale), 0.1)
        base = F.interpolate(x, scale_factor=self.cfg.upscale, mode="bilinear", align_corners=False)
        return base + self.last_conv(f)  # base first: the output takes its (standard) layout

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"CATANet expects a B x 3 x H x W tensor, got shape {tuple(x.shape)}")
        f = self.embed(x)
        y = f
        for i in range(self.cfg.block_num):
            y = self.block(i, y)
        return self.reconstruct(y + f, x)


PLAIN_STATE_HINT = (
    "if this model was pruned inside heads (q/k or v channels), its shapes cannot tell heads "
    "from channels per head (q rows = heads x q/k width): load the self-describing srprune "
    "checkpoint instead, or give qk_dim, tab_heads, lrsa_heads, tab_qk, tab_v, lrsa_qk and "
    "lrsa_v in the model config")


def infer_config(state: dict[str, Tensor], heads: int = CATANetConfig.heads) -> dict[str, Any]:
    """Read dim, block_num, qk_dim, mlp_dim, num_tokens, upscale and per-block widths off shapes.

    ``heads`` cannot be read off shapes; it is needed to turn q rows into a count of heads.
    Heads are assumed to have their full q/k and v widths (see :data:`PLAIN_STATE_HINT`).
    """
    try:
        dim = state["first_conv.weight"].shape[0]
        block_num = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        num_tokens = [state[f"blocks.{i}.0.means"].shape[0] for i in range(block_num)]
        q_rows = {name: [state[f"blocks.{i}.{path}.to_q.weight"].shape[0] for i in range(block_num)]
                  for name, path in (("tab_heads", "0.iasa_attn"), ("lrsa_heads", "1.layer.0.fn"))}
        mlp = {name: [state[f"blocks.{i}.{path}.fc1.weight"].shape[0] for i in range(block_num)]
               for name, path in (("tab_mlp", "0.mlp.fn"), ("lrsa_mlp", "1.layer.1.fn"))}
    except (KeyError, ValueError) as err:
        raise ValueError(f"cannot infer a CATANet config from this state dict: missing {err}") from err
    if "upconv1.weight" in state:
        upscale = 4
    elif "upconv.weight" in state:
        upscale = math.isqrt(state["upconv.weight"].shape[0] // dim)
    else:
        raise ValueError("cannot infer upscale: neither upconv.weight nor upconv1.weight present")
    qk_dim = max(max(rows) for rows in q_rows.values())
    config = {"dim": dim, "block_num": block_num, "num_tokens": num_tokens, "upscale": upscale,
              "mlp_dim": max(max(widths) for widths in mlp.values())}
    if qk_dim % heads == 0 and all(r % (qk_dim // heads) == 0 for rows in q_rows.values() for r in rows):
        head_qk = qk_dim // heads
        config.update({name: [r // head_qk for r in rows] for name, rows in q_rows.items()})
    config["qk_dim"] = qk_dim
    config.update(mlp)
    return config


register_arch(Arch(
    name="catanet",
    config_class=CATANetConfig,
    build=lambda config: CATANet(CATANetConfig.from_dict(config)),
    infer_config=infer_config,
    inferable=("dim", "block_num", "qk_dim", "mlp_dim", "num_tokens", "upscale"),
    macs=catanet_macs,
    hidden={"heads": CATANetConfig.heads},
    float_buffers=(".means",),  # the TAB's token centres
    shape_hint=PLAIN_STATE_HINT,
    # an LRSA patch, and a tile of at least one IASA group of tokens
    min_tile=lambda cfg: max(*cfg.patch_size, math.isqrt(max(cfg.group_size) - 1) + 1),
    tiny=dict(dim=8, block_num=2, qk_dim=8, mlp_dim=12, heads=2, patch_size=[8, 6],
              num_tokens=[4, 8], group_size=[16, 8], n_iters=[2, 2]),
))
