"""The mask-search stages: calibration data, unit scores, masks under a budget, zeroed export.

Artifacts hold plain types and tensors only (``torch.load(..., weights_only=True)`` reads them):

* unit scores (``unit_scores_<method>.pth``): per group the scores (and OPTIN's raw ``md`` and
  ``out`` terms), the unit kinds scored (``units``) and their groups, the method and its
  settings, the calibration crops themselves, and the teacher's checksum, so the scores can be
  recomputed or recombined;
* masks (``<arch>_pruning_masks.pth``): per group a 0/1 mask and its scores, the method, the
  selection and every candidate it measured, the budget, the teacher's, the pruned model's and the
  floor's (every unit removed) full MACs with the whole-model and the prunable-part ratios, the
  calibration settings and the teacher's checksum.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, check_finite, load_finite, read_checkpoint, save_model
from ..fileio import file_sha256, save_torch
from ..models import arch_name, scale_of
from ..models import model_config as config_of
from .adapter import (UNIT_KINDS_DEFAULT, Adapter, UnitGroup, check_unit_kinds,
                      groups_of_kinds, kept_counts, masked)
from .artifacts import check_artifact
from .calibration import Calibration
from .compensate import CompensationSettings, TeacherMemo, compensated_copy
from .importance import OptinSettings
from .methods import ScoringJob
from .methods import method as get_method
from .registry import adapter_for
from .selection import DEFAULT_SELECTION, Selector

log = logging.getLogger(__name__)

def part_groups(groups: list[UnitGroup], part: tuple[int, int] | None) -> list[UnitGroup]:
    """The groups of scoring job ``k`` of ``n`` (blocks ``i`` with ``i % n == k``), or all."""
    if part is None:
        return groups
    k, n = part
    if not 0 <= k < n:
        raise ValueError(f"part must be k/n with 0 <= k < n, got {k}/{n}")
    return [g for g in groups if g.block % n == k]


def score_units(teacher_path: str | Path, method: str, calibration: Calibration,
                settings: OptinSettings, model_config: dict[str, Any] | None = None,
                device: str = "cpu", progress: bool = True,
                part: tuple[int, int] | None = None,
                units: tuple[str, ...] | list[str] | str = UNIT_KINDS_DEFAULT,
                per_image: bool = False,
                compensation: CompensationSettings | None = None) -> dict[str, Any]:
    """Score the units of kinds ``units`` of the teacher with ``method``; returns the artifact.

    ``part = (k, n)`` scores only the blocks of job k of n (for a cluster); :func:`gather_scores`
    joins the n parts into the artifact a single job writes. ``per_image`` (exact OPTIN scorer
    only) also keeps every crop's terms (:func:`.importance.optin_terms`). ``compensation``:
    the refit whose damage ``obs`` predicts (default settings).
    """
    scorer = get_method(method)
    units = check_unit_kinds(units)
    if settings.probes < 1:
        raise ValueError(f"probes must be at least 1, got {settings.probes}")
    model = load_finite(teacher_path, **(model_config or {}))
    adapter = adapter_for(model)
    all_groups = groups_of_kinds(adapter.groups(model), units)
    groups = part_groups(all_groups, part)
    artifact: dict[str, Any] = {
        "kind": "unit_scores", "method": method, "teacher_sha256": file_sha256(teacher_path),
        "teacher": str(teacher_path), "arch": arch_name(model), "model_config": config_of(model),
        "units": list(units), "groups": [asdict(g) for g in all_groups],
        "part": list(part) if part else None,
    }
    job = ScoringJob(adapter, model.to(device), groups, all_groups, calibration, scale_of(model),
                     settings, compensation or CompensationSettings(), device, progress,
                     per_image)
    artifact.update(scorer.score(job))
    check_finite(artifact[scorer.part_key], f"{method} scores")
    return finish_scores(artifact) if part is None else artifact


def finish_scores(artifact: dict[str, Any]) -> dict[str, Any]:
    """The artifact once every group is scored (:meth:`.methods.Importance.finish`)."""
    return get_method(artifact["method"]).finish(artifact)


def gather_scores(paths: list[str | Path]) -> dict[str, Any]:
    """Join the artifacts of scoring jobs 0..n-1 into the one a single job would have written."""
    parts = [read_checkpoint(p) for p in paths]
    first = parts[0]
    same = ("kind", "method", "teacher_sha256", "arch", "model_config", "units", "groups",
            "calibration", "settings", "seed", "compensation")
    for path, other in zip(paths[1:], parts[1:]):
        differ = [k for k in same if other.get(k) != first.get(k)]
        if differ or ("calibration_crops" in first
                      and not torch.equal(other["calibration_crops"], first["calibration_crops"])):
            raise CheckpointError(f"{path} was scored differently from {paths[0]}: "
                                  f"{differ or ['calibration_crops']}")
    whole = get_method(first["method"]).part_key
    keys = {whole, "scores", "curves"} & set(first)
    joined = {key: {name: value for part in parts for name, value in part[key].items()}
              for key in keys}
    expected = [g["name"] for g in first["groups"]]
    values = joined[whole]
    if sorted(values) != sorted(expected) or sum(len(p[whole]) for p in parts) != len(expected):
        raise CheckpointError(f"the parts do not cover every group exactly once: "
                              f"missing {sorted(set(expected) - set(values))}")
    artifact = {**first, **{key: {name: values[name] for name in expected if name in values}
                            for key, values in joined.items()}, "part": None}
    return finish_scores(artifact)


def check_scores_match(scores: dict[str, Any], teacher_path: str | Path) -> None:
    if scores.get("kind") != "unit_scores":
        raise CheckpointError("not a unit-scores artifact (run `srprune score-units` first)")
    if scores.get("part"):
        raise CheckpointError("these are the scores of one scoring job only; join all parts with "
                              "`srprune gather-scores` first")
    if scores["teacher_sha256"] != file_sha256(teacher_path):
        raise CheckpointError(f"the scores were computed for another teacher than {teacher_path} "
                              f"(checksum differs); rescore")


def calibration_crops(scores: dict[str, Any], calibration: Calibration | None,
                      scale: int) -> Tensor:
    """Crops for measuring candidates: ``calibration``'s, else the scores' own, else defaults."""
    if calibration is None and "calibration_crops" in scores:
        return scores["calibration_crops"]
    return (calibration or Calibration()).crops(scale)


@torch.no_grad()
def output_distortion(adapter: Adapter, model: nn.Module, x: Tensor, reference: Tensor,
                      masks: dict[str, Tensor], batch: int = 16) -> float:
    """Mean squared error of the masked model's output against ``reference`` (the teacher's)."""
    with masked(adapter, model, masks):
        total = sum(float((out - ref).pow(2).sum())
                    for out, ref in zip(batched(model, x, batch), reference.split(batch)))
    return total / reference.numel()


def batched(model: nn.Module, x: Tensor, batch: int = 16) -> Iterator[Tensor]:
    """The model's outputs on ``x``, ``batch`` inputs at a time (bounds memory)."""
    return (model(chunk) for chunk in x.split(batch))


