"""Importance methods by name: one class per method, registered with :func:`register_method`.

A method scores a teacher's units for the mask search. It says how its numbers are read
(``distortion``: as the damage a unit's removal does, used as they are; otherwise as rankings
within a module only, rescaled to MACs by the selection), whether it gives per-module error
curves (``curves``: the error left at every kept count, and which units), which calibration
crops it scores on (``scoring_crops``: OPTIN's own, smaller crops, ``prune.optin``), and whether
the compensated check chooses units within modules anew (``reselects``). The CLI, the config
schema, the workflow and the comparison take the list of names from :data:`METHODS` (and
``METHODS_ORDER``), so adding a method is one class here.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..progress import progress_bar
from .adapter import Adapter, UnitGroup
from .calibration import Calibration
from .compensate import CompensationSettings, NormalEquations, layer_theta, record, ridge_penalty
from .importance import OptinSettings, combine, optin_terms, random_scores
from .obs import Quadratic, removal_curve, single_errors
from .sketch import hybrid_terms, sketch_terms

log = logging.getLogger(__name__)

SCORERS = {"exact": optin_terms, "sketch": sketch_terms, "hybrid": hybrid_terms}


@dataclass
class ScoringJob:
    """What a method scores: the teacher, its groups (this job's and all), the crops' source."""

    adapter: Adapter
    model: nn.Module
    groups: list[UnitGroup]
    all_groups: list[UnitGroup]
    calibration: Calibration
    scale: int
    optin: OptinSettings
    compensation: CompensationSettings
    device: str = "cpu"
    progress: bool = True
    per_image: bool = False


class Importance(ABC):
    """A way of scoring units; subclasses register with :func:`register_method`."""

    name: ClassVar[str]
    summary: ClassVar[str]
    distortion: ClassVar[bool] = False
    curves: ClassVar[bool] = False
    scoring_crops: ClassVar[bool] = False
    reselects: ClassVar[bool] = False
    part_key: ClassVar[str] = "scores"   # the per-group entry that parallel scoring jobs split

    @abstractmethod
    def score(self, job: ScoringJob) -> dict[str, Any]:
        """Artifact entries of ``job``'s groups (``scores``, and what the method keeps)."""

    def finish(self, artifact: dict[str, Any]) -> dict[str, Any]:
        """The artifact once every group is scored (OPTIN's balance needs all of them)."""
        return artifact


METHOD_CLASSES: dict[str, type[Importance]] = {}


def register_method(cls: type[Importance]) -> type[Importance]:
    """Class decorator: an importance method under ``cls.name``."""
    if cls.name in METHOD_CLASSES:
        raise ValueError(f"an importance method {cls.name!r} is registered twice")
    METHOD_CLASSES[cls.name] = cls
    return cls


def method(name: str) -> Importance:
    if name not in METHOD_CLASSES:
        raise ValueError(f"method must be one of {tuple(METHOD_CLASSES)}, got {name!r}")
    return METHOD_CLASSES[name]()


def _crops(job: ScoringJob) -> Tensor:
    return job.calibration.crops(job.scale).to(job.device)


@register_method
class Obs(Importance):
    """Post-refit damage: each module's error curve after least-squares compensation.

    Heads, neurons and v channels are absorbed by a linear consumer (``proj``, ``fc2``), whose
    refit predicts their damage: heads and neurons get error curves (whole-module options), a
    head group with channel groups inside and its v channels get single-unit errors. q/k
    channels act through the softmax, where no refit predicts the damage: they fall back to
    their weight magnitudes (:func:`softmax_fallback`), and the compensated check, which
    measures every candidate, decides.
    """

    name = "obs"
    summary = ("what the least-squares refit of each module leaves after removing units "
               "(structured OBS, error curve per kept count)")
    distortion = True
    curves = True
    reselects = True

    def score(self, job: ScoringJob) -> dict[str, Any]:
        x = _crops(job)
        parents = {g.parent for g in job.all_groups if g.parent}
        linear = [g for g in job.groups if g.kind != "qk_channel"]
        curved = {g.name for g in linear if g.parent is None and g.name not in parents}
        curves, scores = teacher_curves(job.adapter, job.model, x, linear, job.compensation,
                                        job.progress, curved)
        softmax = [g for g in job.groups if g.kind == "qk_channel"]
        if softmax:
            log.warning("obs: q/k channels act through the softmax, where no refit predicts "
                        "their damage; they are ranked by weight magnitude (scaled to their "
                        "heads' post-refit error) and the compensated check measures every "
                        "candidate")
        for group in softmax:
            scores[group.name] = softmax_fallback(job.adapter, job.model, group,
                                                  scores[group.parent])
        return {"curves": curves, "scores": {g.name: scores[g.name] for g in job.groups},
                "calibration": asdict(job.calibration),
                "calibration_crops": x.cpu(), "compensation": asdict(job.compensation)}


def softmax_fallback(adapter: Adapter, model: nn.Module, group: UnitGroup,
                     head_errors: Tensor) -> Tensor:
    """Scores of q/k channels for obs: their magnitudes, rescaled so that the group's mean is
    its heads' mean post-refit error shared among each head's q/k channels."""
    magnitude = adapter.unit_magnitude(model, group).double()
    share = float(head_errors.double().mean()) / group.per_parent
    mean = float(magnitude.mean())
    return (magnitude * (share / mean) if mean > 0 else torch.full_like(magnitude, share)).float()


@register_method
class Optin(Importance):
    """OPTIN's trajectory score (:mod:`.importance`)."""

    name = "optin"
    summary = "OPTIN trajectory score: feature and output distortion of masking a unit alone"
    distortion = True
    scoring_crops = True
    part_key = "terms"

    def score(self, job: ScoringJob) -> dict[str, Any]:
        if job.optin.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {sorted(SCORERS)}, got {job.optin.scorer!r}")
        if job.per_image and job.optin.scorer != "exact":
            raise ValueError(f"per-image terms need the exact scorer, not {job.optin.scorer!r}")
        x = _crops(job)
        extra = {"per_image": True} if job.per_image else {}
        terms = SCORERS[job.optin.scorer](job.adapter, job.model, x, job.optin,
                                          progress=job.progress, groups=job.groups, **extra)
        return {"calibration": asdict(job.calibration), "calibration_crops": x.cpu(),
                "settings": job.optin.to_dict(), "terms": terms}

    def finish(self, artifact: dict[str, Any]) -> dict[str, Any]:
        scores, factor = combine(artifact["terms"], artifact["settings"]["lam"])
        return {**artifact, "scores": scores, "balance_factor": factor}


@register_method
class Magnitude(Importance):
    """Baseline: L1 norm of each unit's weights."""

    name = "magnitude"
    summary = "baseline: L1 norm of each unit's weights"

    def score(self, job: ScoringJob) -> dict[str, Any]:
        return {"scores": {g.name: job.adapter.unit_magnitude(job.model, g) for g in job.groups}}


@register_method
class Random(Importance):
    """Baseline: seeded uniform random scores (every job draws all, so parts agree)."""

    name = "random"
    summary = "baseline: seeded uniform random scores"

    def score(self, job: ScoringJob) -> dict[str, Any]:
        scores = random_scores(job.adapter, job.model, job.calibration.seed, job.all_groups)
        names = {g.name for g in job.groups}
        return {"seed": job.calibration.seed,
                "scores": {k: v for k, v in scores.items() if k in names}}


METHODS = tuple(METHOD_CLASSES)
DEFAULT_METHOD = "obs"  # validation split of the x4 model: README, "Mask search"


def _consumer_of(adapter: Adapter, model: nn.Module, group: UnitGroup) -> tuple[str, int]:
    """(weight, columns per unit) of the one layer that consumes ``group``'s units."""
    found = [(name, width) for name, axis, width in adapter.slices(model, group)
             if axis == 1 and adapter.consumes(name)]
    if len(found) != 1:
        raise ValueError(f"{group.name}: obs needs exactly one layer consuming its units, the "
                         f"adapter lists {[name for name, _ in found]}")
    return found[0]


@torch.no_grad()
def teacher_quadratics(adapter: Adapter, model: nn.Module, x: Tensor, groups: list[UnitGroup],
                       settings: CompensationSettings, progress: bool = True
                       ) -> dict[str, tuple[Quadratic, int]]:
    """Per group: the refit objective of its consumer on the teacher's own inputs, and the
    columns each unit owns.

    Every consumer's inputs and outputs are recorded in one teacher forward per batch; the
    targets are the teacher's outputs, so the full refit is the teacher's layer itself and
    :func:`.obs.removal_error` of a unit set is the error left after the best refit of the rest.
    """
    model.eval()
    wanted = {g.name: _consumer_of(adapter, model, g) for g in groups}
    layers = {g: adapter.consumer_layer(model, w) for g, (w, _) in wanted.items()}
    equations = {g: NormalEquations(layer.in_features, layer.out_features, layer.bias is not None,
                                    layer.weight.device) for g, layer in layers.items()}
    squares: dict[str, list[dict[str, Tensor]]] = {g: [] for g in layers}
    taps = {f"{g}\0{io}": (layer, io == "y") for g, layer in layers.items() for io in ("x", "y")}
    for batch in progress_bar(list(x.split(settings.batch_size)), desc="obs inputs",
                              unit="batch", disable=not progress):
        seen = record(lambda: model(batch), taps) if taps else {}
        for g in layers:
            inp, out = seen[f"{g}\0x"], seen[f"{g}\0y"]
            equations[g].add(inp, out)
            squares[g].append({"xx": inp.flatten(0, -2).double().pow(2).sum(dim=0)})
    return {g: (Quadratic.ridge(eq.zz, eq.zy, eq.yy, layers[g].in_features,
                                ridge_penalty(settings, squares[g]),
                                layer_theta(layers[g]).double()), wanted[g][1])
            for g, eq in equations.items()}


def teacher_curves(adapter: Adapter, model: nn.Module, x: Tensor, groups: list[UnitGroup],
                   settings: CompensationSettings, progress: bool = True,
                   curved: set[str] | None = None
                   ) -> tuple[dict[str, dict[str, Tensor]], dict[str, Tensor]]:
    """Error curves (:func:`.obs.removal_curve`) of the groups named in ``curved`` (default:
    all) and single-unit errors of every group of ``groups`` on the teacher's own inputs
    (:func:`teacher_quadratics`). Budget-free: one artifact serves every budget."""
    quads = teacher_quadratics(adapter, model, x, groups, settings, progress)
    curves, scores = {}, {}
    for group in progress_bar(groups, desc="obs curves", unit="module", disable=not progress):
        quad, width = quads[group.name]
        if curved is None or group.name in curved:
            err, keep = removal_curve(quad, group.count, width)
            curves[group.name] = {"err": err, "keep": keep}
        scores[group.name] = single_errors(quad, group.count, width).float()
    return curves, scores
