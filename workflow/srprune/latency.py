"""Side-by-side latency: the teacher and its pruned models timed in one process, in rounds.

Timing models one job at a time, while a scheduler runs other jobs beside them, measures the
load of the moment more than the model. Here every entry is a :class:`Runner` (a label, a
backend and ``fn(x)``, one forward pass on the input ``x``), and :func:`interleaved_rounds` calls
them in turn on the same input: ``warmup`` untimed rounds, then ``rounds`` timed ones, each
round calling every runner once in the given order (teacher, A, B, ..., repeated). A load
change then hits the models of a round alike, so the speed-up of a model is the median over
rounds of the reference's time over its own in the same round (:func:`compare_runners`).

Other backends plug in as runners: anything that maps the input tensor to an output (an ONNX
Runtime session wrapped in a function, say) with its own ``backend`` name; each JSON row names
its label and backend.

:func:`time_models` is ``srprune time-models``: it loads the teacher and the given checkpoints,
sets the thread count, times them at one LR input size (batch 1, seeded uniform [0, 1) input)
and returns a JSON-ready record with the machine it ran on (:func:`machine_facts`).
"""
from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .models import scale_of
from .settings import check_int

REFERENCE = "teacher"


@dataclass(frozen=True)
class Runner:
    """One timed entry: ``fn(x)`` runs one forward pass on ``x``; ``info`` goes into its row."""

    label: str
    fn: Callable[[torch.Tensor], Any]
    backend: str = "pytorch"
    info: Mapping[str, Any] = field(default_factory=dict)


def pytorch_runner(label: str, model: nn.Module, info: Mapping[str, Any] | None = None) -> Runner:
    """A runner calling ``model`` in eval mode without gradients."""
    model.eval()

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return Runner(label, forward, "pytorch", dict(info or {}))


def _check_runners(runners: Sequence[Runner]) -> None:
    if not runners:
        raise ValueError("nothing to time: give at least one runner")
    keys = [(r.label, r.backend) for r in runners]
    repeated = sorted({f"{label} ({backend})" for label, backend in keys
                       if keys.count((label, backend)) > 1})
    if repeated:
        raise ValueError("each (label, backend) must be timed once; repeated: "
                         + ", ".join(repeated))


def interleaved_rounds(runners: Sequence[Runner], x: torch.Tensor, rounds: int, warmup: int = 1,
                       synchronize: Callable[[], None] | None = None) -> list[list[float]]:
    """Milliseconds per call of each runner (in ``runners`` order), one sample per timed round.

    ``warmup`` untimed rounds come first; ``synchronize`` (e.g. ``torch.cuda.synchronize``)
    runs after every call, inside its time. The garbage collector is paused while timing.
    """
    _check_runners(runners)
    check_int("rounds", rounds, 1)
    check_int("warmup", warmup, 0)
    sync = synchronize or (lambda: None)
    samples: list[list[float]] = [[] for _ in runners]
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for index in range(warmup + rounds):
            for runner, times in zip(runners, samples):
                start = time.perf_counter()
                runner.fn(x)
                sync()
                if index >= warmup:
                    times.append((time.perf_counter() - start) * 1e3)
    finally:
        if was_enabled:
            gc.enable()
    return samples


def _quartiles(values: Sequence[float]) -> tuple[float, float]:
    if len(values) < 2:
        return values[0], values[0]
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q3


def summarize(times_ms: Sequence[float]) -> dict[str, Any]:
    """``median_ms``, quartiles ``q1_ms``/``q3_ms``, ``min_ms``, ``max_ms`` and ``times_ms``."""
    times = [float(t) for t in times_ms]
    q1, q3 = _quartiles(times)
    return {"median_ms": statistics.median(times), "q1_ms": q1, "q3_ms": q3,
            "min_ms": min(times), "max_ms": max(times), "times_ms": times}


def round_ratios(reference_ms: Sequence[float], times_ms: Sequence[float]) -> list[float]:
    """The reference's time over this entry's, round by round."""
    if len(reference_ms) != len(times_ms):
        raise ValueError(f"{len(reference_ms)} reference rounds against {len(times_ms)}")
    return [ref / own for ref, own in zip(reference_ms, times_ms)]


