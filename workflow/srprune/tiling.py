"""Memory-bounded tiled inference for super-resolution models.

The LR image is cut into ``tile`` x ``tile`` tiles that overlap their neighbours by ``overlap``
pixels, each tile is run through the model on its own, and the x``scale`` outputs are blended
back into one SR image. Peak memory is that of one tile, whatever the image size.

Tile grid (BasicSR / SwinIR / HAT ``tile`` inference): along a side of length ``L``, the tile
side is ``t = min(tile, L)`` and tiles start at ``0, stride, 2 stride, ... < L - t`` with
``stride = tile - overlap``, plus a last tile at ``L - t`` (shifted inward so it ends at the
border; it may overlap its neighbour by more than ``overlap``). A side no longer than the tile is
one tile, so an image smaller than a tile is run whole.

Blending: every tile gets a weight map ``w`` (the outer product of a row and a column profile),
the SR image is ``sum(w * tile_output) / sum(w)``. An *interior* tile edge is one that is not on
the image border; image-border edges are never down-weighted. ``blend`` chooses the profile:

* ``"uniform"`` (default; BasicSR's convention): weight 1 everywhere, so overlapping outputs are
  plain means. The outputs near an interior edge, computed with less context, count as much as
  the others.
* ``"ramp"``: linear feathering. Within ``overlap * scale`` SR pixels of an interior edge the
  weight grows as ``(j + 0.5) / (overlap * scale)`` (``j`` = SR pixels from that edge), 1 beyond;
  weights stay positive, so seams are smooth cross-fades.
* ``"crop"``: each tile contributes only the pixels at least ``overlap // 2`` (top/left) or
  ``overlap - overlap // 2`` (bottom/right) LR pixels away from its interior edges; the kept
  parts of neighbouring tiles abut (and are averaged where border tiles, shifted inward, still
  overlap). This is the only mode that reproduces a *local* model exactly: if every output pixel
  depends only on LR pixels within ``r`` of it (a stack of k 3x3 convs has ``r = k``) and tile
  edges are zero-padded like image borders, the tiled output equals the untiled one for
  ``overlap >= 2 r``. ``uniform`` and ``ramp`` mix in outputs computed within ``r`` of a tile
  edge and are exact only for ``r = 0``.

With a single tile (``tile`` >= both sides) the result is the plain forward, bit for bit.
A model that is not local (CATANet: attention over token groups, LRSA patches, token centres
computed per image) gives a different output when tiled. Measured on Set5 x4 with the
third-party x4 checkpoint (untiled 31.723 dB, uint8 output; torch 2.13 CPU), PSNR change for
tile 48 / 64 with overlap 8 / 16: ``uniform`` -0.032 / -0.036 / -0.008 / -0.006 dB, ``ramp``
-0.012 / -0.014 / +0.004 / +0.005 dB, ``crop`` -0.014 / -0.016 / +0.005 / +0.004 dB (per image up
to about +-0.07 dB; SSIM within 0.0004).

Smallest tile (:func:`check_tile_fits`, applied by :func:`srprune.evaluate.model_upscaler`, so
by ``srprune evaluate`` and ``visual``): the model's own (``Arch.min_tile``: CATANet's largest
LRSA patch, and the side of a tile holding its largest token group; SwinIR's window) and at
least ``2 * overlap + 8``. Smaller tiles compute something else than the model: on Set5 bird x4
(untiled 33.66 dB, bicubic 30.18 dB) tile 3 / overlap 1 scores -2.17 dB, 8 / 0 -1.09 dB, 12 / 2
-0.53 dB. Above the smallest, CATANet still moves by a little on a single image, either way,
whatever the tile: tiles of 28 to 71 with overlap 8 measured -0.16 to +0.07 dB (``uniform``),
-0.04 to +0.07 dB (``ramp``, ``crop``).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from .models import arch_of
from .settings import check_int

BLEND_MODES = ("uniform", "ramp", "crop")
TILE_MARGIN = 8  # LR pixels a tile keeps beyond twice the overlap, at least

Forward = Callable[[Tensor], Tensor]


def check_tile_args(tile: int, overlap: int, scale: int = 1, blend: str = "uniform") -> None:
    """Raise a clear ``ValueError``/``TypeError`` for bad tiling arguments."""
    check_int("tile", tile, 1)
    check_int("overlap", overlap, 0)
    check_int("scale", scale, 1)
    if overlap >= tile:
        raise ValueError(f"overlap must be smaller than the tile (0 <= overlap < tile), "
                         f"got tile {tile}, overlap {overlap}")
    if blend not in BLEND_MODES:
        raise ValueError(f"blend must be one of {BLEND_MODES}, got {blend!r}")


def check_tile_fits(tile: int, overlap: int, model_minimum: int = 1) -> None:
    """Refuse a tile smaller than ``model_minimum`` (the model's own: a window, patch or token
    group must fit in a tile; :attr:`srprune.models.Arch.min_tile`) or than
    ``2 * overlap + TILE_MARGIN`` (each tile keeps some pixels of its own); see the module doc."""
    floor = 2 * overlap + TILE_MARGIN
    if tile < max(model_minimum, floor):
        own = (f"the model's windows / patches / token groups need {model_minimum}, and "
               if model_minimum > 1 else "")
        raise ValueError(f"tile {tile} is too small: the smallest is {max(model_minimum, floor)} "
                         f"({own}2 x overlap {overlap} + {TILE_MARGIN} = {floor})")


def model_min_tile(model: nn.Module) -> int:
    """The smallest tile side a registered model's own sizes allow (:attr:`Arch.min_tile`)."""
    return arch_of(model).min_tile(model.cfg)


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along a side of ``length`` pixels (last one shifted inward)."""
    check_tile_args(tile, overlap)
    if length <= tile:
        return [0]
    stride = tile - overlap
    return list(range(0, length - tile, stride)) + [length - tile]


def _profile(start: int, size: int, length: int, overlap: int, scale: int, blend: str,
             device: torch.device, dtype: torch.dtype) -> Tensor:
    """1-D weights over the ``size * scale`` SR pixels of a tile starting at ``start``."""
    n = size * scale
    weights = torch.ones(n, device=device, dtype=dtype)
    interior_start, interior_end = start > 0, start + size < length
    if blend == "uniform" or overlap == 0 or not (interior_start or interior_end):
        return weights
    j = torch.arange(n, device=device, dtype=torch.float64)
    if blend == "ramp":
        ramp = overlap * scale
        if interior_start:
            weights = torch.minimum(weights, ((j + 0.5) / ramp).clamp(max=1).to(dtype))
        if interior_end:
            weights = torch.minimum(weights, ((n - j - 0.5) / ramp).clamp(max=1).to(dtype))
        return weights
    lo = (overlap // 2) * scale if interior_start else 0                       # crop
    hi = n - (overlap - overlap // 2) * scale if interior_end else n
    weights[:lo] = 0
    weights[hi:] = 0
    return weights


def tiled_forward(model: nn.Module | Forward, lr: Tensor, tile: int, overlap: int, scale: int,
                  blend: str = "uniform") -> Tensor:
    """SR output of ``model`` on ``lr`` (B x C x H x W) computed tile by tile; see the module doc.

    ``model`` is any callable mapping a B x C x h x w tensor to B x C' x sh x sw; it is called as
    is (no ``no_grad``, no mode change: the caller decides). Returns B x C' x sH x sW in the
    output dtype, on ``lr``'s device.
    """
    check_tile_args(tile, overlap, scale, blend)
    if not isinstance(lr, Tensor) or lr.dim() != 4:
        raise ValueError(f"tiled_forward expects a B x C x H x W tensor, got "
                         f"{tuple(lr.shape) if isinstance(lr, Tensor) else type(lr).__name__}")
    height, width = lr.shape[-2:]
    if height < 1 or width < 1:
        raise ValueError(f"empty input of shape {tuple(lr.shape)}")
    rows, cols = tile_starts(height, tile, overlap), tile_starts(width, tile, overlap)
    if len(rows) == 1 and len(cols) == 1:
        return _checked(model(lr), lr, scale)
    th, tw = min(tile, height), min(tile, width)
    out = weight = None
    for top in rows:
        for left in cols:
            part = _checked(model(lr[..., top:top + th, left:left + tw]), lr[..., :th, :tw], scale)
            if out is None:
                out = part.new_zeros((*part.shape[:2], height * scale, width * scale))
                weight = part.new_zeros((height * scale, width * scale))
            wy = _profile(top, th, height, overlap, scale, blend, part.device, part.dtype)
            wx = _profile(left, tw, width, overlap, scale, blend, part.device, part.dtype)
            w = wy[:, None] * wx[None, :]
            ys, xs = slice(top * scale, (top + th) * scale), slice(left * scale, (left + tw) * scale)
            out[..., ys, xs] += part * w
            weight[ys, xs] += w
    if bool((weight <= 0).any()):  # cannot happen with the grids above; guard the invariant
        raise RuntimeError("tiled_forward: some output pixels received no weight")
    return out / weight


def _checked(out: Tensor, lr: Tensor, scale: int) -> Tensor:
    expected = (lr.shape[0], lr.shape[-2] * scale, lr.shape[-1] * scale)
    if out.dim() != 4 or (out.shape[0], *out.shape[-2:]) != expected:
        raise ValueError(f"model output {tuple(out.shape)} for an input of {tuple(lr.shape)} is "
                         f"not x{scale} (expected batch {expected[0]}, {expected[1]}x{expected[2]});"
                         f" is the scale right?")
    return out


__all__ = ["BLEND_MODES", "check_tile_args", "check_tile_fits", "model_min_tile", "tile_starts",
           "tiled_forward"]
