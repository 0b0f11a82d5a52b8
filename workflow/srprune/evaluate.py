"""Scoring super-resolution on a data set, BasicSR conventions (see :mod:`srprune.metrics`).

An *upscaler* maps an LR uint8 HxWx3 image to an SR uint8 image: a model (output clamped to
[0, 1] and rounded to uint8, as BasicSR's ``tensor2img``) or the bicubic baseline (MATLAB
bicubic upsampling of the LR image).

Options of ``srprune evaluate`` beyond the scores (all off by default, and then the JSON is
exactly as before): tiled inference (``tile``, ``tile_overlap``, ``tile_blend``; see
:mod:`srprune.tiling`), and :func:`evaluate_many` for several data sets in one JSON.
:func:`srprune.cli.add_evaluate_options` and :func:`srprune.cli.evaluate_options` are the
command-line side.
Evaluation times nothing: latency is measured side by side by ``srprune time-models``
(:mod:`srprune.latency`).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .data import Pair, check_min_side, load_pairs, pair_names, to_tensor
from .device import pick_device
from .fileio import check_output_path, save_png
from .imresize import imresize
from .metrics import SSIM_WINDOW, psnr_y, ssim_y, to_uint8
from .models import scale_of
from .progress import progress_bar
from .tiling import check_tile_args, check_tile_fits, model_min_tile, tiled_forward

log = logging.getLogger(__name__)

Upscaler = Callable[[np.ndarray], np.ndarray]


def model_upscaler(model: nn.Module, device: torch.device | str = "cpu",
                   quantize: bool = True, tile: int | None = None, tile_overlap: int = 8,
                   tile_blend: str = "uniform", scale: int | None = None) -> Upscaler:
    """Run ``model`` without gradients; output clamped to [0, 1] and, if ``quantize``, uint8.

    With ``tile`` the model runs tile by tile (:func:`srprune.tiling.tiled_forward`; ``scale``
    defaults to the model's declared ``scale``); a tile too small for the model is refused
    (:func:`srprune.tiling.check_tile_fits`).
    """
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    if tile is not None:
        scale = scale_of(model) if scale is None else scale
        check_tile_args(tile, tile_overlap, scale, tile_blend)
        check_tile_fits(tile, tile_overlap, model_min_tile(model))
        forward = partial(tiled_forward, model, tile=tile, overlap=tile_overlap, scale=scale,
                          blend=tile_blend)

    def upscale(lr: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = forward(to_tensor(lr).to(device)).cpu()
        bad = int((~torch.isfinite(out)).sum())
        if bad:
            log.warning("the model output holds %d non-finite values (NaN or inf) of %d; the "
                        "scores of this image are not meaningful", bad, out.numel())
        out = out.clamp(0, 1)
        return to_uint8(out) if quantize else out[0].permute(1, 2, 0).double().numpy()
    return upscale


@dataclass(frozen=True)
class ImageSink:
    """Where :func:`score` writes SR outputs: ``<folder>/<name>_<suffix>.png`` (BasicSR naming)."""

    folder: Path
    suffix: str

    def __post_init__(self) -> None:
        if not self.suffix or any(c in self.suffix for c in "/\\"):
            raise ValueError(f"--image-suffix must be a non-empty name without '/', "
                             f"got {self.suffix!r}")

    def path(self, name: str) -> Path:
        """The PNG file of image ``name``."""
        return self.folder / f"{name}_{self.suffix}.png"

    def save(self, name: str, sr: np.ndarray) -> None:
        """Write one uint8 SR output (atomically)."""
        save_png(sr, self.path(name))

    def check(self, names: Iterable[str]) -> None:
        """Refuse, before any work, a folder or image file that cannot be written."""
        check_output_path(self.folder, folder=True)
        taken = [str(self.path(name)) for name in names if self.path(name).is_dir()]
        if taken:
            raise ValueError(f"--save-images: {', '.join(taken[:3])} exist as folders, where the "
                             f"SR images go")

    def record(self) -> dict[str, Any]:
        """What the evaluation JSON says about the saved images."""
        return {"dir": str(self.folder), "suffix": self.suffix,
                "files": f"<name>_{self.suffix}.png",
                "content": "the whole uint8 SR output that was scored; the scores ignore "
                           "crop_border pixels on every side"}


def image_sink(save_images: str | Path | None, suffix: str | None, model: str,
               quantize: bool, pairs: Sequence[Pair]) -> ImageSink | None:
    """The :class:`ImageSink` of ``--save-images`` (suffix default: model file stem or bicubic),
    checked for the images of ``pairs``."""
    if save_images is None:
        return None
    if not quantize:
        raise ValueError("--save-images writes the uint8 images that are scored; it cannot go "
                         "with --float-output")
    sink = ImageSink(Path(save_images), suffix or Path(model).stem)
    sink.check(pair_names(pairs))
    return sink


def bicubic_upscaler(scale: int) -> Upscaler:
    """The standard baseline: MATLAB-compatible bicubic upsampling of the LR image."""
    return lambda lr: imresize(lr, scale)


def check_scorable(pairs: Sequence[Pair], scale: int) -> None:
    """Refuse, before any image is scored, images too small for the ``scale``-pixel border crop
    and SSIM's window, naming their files."""
    check_min_side(pairs, 2 * scale + SSIM_WINDOW,
                   f"x{scale} scoring (a {scale}-pixel border cropped, then SSIM's "
                   f"{SSIM_WINDOW}x{SSIM_WINDOW} window)")


def score(upscaler: Upscaler, pairs: Iterable[Pair], scale: int, progress: bool = False,
          ssim: bool = True, images: ImageSink | None = None) -> dict[str, Any]:
    """Mean and per-image Y-channel PSNR/SSIM with ``crop_border = scale``.

    With ``images`` every SR output is also written as ``<dir>/<name>_<suffix>.png``: the whole
    image that was scored (uint8, before the border crop that scoring applies).
    """
    per_image = []
    items = progress_bar(pairs, desc="evaluate", unit="img", disable=not progress, leave=False)
    for name, lr, hr in items:
        sr = upscaler(lr)
        if sr.shape != hr.shape:
            raise ValueError(f"{name}: SR output {sr.shape} does not match HR {hr.shape}")
        if images is not None:
            images.save(name, sr)
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
                progress: bool = False, quantize: bool = True, tile: int | None = None,
                tile_overlap: int = 8, tile_blend: str = "uniform",
                images: ImageSink | None = None) -> dict[str, Any]:
    """:func:`score` for a model, restoring its train/eval mode afterwards."""
    training = model.training
    model.eval()
    device = next(model.parameters()).device
    upscaler = model_upscaler(model, device, quantize, tile, tile_overlap, tile_blend, scale)
    try:
        return score(upscaler, pairs, scale, progress=progress, ssim=ssim, images=images)
    finally:
        model.train(training)


