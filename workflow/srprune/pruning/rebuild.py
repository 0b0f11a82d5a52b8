"""The physical rebuild of a masked checkpoint (``srprune rebuild``)."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from ..checkpoint import load_model, save_model
from .artifacts import masks_of
from .registry import adapter_for


def rebuild(model_path: str | Path, out: str | Path) -> nn.Module:
    """Write the physically smaller model of a masked checkpoint (masks read from its meta)."""
    model = load_model(model_path)
    masks = masks_of(model, model_path)
    small = adapter_for(model).rebuild(model, masks)
    meta = {k: v for k, v in model.checkpoint_meta.items() if k not in ("masks", "groups", "units")}
    save_model(small, out, {**meta, "stage": "rebuilt", "rebuilt_from": str(model_path),
                            "kept": {k: int(v.sum()) for k, v in masks.items()}})
    return small
