"""MATLAB-compatible bicubic ``imresize``.

Reproduces MATLAB's ``imresize(img, scale, 'bicubic')`` (the default), which is how the
low-resolution images of the standard SR benchmarks were made:

* Keys cubic kernel with a = -0.5 and support 4; when downscaling the kernel is stretched by
  ``1 / scale`` (antialiasing), when upscaling it is used as is.
* MATLAB's contribution computation: output pixel ``x`` (1-based) maps to
  ``u = x / scale + 0.5 * (1 - 1 / scale)``; taps ``floor(u - width / 2) + 0..P-1`` with
  ``P = ceil(width) + 2``; weights normalised to sum to one; out-of-range taps mirrored
  symmetrically (edge pixel repeated).
* Two 1-D passes, the dimension with the smaller scale first (rows first on a tie).
* uint8 input is rounded (half away from zero) and clipped to uint8 after *each* pass, as
  MATLAB stores the intermediate image in the input's class. Float input is not rounded.

Output size is ``ceil(H * scale) x ceil(W * scale)``; a product within 1e-9 of an integer is
taken as that integer, so that e.g. ``255 * (1 / 3)`` gives 85 and not 86.
"""

from __future__ import annotations

import math

import numpy as np

_KERNEL_WIDTH = 4.0


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys cubic convolution kernel with a = -0.5."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1) & (ax <= 2))
    return inner + outer


def output_length(length: int, scale: float) -> int:
    """MATLAB's output length ``ceil(length * scale)``, robust to float round-off."""
    exact = length * scale
    nearest = round(exact)
    if abs(exact - nearest) < 1e-9:
        return int(nearest)
    return math.ceil(exact)


def contributions(in_length: int, out_length: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based source indices, both ``(out_length, taps)``, as MATLAB computes them."""
    width = _KERNEL_WIDTH / scale if scale < 1 else _KERNEL_WIDTH
    x = np.arange(1, out_length + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    distance = u[:, None] - indices
    weights = scale * _cubic(scale * distance) if scale < 1 else _cubic(distance)
    weights = weights / weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_length), np.arange(in_length - 1, -1, -1)])
    indices = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_length)]
    used = np.any(weights != 0, axis=0)
    return weights[:, used], indices[:, used]


def _round_uint8(values: np.ndarray) -> np.ndarray:
    """MATLAB's double-to-uint8 conversion: round half away from zero, then saturate."""
    return np.clip(np.floor(values + 0.5), 0, 255).astype(np.uint8)


def _resize_axis(img: np.ndarray, axis: int, out_length: int, scale: float) -> np.ndarray:
    """One 1-D pass along ``axis``; taps are accumulated in order, like MATLAB's mex code."""
    weights, indices = contributions(img.shape[axis], out_length, scale)
    source = np.moveaxis(img, axis, 0).astype(np.float64, copy=False)
    shape = (out_length,) + (1,) * (source.ndim - 1)
    result = np.zeros((out_length,) + source.shape[1:], dtype=np.float64)
    for tap in range(weights.shape[1]):
        result += weights[:, tap].reshape(shape) * source[indices[:, tap]]
    return np.moveaxis(result, 0, axis)


def imresize(img: np.ndarray, scale: float) -> np.ndarray:
    """Resize an HxW or HxWxC image by ``scale`` exactly as MATLAB's bicubic ``imresize``.

    uint8 input gives uint8 output (rounded between and after the passes); float32/float64
    input gives the same float dtype, unrounded and unclipped.
    """
    if img.ndim not in (2, 3):
        raise ValueError(f"imresize expects an HxW or HxWxC array, got shape {img.shape}")
    if scale <= 0:
        raise ValueError(f"imresize scale must be positive, got {scale}")
    is_uint8 = img.dtype == np.uint8
    if not is_uint8 and img.dtype not in (np.float32, np.float64):
        raise TypeError(f"imresize supports uint8, float32 and float64 arrays, got {img.dtype}")
    out = img
    for axis in (0, 1):  # equal scales in both dimensions: MATLAB takes rows first
        out = _resize_axis(out, axis, output_length(img.shape[axis], scale), scale)
        out = _round_uint8(out) if is_uint8 else out
    return out if is_uint8 else out.astype(img.dtype, copy=False)
