"""Choosing the device a command runs on (``--device`` / ``device:`` settings)."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def parse_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when present) as a usable device."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available here (use cpu or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA devices")
    return device


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes the first CUDA GPU when one is present, else the CPU; logs the choice."""
    device = parse_device(str(name))
    log.info("using device %s%s", device,
             f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    return device
