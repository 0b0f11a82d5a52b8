"""Scoring super-resolution on a data set, BasicSR conventions (see :mod:`srprune.metrics`).

An *upscaler* maps an LR uint8 HxWx3 image to an SR uint8 image: a model (output clamped to
[0, 1] and rounded to uint8, as BasicSR's ``tensor2img``) or the bicubic baseline (MATLAB
bicubic upsampling of the LR image).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .data import SRDataset, embedded_images, modcrop, to_tensor
from .imresize import imresize
from .metrics import psnr_y, ssim_y, to_uint8

Upscaler = Callable[[np.ndarray], np.ndarray]
Pair = tuple[str, np.ndarray, np.ndarray]

EMBEDDED_PREFIX = "embedded:"


def load_pairs(hr: str | Path, scale: int, lr: str | Path | None = None,
               filename_tmpl: str = "{}") -> Sequence[Pair]:
    """``(name, lr, hr)`` uint8 items of a folder pair, or of ``embedded:<split>`` images."""
    if str(hr).startswith(EMBEDDED_PREFIX):
        pairs = []
        for name, img in embedded_images(str(hr)[len(EMBEDDED_PREFIX):]):
            img = modcrop(img, scale)
            pairs.append((name, imresize(img, 1 / scale), img))
        return pairs
    return SRDataset(hr, scale=scale, lr_dir=lr, filename_tmpl=filename_tmpl)


def model_upscaler(model: nn.Module, device: torch.device | str = "cpu",
                   quantize: bool = True) -> Upscaler:
    """Run ``model`` without gradients; output clamped to [0, 1] and, if ``quantize``, uint8."""
    def upscale(lr: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = model(to_tensor(lr).to(device)).clamp(0, 1).cpu()
        return to_uint8(out) if quantize else out[0].permute(1, 2, 0).double().numpy()
    return upscale


def bicubic_upscaler(scale: int) -> Upscaler:
    """The standard baseline: MATLAB-compatible bicubic upsampling of the LR image."""
    return lambda lr: imresize(lr, scale)


def score(upscaler: Upscaler, pairs: Iterable[Pair], scale: int, progress: bool = False,
          ssim: bool = True) -> dict[str, Any]:
    """Mean and per-image Y-channel PSNR/SSIM with ``crop_border = scale``."""
    per_image = []
    items = tqdm(pairs, desc="evaluate", unit="img", disable=not progress, leave=False)
    for name, lr, hr in items:
        sr = upscaler(lr)
        if sr.shape != hr.shape:
            raise ValueError(f"{name}: SR output {sr.shape} does not match HR {hr.shape}")
        row = {"name": name, "psnr": psnr_y(sr, hr, scale)}
        if ssim:
            row["ssim"] = ssim_y(sr, hr, scale)
        per_image.append(row)
    if not per_image:
        raise ValueError("no images to evaluate")
    result = {"psnr": float(np.mean([r["psnr"] for r in per_image])), "per_image": per_image}
    if ssim:
        result["ssim"] = float(np.mean([r["ssim"] for r in per_image]))
    return result


def score_model(model: nn.Module, pairs: Iterable[Pair], scale: int, ssim: bool = True,
                progress: bool = False, quantize: bool = True) -> dict[str, Any]:
    """:func:`score` for a model, restoring its train/eval mode afterwards."""
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        return score(model_upscaler(model, device, quantize), pairs, scale, progress=progress, ssim=ssim)
    finally:
        model.train(training)


def evaluate_spec(model: str, hr: str, scale: int, lr: str | None = None,
                  filename_tmpl: str = "{}", quantize: bool = True, device: str = "cpu",
                  model_config: dict[str, Any] | None = None,
                  progress: bool = True) -> dict[str, Any]:
    """``srprune evaluate``: scores plus params and MACs of a checkpoint, or of ``bicubic``."""
    from .checkpoint import load_model
    from .complexity import complexity_report
    from .train import pick_device

    pairs = load_pairs(hr, scale, lr, filename_tmpl)
    result: dict[str, Any] = {"model": model, "hr": str(hr), "lr": lr, "scale": scale,
                              "quantized_uint8": quantize, "crop_border": scale,
                              "metric": "Y channel (BT.601), BasicSR conventions"}
    if model == "bicubic":
        scores = score(bicubic_upscaler(scale), pairs, scale, progress=progress)
        result.update({"params": 0, "params_nonzero": 0, "macs_thop": None, "macs_full": None})
    else:
        net = load_model(model, **(model_config or {})).to(pick_device(device))
        if net.cfg.upscale != scale:
            raise ValueError(f"{model} is an x{net.cfg.upscale} model but --scale is {scale}")
        scores = score_model(net, pairs, scale, progress=progress, quantize=quantize)
        cx = complexity_report(net.cpu(), scale=scale)
        result.update({"params": cx["params_total"], "params_nonzero": cx["params_nonzero"],
                       "macs_thop": cx["macs_thop"], "macs_full": cx["macs_full"],
                       "macs_lr_size": cx["lr_size"], "macs_per_module": cx["per_module"]})
    return {**result, **scores}