@dataclass
class Compensated:
    """Measures candidates after compensating them, keeping every compensated student (the
    winner is written by ``search-masks --compensated-out`` instead of being refitted again)."""

    adapter: Adapter
    teacher: nn.Module
    x: Tensor
    reference: Tensor
    settings: CompensationSettings
    reselect: bool = False
    memo: TeacherMemo = field(default_factory=dict)
    students: dict[bytes, tuple[nn.Module, dict[str, Any]]] = field(default_factory=dict)

    def __call__(self, masks: dict[str, Tensor]) -> tuple[float, dict[str, Tensor]]:
        start = time.perf_counter()
        refit = compensated_copy(self.adapter, self.teacher, masks, self.x, self.settings,
                                 self.reselect, False, self.memo)
        self.students[masks_key(refit.masks)] = (refit.student, {
            "settings": asdict(self.settings), "fit": refit.fit, "reselected": self.reselect,
            "seconds": time.perf_counter() - start})
        distortion = float((refit.output - self.reference).pow(2).mean())
        return distortion, refit.masks


def masks_key(masks: dict[str, Tensor]) -> bytes:
    return b"".join(name.encode() + masks[name].bool().cpu().numpy().tobytes()
                    for name in sorted(masks))


@torch.no_grad()
def search_masks(teacher_path: str | Path, scores_path: str | Path, budget: float,
                 selection: str = DEFAULT_SELECTION, min_keep: int = 0,
                 model_config: dict[str, Any] | None = None,
                 calibration: Calibration | None = None, device: str = "cpu",
                 compensation: CompensationSettings | None = None, steps: int = 0,
                 seed: int = 0, compensated_out: str | Path | None = None) -> dict[str, Any]:
    """Choose masks under ``budget`` from saved unit scores; returns the masks artifact.

    The measured selection runs the teacher with each candidate's masks on the calibration crops
    and keeps the candidate of smallest output error (:mod:`.selection`; ``steps`` local moves
    of the per-module weights after the head-weight sweep, drawn with ``seed``); the compensated
    selection measures each candidate after compensating it (``compensation``, fitted on the
    same crops), as the compensate stage will, and for a method that ``reselects`` (obs) the
    compensation also chooses each module's units. ``compensated_out``: write the winner's
    compensated model there (compensated selection only).
    """
    if compensated_out is not None and selection != "compensated":
        raise ValueError("compensated_out needs the compensated selection")
    scores = read_checkpoint(scores_path)
    check_scores_match(scores, teacher_path)
    model = load_finite(teacher_path, **(model_config or {})).to(device).eval()
    adapter = adapter_for(model)
    check_artifact(adapter.groups(model), scores, scores["scores"], scores_path)
    groups = scored_groups(adapter, model, scores)
    lr_size = adapter.reference_lr_size(model)
    scorer = get_method(scores["method"])
    selector = Selector(groups, scores["scores"], lambda kept: adapter.macs(model, kept, lr_size),
                        min_keep, distortion_scores=scorer.distortion, curves=scores.get("curves"))
    measure = None
    if selection != "knapsack":
        x = calibration_crops(scores, calibration, scale_of(model)).to(device)
        reference = torch.cat(list(batched(model, x)))
        check_finite({"output": reference}, f"{teacher_path} on the calibration crops")
        measure = lambda masks: output_distortion(adapter, model, x, reference, masks)  # noqa: E731
        if selection == "compensated":
            measure = Compensated(adapter, model, x, reference,
                                  compensation or CompensationSettings(), scorer.reselects)
    start = time.perf_counter()
    chosen, candidates = selector.select(budget, selection, measure, steps, seed)
    seconds = time.perf_counter() - start
    adapter.check_masks(model, chosen.masks)
    total, floor, pruned = selector.total, selector.floor, chosen.macs
    log.info("kept %d of %d units; full MACs %.4f of the teacher's, %.4f of the prunable part "
             "(budget %s; %d candidates, head weight %g, %.0f s)",
             sum(kept_counts(chosen.masks).values()), sum(g.count for g in groups),
             pruned / total, (pruned - floor) / (total - floor), budget, len(candidates),
             chosen.alpha, seconds)
    artifact = {
        "kind": "pruning_masks", "masks": chosen.masks,
        "scores": {g.name: scores["scores"][g.name] for g in groups},
        "method": scores["method"], "units": scores.get("units", list(UNIT_KINDS_DEFAULT)),
        "selection": selection, "mac_constraint": budget,
        "selection_compensation": asdict(compensation or CompensationSettings())
        if selection == "compensated" else None,
        "reselected": selection == "compensated" and scorer.reselects,
        "search_steps": steps, "search_seed": seed, "search_seconds": seconds,
        "min_keep": min_keep, "macs_teacher": total, "macs_pruned": pruned, "macs_floor": floor,
        "achieved_mac_ratio": pruned / total,
        "prunable_mac_ratio": (pruned - floor) / (total - floor) if total > floor else 1.0,
        "macs_lr_size": list(lr_size), "kept": kept_counts(chosen.masks),
        "candidates": [c.summary() for c in candidates], "chosen_alpha": chosen.alpha,
        "chosen_weights": chosen.weights,
        "calibration": scores.get("calibration"), "optin_settings": scores.get("settings"),
        "teacher_sha256": scores["teacher_sha256"], "arch": scores["arch"],
        "model_config": scores["model_config"], "groups": scores["groups"],
    }
    if compensated_out is not None:
        student, record = measure.students[masks_key(chosen.masks)]
        save_model(student.cpu(), compensated_out, {
            **zeroed_meta(artifact, adapter, model), "stage": "compensated",
            "compensation": {**record, "teacher": str(teacher_path),
                             "calibration": asdict(calibration) if calibration
                             else scores.get("calibration"),
                             "source": "search-masks (compensated selection)"}})
    return artifact


