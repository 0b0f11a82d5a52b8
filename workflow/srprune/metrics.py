"""PSNR and SSIM on the Y channel, following BasicSR's conventions.

* Images are HxWx3 RGB, either uint8 or float in [0, 1] (float input is used as is, not
  rounded). An HxW array is grayscale and is treated as R = G = B.
* Y is BT.601 luma on the [0, 255] scale: ``16 + 65.481 R + 128.553 G + 24.966 B`` with
  R, G, B in [0, 1].
* ``crop_border`` pixels are removed from every side before scoring.
* PSNR uses a peak of 255. SSIM uses an 11x11 Gaussian window (sigma 1.5, the outer product
  of a 1-D kernel), C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2 and only the 'valid' region
  (5 pixels dropped from each side of the filtered maps), as BasicSR's ``_ssim``.
* All arithmetic is float64.

SR outputs ARE rounded to uint8 before scoring: use :func:`to_uint8` (clamp to [0, 1],
multiply by 255, round), which is BasicSR's ``tensor2img`` convention.
"""

from __future__ import annotations

import numpy as np
import torch

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
_C1 = (0.01 * 255) ** 2
_C2 = (0.03 * 255) ** 2


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """Quantise a float image in [0, 1] to uint8 HxWx3 (or HxW) as BasicSR's ``tensor2img``.

    A tensor may be 1x3xHxW, 3xHxW or HxW (channels-first); an array must already be
    HxWx3 or HxW.
    """
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu().float()
        if tensor.ndim == 4:
            if tensor.shape[0] != 1:
                raise ValueError(f"to_uint8 expects a batch of one image, got shape {tuple(tensor.shape)}")
            tensor = tensor[0]
        if tensor.ndim == 3:
            tensor = tensor.permute(1, 2, 0)
        return (tensor.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    return (np.clip(image, 0, 1) * 255.0).round().astype(np.uint8)


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BT.601 Y in [16, 235] (float64) from float RGB in [0, 1] (HxWx3, or HxW as gray)."""
    img = np.asarray(img, dtype=np.float64)
    if img.ndim == 2:
        return 16.0 + (65.481 + 128.553 + 24.966) * img
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"rgb_to_y expects an HxWx3 or HxW image, got shape {img.shape}")
    return 16.0 + img @ np.array([65.481, 128.553, 24.966])


def _as_unit_float(img: np.ndarray) -> np.ndarray:
    """uint8 -> [0, 1] float64; float images are taken to be in [0, 1] already."""
    img = np.asarray(img)
    if img.dtype == np.uint8:
        return img.astype(np.float64) / 255.0
    if np.issubdtype(img.dtype, np.floating):
        return img.astype(np.float64)
    raise TypeError(f"expected a uint8 or float image, got dtype {img.dtype}")


def _cropped_y_pair(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, convert both images to Y and crop ``crop_border`` from every side."""
    if np.shape(sr) != np.shape(hr):
        raise ValueError(f"image shapes differ: sr {np.shape(sr)} vs hr {np.shape(hr)}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    y_sr = rgb_to_y(_as_unit_float(sr))
    y_hr = rgb_to_y(_as_unit_float(hr))
    if crop_border:
        y_sr = y_sr[crop_border:-crop_border, crop_border:-crop_border]
        y_hr = y_hr[crop_border:-crop_border, crop_border:-crop_border]
    return y_sr, y_hr


def psnr_y(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """PSNR (dB, peak 255) on the Y channel after cropping; ``inf`` for identical images."""
    y_sr, y_hr = _cropped_y_pair(sr, hr, crop_border)
    if y_sr.size == 0:
        raise ValueError(f"image of shape {np.shape(sr)} is empty after cropping {crop_border} pixels")
    mse = np.mean((y_sr - y_hr) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def _gaussian_kernel() -> np.ndarray:
    """The normalised 1-D Gaussian of ``cv2.getGaussianKernel(11, 1.5)``."""
    offsets = np.arange(SSIM_WINDOW, dtype=np.float64) - SSIM_WINDOW // 2
    kernel = np.exp(-(offsets**2) / (2 * SSIM_SIGMA**2))
    return kernel / kernel.sum()


def _filter_valid(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate with ``outer(kernel, kernel)`` keeping only fully overlapping positions."""
    rows = np.lib.stride_tricks.sliding_window_view(img, kernel.size, axis=0) @ kernel
    return np.lib.stride_tricks.sliding_window_view(rows, kernel.size, axis=1) @ kernel


def _ssim_map_mean(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two single-channel float64 images (BasicSR ``_ssim``)."""
    kernel = _gaussian_kernel()
    mu_a, mu_b = _filter_valid(a, kernel), _filter_valid(b, kernel)
    var_a = _filter_valid(a * a, kernel) - mu_a**2
    var_b = _filter_valid(b * b, kernel) - mu_b**2
    cov = _filter_valid(a * b, kernel) - mu_a * mu_b
    numerator = (2 * mu_a * mu_b + _C1) * (2 * cov + _C2)
    denominator = (mu_a**2 + mu_b**2 + _C1) * (var_a + var_b + _C2)
    return float(np.mean(numerator / denominator))


def ssim_y(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """SSIM on the Y channel after cropping (11x11 Gaussian window, sigma 1.5, valid region)."""
    y_sr, y_hr = _cropped_y_pair(sr, hr, crop_border)
    if min(y_sr.shape) < SSIM_WINDOW:
        height, width = np.shape(hr)[:2]
        raise ValueError(
            f"image of size {height}x{width} is too small for SSIM with crop_border={crop_border}: "
            f"both sides must be at least {2 * crop_border + SSIM_WINDOW} pixels"
        )
    return _ssim_map_mean(y_sr, y_hr)