def compare_runners(runners: Sequence[Runner], x: torch.Tensor, rounds: int, warmup: int = 1,
                    synchronize: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """One row per runner: label, backend, its ``info``, :func:`summarize` of its samples, and
    ``speedup`` (median of per-round ratios to the first runner) with quartiles
    ``speedup_q1``/``speedup_q3``."""
    samples = interleaved_rounds(runners, x, rounds, warmup, synchronize)
    rows = []
    for runner, times in zip(runners, samples):
        ratios = round_ratios(samples[0], times)
        q1, q3 = _quartiles(ratios)
        rows.append({"label": runner.label, "backend": runner.backend, **runner.info,
                     **summarize(times), "speedup": statistics.median(ratios),
                     "speedup_q1": q1, "speedup_q3": q3})
    return rows


def cpu_name() -> str:
    """The CPU model name (/proc/cpuinfo when present, else ``platform.processor()``)."""
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
    return cpu_name() if device.type == "cpu" else device.type


def machine_facts(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Where a timing ran: CPU model and capability, threads, device, versions, load."""
    return {"cpu_name": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "device": str(device), "device_name": device_name(device),
            "torch": torch.__version__, "python": platform.python_version(),
            "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def _load(path: str, device: torch.device, model_config: Mapping[str, Any] | None) -> nn.Module:
    from .checkpoint import load_model

    return load_model(path, **dict(model_config or {})).to(device).eval()


def _input_size(lr_size: Sequence[int] | None, scale: int) -> tuple[int, int]:
    from .complexity import reference_lr_size

    h, w = reference_lr_size(scale) if lr_size is None else lr_size
    if h < 1 or w < 1:
        raise ValueError(f"lr_size must be two positive integers (height, width), got {lr_size!r}")
    return int(h), int(w)


def _model_runners(teacher: str, models: Mapping[str, str], device: torch.device,
                   model_config: Mapping[str, Any] | None) -> tuple[list[Runner], int]:
    """PyTorch runners of the teacher (first) and ``models``, and their common scale."""
    if REFERENCE in models:
        raise ValueError(f"the label {REFERENCE!r} is the teacher's; name the models otherwise")
    runners, scales = [], {}
    for label, path in {REFERENCE: teacher, **models}.items():
        net = _load(path, device, model_config if label == REFERENCE else None)
        scales[label] = scale_of(net)
        params = sum(p.numel() for p in net.parameters())
        runners.append(pytorch_runner(label, net, {"model": str(path), "params": params}))
    if len(set(scales.values())) > 1:
        raise ValueError(f"the models have different scales: {scales}")
    return runners, scales[REFERENCE]


def onnx_runners(files: Mapping[str, str], threads: int) -> list[Runner]:
    """ONNX Runtime (CPU) runners of ``{label: .onnx file}`` with ``threads`` intra-op threads."""
    from .export import onnx_runner

    return [Runner(label, onnx_runner(path, threads), "onnxruntime", {"model": str(path)})
            for label, path in files.items()]


def time_models(teacher: str, models: Mapping[str, str], *, lr_size: Sequence[int] | None = None,
                rounds: int = 20, warmup: int = 2, threads: int | None = None,
                device: str = "cpu", seed: int = 0,
                model_config: Mapping[str, Any] | None = None,
                onnx: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Time the teacher and ``models`` ({label: checkpoint}) side by side; a JSON-ready dict.

    ``lr_size`` (H, W) defaults to the reference size (output 1280x720). ``threads`` sets
    torch's intra-op threads for the measurement (restored afterwards); ``model_config`` is for
    the teacher only (the pruned checkpoints describe themselves). ``onnx`` ({label: exported
    .onnx file}, CPU only) adds ONNX Runtime runners, with the same threads, to the same rounds
    after the PyTorch ones; their speed-up is still against the PyTorch teacher. Keys: ``reference``
    ("teacher"), ``rounds``, ``warmup``, ``lr_size``, ``scale``, ``batch``, ``seed``,
    ``machine`` (:func:`machine_facts`) and ``models`` (rows of :func:`compare_runners`, the
    teacher first, each with ``model`` and ``params``).
    """
    from .device import pick_device

    if threads is not None:
        check_int("threads", threads, 1)
    dev = pick_device(device)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        runners, scale = _model_runners(teacher, models, dev, model_config)
        if onnx:
            if dev.type != "cpu":
                raise ValueError("ONNX Runtime is timed on the CPU only; time on --device cpu")
            runners += onnx_runners(onnx, torch.get_num_threads())
        hw = _input_size(lr_size, scale)
        x = torch.rand(1, 3, *hw, generator=torch.Generator().manual_seed(seed)).to(dev)
        sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None
        rows = compare_runners(runners, x, rounds, warmup, sync)
        machine = machine_facts(dev)
    finally:
        torch.set_num_threads(previous)
    return {"kind": "latency", "reference": REFERENCE, "rounds": rounds, "warmup": warmup,
            "lr_size": list(hw), "scale": scale, "batch": 1,
            "dtype": str(x.dtype).replace("torch.", ""), "seed": seed,
            "machine": machine, "models": rows}


__all__ = ["REFERENCE", "Runner", "compare_runners", "cpu_name", "device_name",
           "interleaved_rounds", "machine_facts", "onnx_runners", "pytorch_runner", "round_ratios", "summarize",
           "time_models"]
