"""The mask-search stages: calibration data, unit scores, masks under a budget, zeroed export.

Artifacts hold plain types and tensors only (``torch.load(..., weights_only=True)`` reads them):

* unit scores (``unit_scores_<method>.pth``): per group the scores (and OPTIN's raw ``md`` and
  ``out`` terms), the method and its settings, the calibration crops themselves, and the
  teacher's checksum, so the scores can be recomputed or recombined;
* masks (``catanet_pruning_masks.pth``): per group a 0/1 mask and its scores, the method, the
  selection, the budget, the teacher's and the pruned model's full MACs and their ratio, the
  calibration settings and the teacher's checksum.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, load_model, read_checkpoint, save_model
from ..data import PatchSampler
from ..evaluate import load_pairs
from ..fileio import save_torch
from ..models import arch_name
from .adapter import Adapter, full_kept, kept_counts, unit_costs
from .catanet import CATANetAdapter
from .importance import (METHODS, OptinSettings, combine, magnitude_scores, optin_terms,
                         random_scores)
from .selection import linear_macs, select

log = logging.getLogger(__name__)

ADAPTERS: dict[str, type[Adapter]] = {"catanet": CATANetAdapter}


def adapter_for(model: nn.Module) -> Adapter:
    name = arch_name(model)
    if name not in ADAPTERS:
        raise ValueError(f"no pruning adapter for architecture {name!r}; known: {sorted(ADAPTERS)}")
    return ADAPTERS[name]()


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Calibration:
    """LR calibration crops taken from training images, seeded."""

    hr: str = "embedded:train"
    lr: str | None = None
    filename_tmpl: str = "{}"
    num_crops: int = 32
    crop_size: int = 48
    seed: int = 0

    def crops(self, scale: int) -> Tensor:
        pairs = load_pairs(self.hr, scale, self.lr, self.filename_tmpl)
        sampler = PatchSampler(pairs, scale=scale, crop_size=self.crop_size,
                               batch_size=self.num_crops, seed=self.seed)
        return sampler.sample()[0]


def score_units(teacher_path: str | Path, method: str, calibration: Calibration,
                settings: OptinSettings, model_config: dict[str, Any] | None = None,
                device: str = "cpu", progress: bool = True) -> dict[str, Any]:
    """Score every unit of the teacher with ``method``; returns the scores artifact."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    model = load_model(teacher_path, **(model_config or {}))
    adapter = adapter_for(model)
    artifact: dict[str, Any] = {
        "kind": "unit_scores", "method": method, "teacher_sha256": file_sha256(teacher_path),
        "teacher": str(teacher_path), "arch": arch_name(model), "model_config": model.cfg.to_dict(),
        "groups": [asdict(g) for g in adapter.groups(model)],
    }
    if method == "optin":
        x = calibration.crops(model.cfg.upscale)
        model.to(device)
        terms = optin_terms(adapter, model, x.to(device), settings, progress=progress)
        scores, factor = combine(terms, settings.lam)
        artifact.update(calibration=asdict(calibration), calibration_crops=x, settings=settings.to_dict(),
                        balance_factor=factor, terms=terms)
    elif method == "magnitude":
        scores = magnitude_scores(adapter, model)
    else:
        scores = random_scores(adapter, model, calibration.seed)
        artifact["seed"] = calibration.seed
    artifact["scores"] = scores
    return artifact


def check_scores_match(scores: dict[str, Any], teacher_path: str | Path) -> None:
    if scores.get("kind") != "unit_scores":
        raise CheckpointError("not a unit-scores artifact (run `srprune score-units` first)")
    if scores["teacher_sha256"] != file_sha256(teacher_path):
        raise CheckpointError(f"the scores were computed for another teacher than {teacher_path} "
                              f"(checksum differs); rescore")


def search_masks(teacher_path: str | Path, scores_path: str | Path, budget: float,
                 selection: str = "optin", min_keep: int = 0,
                 model_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Choose masks under ``budget`` from saved unit scores; returns the masks artifact."""
    scores = read_checkpoint(scores_path)
    check_scores_match(scores, teacher_path)
    model = load_model(teacher_path, **(model_config or {}))
    adapter = adapter_for(model)
    groups = adapter.groups(model)
    lr_size = adapter.reference_lr_size(model)
    costs = unit_costs(adapter, model, lr_size)
    total = adapter.macs(model, full_kept(groups), lr_size)
    masks = select(groups, scores["scores"], costs, total, budget, selection, min_keep)
    pruned = adapter.macs(model, kept_counts(masks), lr_size)
    assert pruned <= linear_macs(groups, costs, total, masks) <= budget * total
    log.info("kept %d of %d units; full MACs %.4f of the teacher's (budget %s)",
             sum(kept_counts(masks).values()), sum(g.count for g in groups), pruned / total, budget)
    return {
        "kind": "pruning_masks", "masks": masks, "scores": scores["scores"],
        "method": scores["method"], "selection": selection, "mac_constraint": budget,
        "min_keep": min_keep, "macs_teacher": total, "macs_pruned": pruned,
        "achieved_mac_ratio": pruned / total, "macs_lr_size": list(lr_size),
        "kept": kept_counts(masks), "unit_costs": costs,
        "calibration": scores.get("calibration"), "optin_settings": scores.get("settings"),
        "teacher_sha256": scores["teacher_sha256"], "arch": scores["arch"],
        "model_config": scores["model_config"],
    }


def export_zeroed(teacher_path: str | Path, masks_path: str | Path, out: str | Path,
                  model_config: dict[str, Any] | None = None) -> nn.Module:
    """Write the teacher with every masked unit's weights set to zero (self-describing)."""
    artifact = read_checkpoint(masks_path)
    if artifact.get("kind") != "pruning_masks":
        raise CheckpointError(f"{masks_path} is not a masks artifact (run `srprune search-masks`)")
    if artifact["teacher_sha256"] != file_sha256(teacher_path):
        raise CheckpointError(f"{masks_path} was made for another teacher than {teacher_path}")
    model = load_model(teacher_path, **(model_config or {}))
    adapter_for(model).zero_units(model, artifact["masks"])
    meta = {"stage": "zeroed", "masks": artifact["masks"], "method": artifact["method"],
            "mac_constraint": artifact["mac_constraint"],
            "achieved_mac_ratio": artifact["achieved_mac_ratio"],
            "teacher_sha256": artifact["teacher_sha256"]}
    save_model(model, out, meta)
    return model


def save_artifact(artifact: dict[str, Any], path: str | Path) -> None:
    save_torch(artifact, path)
