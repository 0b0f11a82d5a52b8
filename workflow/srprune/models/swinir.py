"""Lightweight SwinIR (SwinIR-S, Liang et al., ICCVW 2021), compatible with the authors' checkpoints.

One readable file: the configuration, the building blocks and the network, written from
``docs/swinir-spec.md`` of the shared material. Parameter and buffer names follow the authors'
code (``upsampler='pixelshuffledirect'``, ``resi_connection='1conv'``, patch size 1, patch norm,
no absolute position embedding), so their release checkpoints load strictly, stored
``attn_mask`` and ``relative_position_index`` buffers included, and the eval output matches
theirs to float32 round-off.

Forward: the input is padded at the bottom and right by *reflection* to a multiple of the
window (the model's own ``check_image_size``; the authors' test script pads differently before
calling the model, see the spec) and the output cropped back. Reflection needs the pad to be
smaller than the side, so a side that needs at least as many padded rows as it has (window 8:
sides of 1 to 4 pixels) is refused, as by the authors' code, here with a ValueError that says
so. The attention mask of the shifted layers is always recomputed for the padded size (the
stored buffers equal it for an ``img_size`` square and are kept only so that checkpoints load).

Tokens flow as channels-last maps ``B x H x W x C``. Two attention formulations give the same
numbers: ``fast`` (default) hands each window's heads to PyTorch's fused
``scaled_dot_product_attention`` with the relative position bias and the shift mask as one
additive mask; ``reference`` is the authors' formulation (scaled q times k transposed, plus bias,
plus mask, softmax, times v), selected with :meth:`SwinIR.set_attention_impl`.

Per-layer widths (heads kept per attention, hidden neurons per MLP) are part of the
configuration, so a structurally pruned model is this same class with narrower layers. A head
keeps its width (``embed_dim / num_heads``), so the softmax scale stays the full head's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import DictConfig, SRNet, SwitchableAttention, linear, scale_units, zero_width_ok
from .registry import Arch, register_arch

RGB_MEAN = (0.4488, 0.4371, 0.4040)
MASK_VALUE = -100.0  # the authors' value between tokens of different regions of a shifted window


# --------------------------------------------------------------------------- configuration
@dataclass
class SwinIRConfig(DictConfig):
    """Hyper-parameters of lightweight SwinIR; defaults are the released x4 model (SwinIR-S).

    ``layer_heads`` and ``layer_mlp`` hold one width per Swin layer, all layers of all residual
    groups in order (``sum(depths)`` entries); None means the full width (``num_heads`` of the
    layer's group, ``int(embed_dim * mlp_ratio)``).
    """

    what = "SwinIR config"

    upscale: int = 4
    img_size: int = 64
    window_size: int = 8
    embed_dim: int = 60
    depths: list[int] = field(default_factory=lambda: [6, 6, 6, 6])
    num_heads: list[int] = field(default_factory=lambda: [6, 6, 6, 6])
    mlp_ratio: float = 2.0
    img_range: float = 1.0
    layer_heads: list[int] | None = None
    layer_mlp: list[int] | None = None

    def __post_init__(self) -> None:
        for name in ("upscale", "img_size", "window_size", "embed_dim"):
            if isinstance(getattr(self, name), bool) or int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.upscale not in (1, 2, 3, 4):
            raise ValueError(f"upscale must be 1, 2, 3 or 4, got {self.upscale}")
        self.depths, self.num_heads = [int(d) for d in self.depths], [int(h) for h in self.num_heads]
        if not self.depths or len(self.depths) != len(self.num_heads) or min(self.depths) < 1:
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must be "
                             f"non-empty lists of the same length with positive depths")
        if min(self.num_heads) < 1 or any(self.embed_dim % h for h in self.num_heads):
            raise ValueError(f"num_heads {self.num_heads} must divide embed_dim ({self.embed_dim})")
        if not math.isfinite(self.mlp_ratio) or self.mlp_ratio <= 0 or self.img_range <= 0:
            raise ValueError(f"mlp_ratio ({self.mlp_ratio}) and img_range ({self.img_range}) "
                             f"must be positive")
        full_heads = [h for h, d in zip(self.num_heads, self.depths) for _ in range(d)]
        self.layer_heads = self._widths("layer_heads", self.layer_heads, full_heads)
        self.layer_mlp = self._widths("layer_mlp", self.layer_mlp, [self.mlp_hidden] * self.layers)

    def _widths(self, name: str, value: list[int] | None, full: list[int]) -> list[int]:
        """Per-layer widths, validated against the full ones (None: the full ones)."""
        widths = list(full) if value is None else [int(v) for v in value]
        if len(widths) != self.layers:
            raise ValueError(f"{name} has {len(widths)} entries but the model has {self.layers} "
                             f"layers (sum of depths {self.depths})")
        if any(w < 0 or w > f for w, f in zip(widths, full)):
            raise ValueError(f"{name} entries must lie in [0, {full}]: {widths}")
        return widths

    @property
    def layers(self) -> int:
        """Swin layers in the whole model."""
        return sum(self.depths)

    @property
    def mlp_hidden(self) -> int:
        """Full hidden width of every MLP."""
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def window(self) -> int:
        """Window side the layers use: the authors shrink it to img_size (and never shift) when
        img_size <= window_size."""
        return min(self.window_size, self.img_size)

    def head_width(self, group: int) -> int:
        """Channels of one head in residual group ``group``."""
        return self.embed_dim // self.num_heads[group]

    def shift(self, layer: int) -> int:
        """Cyclic shift of layer ``layer`` (its index inside its group): half a window if odd."""
        return self.window // 2 if layer % 2 and self.img_size > self.window_size else 0



# --------------------------------------------------------------------------- window helpers
def to_windows(x: Tensor, w: int) -> Tensor:
    """B x H x W x C map -> B x nW x w*w x C, windows and their tokens row-major."""
    b, h, wd, c = x.shape
    return x.view(b, h // w, w, wd // w, w, c).transpose(2, 3).reshape(b, -1, w * w, c)


def from_windows(x: Tensor, w: int, h: int, wd: int) -> Tensor:
    """Inverse of :func:`to_windows`: B x nW x w*w x C -> B x H x W x C."""
    b, c = x.shape[0], x.shape[-1]
    return x.view(b, h // w, wd // w, w, w, c).transpose(2, 3).reshape(b, h, wd, c)


def relative_position_index(w: int) -> Tensor:
    """``idx[n, m] = (row_n - row_m + w - 1) * (2w - 1) + col_n - col_m + w - 1`` (w*w x w*w)."""
    rows, cols = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    return (rows[:, None] - rows[None] + w - 1) * (2 * w - 1) + cols[:, None] - cols[None] + w - 1


def shift_mask(h: int, wd: int, w: int, shift: int, device: torch.device | None = None) -> Tensor:
    """nW x w*w x w*w additive mask of a shifted layer on an h x wd map (0 or -100).

    Rows fall into bands [0, h-w), [h-w, h-shift), [h-shift, h) of the shifted map, columns
    likewise; tokens of one window see each other only when both bands agree.
    """
    def bands(length: int) -> Tensor:
        index = torch.arange(length, device=device)
        return (index >= length - w).long() + (index >= length - shift).long()

    labels = (3 * bands(h)[:, None] + bands(wd)[None]).view(1, h, wd, 1).float()
    labels = to_windows(labels, w)[0, :, :, 0]                          # nW x w*w
    same = labels[:, :, None] == labels[:, None, :]
    return torch.zeros(same.shape, device=device).masked_fill_(~same, MASK_VALUE)


# --------------------------------------------------------------------------- building blocks
class WindowAttention(SwitchableAttention):
    """Multi-head attention inside w x w windows with a relative position bias per head.

    ``unit_mask`` (heads,) or (B, heads) multiplies each head's output before ``proj``; a head
    masked to 0 is exactly a removed head.
    """

    def __init__(self, dim: int, window: int, heads: int, head_width: int):
        super().__init__()
        self.heads, self.head_width, self.window = heads, head_width, window
        self.scale = head_width ** -0.5
        self.unit_mask: Tensor | None = None
        with zero_width_ok():
            self.relative_position_bias_table = nn.Parameter(
                nn.init.trunc_normal_(torch.empty((2 * window - 1) ** 2, heads), std=0.02))
        self.register_buffer("relative_position_index", relative_position_index(window))
        self.qkv = linear(dim, 3 * heads * head_width)
        self.proj = linear(heads * head_width, dim)

    def bias(self) -> Tensor:
        """heads x w*w x w*w relative position bias."""
        n = self.window ** 2
        table = self.relative_position_bias_table[self.relative_position_index.flatten()]
        return table.view(n, n, self.heads).permute(2, 0, 1)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        """``x`` B x nW x N x C windows; ``mask`` None or nW x N x N. Returns B x nW x N x C."""
        if not self.heads:  # every head removed: the branch adds proj's bias only
            return torch.zeros_like(x) + self.proj.bias
        b, nw, n, _ = x.shape
        qkv = self.qkv(x).view(b, nw, n, 3, self.heads, self.head_width).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv.unbind(0)                                          # B nW heads N d
        bias = self.bias()
        if self.impl == "fast":
            out = self.fused(q, k, v, bias, mask)
        else:
            logits = (q * self.scale) @ k.transpose(-2, -1) + bias
            if mask is not None:
                logits = logits + mask[:, None]
            out = logits.softmax(dim=-1) @ v
        out = scale_units(out, self.unit_mask, 2)                        # B nW heads N d
        return self.proj(out.transpose(2, 3).flatten(-2))

    def fused(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask: Tensor | None) -> Tensor:
        """Fused attention of B x nW x heads x N x d inputs with bias (and shift mask) added.

        Windows and heads share one axis, so the additive mask (1 x nW*heads x N x N) is
        broadcast over the batch rather than copied per image. The mask must be 4-D: PyTorch's
        CPU flash kernel refuses a 3-D one and falls back to a path about three times slower.
        """
        additive = bias[None] if mask is None else bias + mask[:, None]     # (1 or nW) heads N N
        b, nw, heads, n, d = q.shape
        if mask is None:
            q, k, v = (t.flatten(0, 1) for t in (q, k, v))
        else:
            q, k, v = (t.flatten(1, 2) for t in (q, k, v))
            additive = additive.flatten(0, 1)[None]
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale, attn_mask=additive)
        return out.view(b, nw, heads, n, d)


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2 with ``hidden`` neurons (0 allowed); ``unit_mask`` scales the neurons."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.unit_mask: Tensor | None = None
        self.fc1 = linear(dim, hidden)
        self.fc2 = linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(scale_units(F.gelu(self.fc1(x)), self.unit_mask, -1))


class SwinLayer(nn.Module):
    """One Swin layer on a B x H x W x C map: (shifted) window attention, then the MLP."""

    def __init__(self, cfg: SwinIRConfig, group: int, index: int, layer: int):
        super().__init__()
        dim, self.window, self.shift = cfg.embed_dim, cfg.window, cfg.shift(index)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, self.window, cfg.layer_heads[layer], cfg.head_width(group))
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, cfg.layer_mlp[layer])
        if self.shift:
            side = cfg.img_size
            self.register_buffer("attn_mask", shift_mask(side, side, self.window, self.shift))

    def forward(self, t: Tensor) -> Tensor:
        b, h, w, c = t.shape
        s, ws = self.shift, self.window
        u = self.norm1(t)
        if s:
            u = torch.roll(u, (-s, -s), dims=(1, 2))
        mask = shift_mask(h, w, ws, s, t.device) if s else None
        u = from_windows(self.attn(to_windows(u, ws), mask), ws, h, w)
        if s:
            u = torch.roll(u, (s, s), dims=(1, 2))
        t = t + u
        return t + self.mlp(self.norm2(t))


class BasicLayer(nn.Module):
    """The Swin layers of one residual group (named ``residual_group`` in checkpoints)."""

    def __init__(self, cfg: SwinIRConfig, group: int):
        super().__init__()
        first = sum(cfg.depths[:group])
        self.blocks = nn.ModuleList(SwinLayer(cfg, group, j, first + j)
                                    for j in range(cfg.depths[group]))


def conv_tokens(conv: nn.Conv2d, t: Tensor) -> Tensor:
    """A 3x3 conv applied to a B x H x W x C map (as NCHW, channels-last), result the same way."""
    return conv(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class RSTB(nn.Module):
    """Residual Swin Transformer block: the group's layers, a 3x3 conv, and a residual add."""

    def __init__(self, cfg: SwinIRConfig, group: int):
        super().__init__()
        self.residual_group = BasicLayer(cfg, group)
        self.conv = nn.Conv2d(cfg.embed_dim, cfg.embed_dim, 3, padding=1)

    def close(self, start: Tensor, t: Tensor) -> Tensor:
        """The group's end after its last layer gave ``t``: conv, plus the group's input."""
        return start + conv_tokens(self.conv, t)

    def forward(self, t: Tensor) -> Tensor:
        start = t
        for block in self.residual_group.blocks:
            t = block(t)
        return self.close(start, t)


class PatchEmbedNorm(nn.Module):
    """The authors' ``patch_embed``: flattening (here: none) and a LayerNorm named ``norm``."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)


# --------------------------------------------------------------------------- network
@dataclass
class Features:
    """A padded input on its way through the network: shallow features and the output size."""

    f0: Tensor      # B x Hp x Wp x C, the shallow features (the global residual)
    size: tuple[int, int]


class SwinIR(SRNet):
    """Lightweight SwinIR for x1-x4 super-resolution; input B x 3 x H x W in [0, 1]."""

    def __init__(self, cfg: SwinIRConfig | None = None, **overrides: Any):
        super().__init__()
        self.cfg = cfg = SwinIRConfig.with_overrides(cfg, overrides)
        dim = cfg.embed_dim
        self.mean = torch.tensor(RGB_MEAN).view(1, 3, 1, 1)  # plain attribute, as the authors'
        self.conv_first = nn.Conv2d(3, dim, 3, padding=1)
        self.patch_embed = PatchEmbedNorm(dim)
        self.layers = nn.ModuleList(RSTB(cfg, i) for i in range(len(cfg.depths)))
        self.norm = nn.LayerNorm(dim)
        self.conv_after_body = nn.Conv2d(dim, dim, 3, padding=1)
        self.upsample = nn.Sequential(nn.Conv2d(dim, 3 * cfg.upscale ** 2, 3, padding=1),
                                      nn.PixelShuffle(cfg.upscale))
        self.apply(_init_weights)

    def pad(self, x: Tensor) -> Tensor:
        """Reflect-pad bottom and right to multiples of the window (the model's own padding)."""
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"SwinIR expects a B x 3 x H x W tensor, got shape {tuple(x.shape)}")
        w = self.cfg.window
        pads = [(w - side % w) % w for side in x.shape[-2:]]
        for side, pad in zip(x.shape[-2:], pads):
            if pad >= side:
                raise ValueError(
                    f"SwinIR input {tuple(x.shape[-2:])}: a side of {side} would need {pad} rows "
                    f"or columns of reflection padding to reach a multiple of the window ({w}), "
                    f"at least as many as it has (reflection needs fewer)")
        return F.pad(x, (0, pads[1], 0, pads[0]), mode="reflect") if any(pads) else x

    def embed(self, x: Tensor) -> tuple[Tensor, Features]:
        """Pad, normalise, shallow conv: the tokens that enter group 0, and the features."""
        x = (self.pad(x) - self.mean.to(x)) * self.cfg.img_range
        f0 = conv_tokens(self.conv_first, x.permute(0, 2, 3, 1))
        return self.patch_embed.norm(f0), Features(f0, (x.shape[-2], x.shape[-1]))

    def reconstruct(self, t: Tensor, feats: Features, size: tuple[int, int]) -> Tensor:
        """Deep features ``t`` after the last group -> SR image cropped to ``size`` x upscale."""
        t = conv_tokens(self.conv_after_body, self.norm(t)) + feats.f0
        y = self.upsample(t.permute(0, 3, 1, 2)) / self.cfg.img_range + self.mean.to(t)
        s = self.cfg.upscale
        return y[..., :size[0] * s, :size[1] * s]

    def forward(self, x: Tensor) -> Tensor:
        t, feats = self.embed(x)
        for rstb in self.layers:
            t = rstb(t)
        return self.reconstruct(t, feats, x.shape[-2:])


def _init_weights(module: nn.Module) -> None:
    """The authors' initialisation: Linear weights truncated normal (std 0.02), biases 0,
    LayerNorms 1 and 0 (convs keep PyTorch's default)."""
    if isinstance(module, nn.Linear):
        with zero_width_ok():
            nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# --------------------------------------------------------------------------- state dicts
def _layer_keys(state: dict[str, Tensor], suffix: str) -> list[Tensor]:
    """``layers.i.residual_group.blocks.j.<suffix>`` of every layer, in order."""
    found = {}
    for key, value in state.items():
        parts = key.split(".")
        if key.startswith("layers.") and key.endswith("." + suffix) and parts[2] == "residual_group":
            found[int(parts[1]), int(parts[4])] = value
    return [found[k] for k in sorted(found)]


def infer_config(state: dict[str, Tensor]) -> dict[str, Any]:
    """Read every SwinIR hyper-parameter but ``img_range`` off the shapes of a state dict.

    Heads kept per layer are the bias table's columns and their width the q rows per head, so
    ``num_heads`` is ``embed_dim`` over that width; ``mlp_ratio`` is the widest MLP over
    ``embed_dim`` (give it in the model config when every MLP of a plain state dict was pruned);
    ``img_size`` comes from the stored ``attn_mask`` buffers.
    """
    try:
        dim = state["conv_first.weight"].shape[0]
        depths = [1 + max(j for (i2, j) in _indices(state) if i2 == i)
                  for i in range(1 + max(i for i, _ in _indices(state)))]
        tables = _layer_keys(state, "attn.relative_position_bias_table")
        qkv = _layer_keys(state, "attn.qkv.weight")
        hidden = [w.shape[0] for w in _layer_keys(state, "mlp.fc1.weight")]
        upscale = math.isqrt(state["upsample.0.weight"].shape[0] // 3)
    except (KeyError, ValueError) as err:
        raise ValueError(f"cannot infer a SwinIR config from this state dict: missing {err}") from err
    if not (len(tables) == len(qkv) == len(hidden) == sum(depths)):
        raise ValueError("cannot infer a SwinIR config: some Swin layers lack their attention "
                         "or MLP weights")
    window = (math.isqrt(tables[0].shape[0]) + 1) // 2
    heads = [t.shape[1] for t in tables]
    widths = {q.shape[0] // (3 * h) for q, h in zip(qkv, heads) if h}
    if len(widths) > 1:
        raise ValueError(f"cannot infer a SwinIR config: head widths differ between layers "
                         f"({sorted(widths)})")
    width = widths.pop() if widths else dim  # no head left anywhere: any width fits
    masks = _layer_keys(state, "attn_mask")
    img_size = math.isqrt(masks[0].shape[0]) * window if masks else window
    config = {"embed_dim": dim, "depths": depths, "num_heads": [dim // width] * len(depths),
              "window_size": window, "upscale": upscale, "layer_heads": heads,
              "layer_mlp": hidden, "mlp_ratio": max(max(hidden), 1) / dim}
    if masks or any(d > 1 for d in depths):
        config["img_size"] = img_size
    return config


def _indices(state: dict[str, Tensor]) -> set[tuple[int, int]]:
    """(group, layer) of every Swin layer named in ``state``."""
    return {(int(k.split(".")[1]), int(k.split(".")[4])) for k in state
            if k.startswith("layers.") and ".residual_group.blocks." in k}


# --------------------------------------------------------------------------- cost
def padded_size(cfg: SwinIRConfig, lr_size: tuple[int, int]) -> tuple[int, int]:
    """The map size the layers run at: each side rounded up to a multiple of the window."""
    w = cfg.window
    return tuple(w * math.ceil(int(side) / w) for side in lr_size)


def swinir_macs(cfg: SwinIRConfig, lr_size: tuple[int, int]) -> dict[str, Any]:
    r"""Closed-form MACs of one SwinIR forward pass (eval, batch 1) on an h x w input, per layer.

    Conventions of :mod:`srprune.complexity` (1 MAC = one multiply-add; biases, norms, GELU,
    softmax, the bias and mask additions, rolls, padding and PixelShuffle are free). Everything
    runs at the padded size H x W (:func:`padded_size`), N = H*W tokens, C = embed_dim, s =
    upscale, window side w; Swin layer k of residual group g with h_k heads of width d_g and m_k
    MLP neurons::

        conv_first            9 * 3 * C * N
        per layer k           N*C*3*h_k*d_g (qkv) + N*h_k*d_g*C (proj)
                              + N * w^2 * h_k * 2 d_g  (q.k and attention x v: every token
                                                        against the w^2 tokens of its window)
                              + 2 * N * C * m_k (fc1, fc2)
        per residual group    9 * C * C * N (its conv)
        conv_after_body       9 * C * C * N
        upsample.0            9 * C * 3 s^2 * N

    For the released x4 model per head and token: 1,800 + 600 + 1,280 = 3,680 (spec).
    Returns ``{"total", "per_module", "per_layer"}`` like ``complexity.macs_full``: layers are
    each Swin layer's ``attn`` and ``mlp`` and the convolutions; modules are ``conv_first``,
    each ``layers.i`` (residual group with its conv), ``conv_after_body`` and ``upsample``.
    """
    h, w = padded_size(cfg, lr_size)
    n, c, window = h * w, cfg.embed_dim, cfg.window
    layers = {"conv_first": 9 * 3 * c * n}
    modules = {"conv_first": layers["conv_first"]}
    index = 0
    for group, depth in enumerate(cfg.depths):
        d, prefix = cfg.head_width(group), f"layers.{group}"
        for j in range(depth):
            heads, hidden = cfg.layer_heads[index], cfg.layer_mlp[index]
            block = f"{prefix}.residual_group.blocks.{j}"
            layers[f"{block}.attn"] = 4 * n * c * heads * d + n * window ** 2 * heads * 2 * d
            layers[f"{block}.mlp"] = 2 * n * c * hidden
            index += 1
        layers[f"{prefix}.conv"] = 9 * c * c * n
        modules[prefix] = sum(v for k, v in layers.items() if k.startswith(prefix + "."))
    layers["conv_after_body"] = modules["conv_after_body"] = 9 * c * c * n
    layers["upsample.0"] = modules["upsample"] = 9 * c * 3 * cfg.upscale ** 2 * n
    per_layer = {k: v for k, v in layers.items() if v}
    return {"total": sum(per_layer.values()), "per_module": modules, "per_layer": per_layer}


def analytic_macs(cfg: SwinIRConfig, lr_size: tuple[int, int]) -> int:
    """Total of :func:`swinir_macs`."""
    return swinir_macs(cfg, lr_size)["total"]


register_arch(Arch(
    name="swinir",
    config_class=SwinIRConfig,
    build=lambda config: SwinIR(SwinIRConfig.from_dict(config)),
    infer_config=infer_config,
    inferable=("embed_dim", "depths", "num_heads", "window_size", "img_size", "mlp_ratio",
               "upscale", "layer_heads", "layer_mlp"),
    macs=swinir_macs,
    float_buffers=("attn_mask",),  # the shifted layers' stored masks (the forward recomputes them)
    min_tile=lambda cfg: cfg.window,  # one attention window
    tiny=dict(embed_dim=8, depths=[2, 2], num_heads=[2, 2], window_size=4, img_size=8,
              mlp_ratio=2.0, upscale=2),  # window 4 at img_size 8: odd layers shifted
))