METRIC = "Y channel (BT.601), BasicSR conventions"
DATASET_KEYS = ("hr", "lr", "filename_tmpl")


def _tile_options(tile: int | None, tile_overlap: int, tile_blend: str,
                  scale: int) -> dict[str, Any] | None:
    """The JSON record of the tiling options (None when off); checks them."""
    if tile is None:
        return None
    check_tile_args(tile, tile_overlap, scale, tile_blend)
    return {"tile": tile, "overlap": tile_overlap, "blend": tile_blend}


def load_net(model: str, scale: int, device: str,
             model_config: dict[str, Any] | None = None) -> nn.Module:
    """A checkpoint loaded on ``device`` (``auto`` picks one), refused unless it is x``scale``."""
    from .checkpoint import load_model

    net = load_model(model, **(model_config or {})).to(pick_device(device))
    if scale_of(net) != scale:
        raise ValueError(f"{model} is an x{scale_of(net)} model but --scale is {scale}")
    return net


def _extras(net: nn.Module | None, scale: int, tiling: dict[str, Any] | None) -> dict[str, Any]:
    """Params/MACs, then the optional ``tile`` entry; ``net`` None is the bicubic baseline."""
    from .complexity import complexity_report

    extras: dict[str, Any] = {}
    if net is None:
        extras.update({"params": 0, "params_nonzero": 0, "macs_thop": None, "macs_full": None})
        if tiling is not None:
            log.info("bicubic baseline: --tile does not apply, the images are upscaled whole")
    else:
        cx = complexity_report(net.cpu(), scale=scale)
        extras.update({"params": cx["params_total"], "params_nonzero": cx["params_nonzero"],
                       "macs_thop": cx["macs_thop"], "macs_full": cx["macs_full"],
                       "macs_lr_size": cx["lr_size"], "macs_per_module": cx["per_module"]})
    if tiling is not None:
        extras["tile"] = tiling
    return extras


def evaluate_spec(model: str, hr: str, scale: int, lr: str | None = None,
                  filename_tmpl: str = "{}", quantize: bool = True, device: str = "cpu",
                  model_config: dict[str, Any] | None = None,
                  progress: bool = True, tile: int | None = None, tile_overlap: int = 8,
                  tile_blend: str = "uniform", save_images: str | None = None,
                  image_suffix: str | None = None) -> dict[str, Any]:
    """``srprune evaluate``: scores plus params and MACs of a checkpoint, or of ``bicubic``.

    Optional, off by default (the JSON then has exactly the keys it always had):

    * ``tile`` (LR pixels), ``tile_overlap``, ``tile_blend``: run the model tile by tile
      (:func:`srprune.tiling.tiled_forward`); adds ``"tile": {"tile", "overlap", "blend"}``.
      Ignored for ``bicubic``.
    * ``save_images`` (a folder): every SR output as ``<name>_<image_suffix>.png`` (see
      :class:`ImageSink`); adds ``"images"``.
    """
    tiling = _tile_options(tile, tile_overlap, tile_blend, scale)
    pairs = load_pairs(hr, scale, lr, filename_tmpl)
    check_scorable(pairs, scale)
    sink = image_sink(save_images, image_suffix, model, quantize, pairs)
    result: dict[str, Any] = {"model": model, "hr": str(hr), "lr": lr, "scale": scale,
                              "quantized_uint8": quantize, "crop_border": scale,
                              "metric": METRIC}
    if sink is not None:
        result["images"] = sink.record()
    if model == "bicubic":
        net = None
        scores = score(bicubic_upscaler(scale), pairs, scale, progress=progress, images=sink)
    else:
        net = load_net(model, scale, device, model_config)
        scores = score_model(net, pairs, scale, progress=progress, quantize=quantize,
                             images=sink, **_tile_kwargs(tiling))
    result.update(_extras(net, scale, tiling))
    return {**result, **scores}


