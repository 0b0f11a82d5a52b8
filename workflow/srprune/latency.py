"""Wall-clock latency of one forward pass (batch 1), reported with the conditions it ran under.

:func:`time_callable` times any callable: ``warmup`` untimed calls, then ``runs`` timed ones
(``time.perf_counter``), each bracketed by ``synchronize`` (``torch.cuda.synchronize`` on a GPU,
so queued kernels are inside the measurement). :func:`measure_latency` times a model in eval mode
under ``no_grad`` on a fixed random input (seeded, values in [0, 1)).

The SR field reports latency at the LR input whose output is 1280x720
(:func:`srprune.complexity.reference_lr_size`: x2 640x360, x4 320x180). That is slow on CPU for a
big model, so a smaller ``lr_size`` may be given; the result always states the size it used
(``lr_size``, ``reference_lr_size``, ``is_reference_size``) together with the thread count,
device and torch version, since all of these change the number.
"""
from __future__ import annotations

import platform
import statistics
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .settings import check_int


def _check_counts(warmup: int, runs: int) -> None:
    check_int("warmup", warmup, 0)
    check_int("runs", runs, 1)


def summarize(times_ms: Sequence[float]) -> dict[str, Any]:
    """``median_ms``, ``min_ms``, ``max_ms``, ``mean_ms`` and the raw ``times_ms``."""
    times = [float(t) for t in times_ms]
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "mean_ms": statistics.fmean(times), "times_ms": times}


def time_callable(fn: Callable[[], Any], warmup: int = 2, runs: int = 10,
                  synchronize: Callable[[], None] | None = None) -> dict[str, Any]:
    """Time ``fn()``: ``warmup`` untimed calls, then ``runs`` timed calls; milliseconds.

    Returns :func:`summarize` of the timed calls plus ``runs`` and ``warmup``.
    """
    _check_counts(warmup, runs)
    sync = synchronize or (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return {**summarize(times), "runs": runs, "warmup": warmup}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def device_name(device: torch.device | str) -> str:
    """Human-readable name of ``device`` (GPU model, or the CPU model name)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return _cpu_name()
    return device.type


def _lr_size(lr_size: Any, model: nn.Module, scale: int | None) -> tuple[tuple[int, int], int | None,
                                                                            tuple[int, int] | None]:
    from .complexity import reference_lr_size

    if scale is None:
        scale = getattr(getattr(model, "cfg", None), "upscale", None)
    reference = None if scale is None else reference_lr_size(scale)
    if lr_size is None:
        if reference is None:
            raise ValueError("give lr_size or scale (the model has no cfg.upscale)")
        lr_size = reference
    try:
        h, w = (int(v) for v in lr_size)
    except (TypeError, ValueError):
        raise ValueError(f"lr_size must be (height, width), got {lr_size!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"lr_size must be two positive integers (height, width), got {lr_size!r}")
    return (h, w), scale, reference


def measure_latency(model: nn.Module, lr_size: Sequence[int] | None = None,
                    device: torch.device | str | None = None, warmup: int = 2, runs: int = 10,
                    *, scale: int | None = None, seed: int = 0, tile: int | None = None,
                    tile_overlap: int = 8, tile_blend: str = "uniform") -> dict[str, Any]:
    """Latency of ``model`` on one 1 x 3 x H x W input; a JSON-ready dict.

    ``lr_size`` (H, W) defaults to the reference size of ``scale`` (default ``model.cfg.upscale``).
    ``device`` defaults to the device of the model's parameters; if given, the model is moved
    there (``nn.Module.to`` works in place). The model is put in eval mode for the measurement
    and its mode restored afterwards. With ``tile`` the timed call is
    :func:`srprune.tiling.tiled_forward` (as ``evaluate --tile`` runs the model).

    Keys: ``median_ms``, ``min_ms``, ``max_ms``, ``mean_ms``, ``times_ms``, ``runs``, ``warmup``,
    ``lr_size`` [H, W], ``reference_lr_size`` ([H, W] or None), ``is_reference_size``, ``scale``,
    ``batch`` (1), ``dtype``, ``tile`` (None or {tile, overlap, blend}), ``threads``
    (``torch.get_num_threads()``), ``device``, ``device_name``, ``torch``.
    """
    _check_counts(warmup, runs)
    hw, scale, reference = _lr_size(lr_size, model, scale)
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    dtype = next(model.parameters(), torch.empty(0)).dtype
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(1, 3, *hw, generator=generator).to(device=device, dtype=dtype)
    if tile is not None:
        from .tiling import check_tile_args, tiled_forward

        if scale is None:
            raise ValueError("tiled latency needs the scale (the model has no cfg.upscale)")
        check_tile_args(tile, tile_overlap, scale, tile_blend)

        def forward() -> Any:
            return tiled_forward(model, x, tile, tile_overlap, scale, tile_blend)
    else:
        def forward() -> Any:
            return model(x)

    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            timing = time_callable(forward, warmup=warmup, runs=runs, synchronize=sync)
    finally:
        model.train(training)
    return {**timing, "lr_size": list(hw),
            "reference_lr_size": None if reference is None else list(reference),
            "is_reference_size": reference is not None and hw == tuple(reference),
            "scale": scale, "batch": 1, "dtype": str(dtype).replace("torch.", ""),
            "tile": None if tile is None else {"tile": tile, "overlap": tile_overlap,
                                               "blend": tile_blend},
            "threads": torch.get_num_threads(), "device": str(device),
            "device_name": device_name(device), "torch": torch.__version__}


__all__ = ["device_name", "measure_latency", "summarize", "time_callable"]