def scored_groups(adapter: Adapter, model: nn.Module, scores: dict[str, Any]) -> list[UnitGroup]:
    """The model's groups that the scores artifact scored (as recorded in it), in order."""
    groups = [g for g in adapter.groups(model) if g.name in scores["scores"]]
    recorded = [g["name"] for g in scores.get("groups", [])]
    if recorded and [g.name for g in groups] != recorded:
        raise CheckpointError(f"the scores name groups {recorded[:4]}... that do not match the "
                              f"teacher's; rescore")
    return groups


def export_zeroed(teacher_path: str | Path, masks_path: str | Path, out: str | Path,
                  model_config: dict[str, Any] | None = None) -> nn.Module:
    """Write the teacher with every masked unit's weights set to zero (self-describing)."""
    artifact = read_checkpoint(masks_path)
    if artifact.get("kind") != "pruning_masks":
        raise CheckpointError(f"{masks_path} is not a masks artifact (run `srprune search-masks`)")
    if artifact["teacher_sha256"] != file_sha256(teacher_path):
        raise CheckpointError(f"{masks_path} was made for another teacher than {teacher_path}")
    model = load_finite(teacher_path, **(model_config or {}))
    adapter = adapter_for(model)
    check_artifact(adapter.groups(model), artifact, artifact["masks"], masks_path)
    adapter.check_masks(model, artifact["masks"])
    adapter.zero_units(model, artifact["masks"])
    save_model(model, out, zeroed_meta(artifact, adapter, model))
    return model


def zeroed_meta(artifact: dict[str, Any], adapter: Adapter, model: nn.Module) -> dict[str, Any]:
    """The meta of the teacher zeroed by a masks artifact (export-zeroed's checkpoint)."""
    return {"stage": "zeroed", "masks": artifact["masks"], "method": artifact["method"],
            "groups": artifact.get("groups") or [asdict(g) for g in groups_of_kinds(
                adapter.groups(model), artifact.get("units") or UNIT_KINDS_DEFAULT)],
            "units": artifact.get("units") or list(UNIT_KINDS_DEFAULT),
            "mac_constraint": artifact["mac_constraint"],
            "achieved_mac_ratio": artifact["achieved_mac_ratio"],
            "teacher_sha256": artifact["teacher_sha256"]}


def save_artifact(artifact: dict[str, Any], path: str | Path) -> None:
    save_torch(artifact, path)