def _tile_kwargs(tiling: dict[str, Any] | None) -> dict[str, Any]:
    if tiling is None:
        return {}
    return {"tile": tiling["tile"], "tile_overlap": tiling["overlap"], "tile_blend": tiling["blend"]}


def _dataset_spec(name: str, spec: Mapping[str, Any] | str) -> dict[str, Any]:
    """``{"hr", "lr", "filename_tmpl"}`` of one entry of :func:`evaluate_many`'s ``datasets``."""
    if isinstance(spec, (str, Path)):
        spec = {"hr": str(spec)}
    if not isinstance(spec, Mapping):
        raise ValueError(f"data set {name!r}: expected a mapping with 'hr' (and optionally 'lr', "
                         f"'filename_tmpl'), got {type(spec).__name__}")
    unknown = sorted(set(spec) - set(DATASET_KEYS))
    if unknown:
        raise ValueError(f"data set {name!r}: unknown keys {unknown}; allowed: {list(DATASET_KEYS)}")
    if not spec.get("hr"):
        raise ValueError(f"data set {name!r}: 'hr' (HR folder or embedded:<split>) is required")
    lr = spec.get("lr")
    return {"hr": str(spec["hr"]), "lr": None if lr is None else str(lr),
            "filename_tmpl": spec.get("filename_tmpl") or "{}"}


def evaluate_many(model: str, datasets: Mapping[str, Mapping[str, Any] | str], scale: int,
                  quantize: bool = True, device: str = "cpu",
                  model_config: dict[str, Any] | None = None, progress: bool = True,
                  tile: int | None = None, tile_overlap: int = 8, tile_blend: str = "uniform",
                  save_images: str | None = None, image_suffix: str | None = None
                  ) -> dict[str, Any]:
    """Score one model (a checkpoint, or ``bicubic``) on several data sets; the model is loaded once.

    ``datasets`` maps a name to ``{"hr": ..., "lr": ... (optional), "filename_tmpl": ...
    (optional)}`` (a bare string is taken as ``hr``); all data sets are opened before any
    scoring, so a missing folder fails fast. The result holds the model-level entries once
    (``model``, ``scale``, ``quantized_uint8``, ``crop_border``, ``metric``, ``params``,
    ``params_nonzero``, ``macs_thop``, ``macs_full``, ``macs_lr_size``, ``macs_per_module``
    and, when asked for, ``tile``, as in :func:`evaluate_spec`)
    and ``datasets``: ``{name: {"hr", "lr", "filename_tmpl", "psnr", "ssim", "per_image"}}``
    in the given order. With ``save_images`` the SR outputs of data set ``name`` go to
    ``<save_images>/<name>/`` (each data set's entry then has ``images``).
    """
    if not datasets:
        raise ValueError("evaluate_many needs at least one data set")
    specs = {str(name): _dataset_spec(str(name), spec) for name, spec in datasets.items()}
    tiling = _tile_options(tile, tile_overlap, tile_blend, scale)
    pairs = {name: load_pairs(s["hr"], scale, s["lr"], s["filename_tmpl"]) for name, s in specs.items()}
    for items in pairs.values():
        check_scorable(items, scale)
    sinks = {name: image_sink(None if save_images is None else Path(save_images) / name,
                              image_suffix, model, quantize, items) for name, items in pairs.items()}
    net = None if model == "bicubic" else load_net(model, scale, device, model_config)
    results: dict[str, Any] = {}
    for name, items in pairs.items():
        sink = sinks[name]
        if net is None:
            scores = score(bicubic_upscaler(scale), items, scale, progress=progress, images=sink)
        else:
            scores = score_model(net, items, scale, progress=progress, quantize=quantize,
                                 images=sink, **_tile_kwargs(tiling))
        results[name] = {**specs[name], **({} if sink is None else {"images": sink.record()}),
                         **scores}
    head = {"model": model, "scale": scale, "quantized_uint8": quantize, "crop_border": scale,
            "metric": METRIC}
    return {**head, **_extras(net, scale, tiling),
            "datasets": results}
