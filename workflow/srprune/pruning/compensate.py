"""Compensation without training: refit what the kept units feed, by ridge least squares.

After the masks are chosen, every *consumer* of pruned units (a Linear layer whose input columns
belong to units, i.e. a slice with axis 1 in ``Adapter.slices``: CATANet's ConvFFN ``fc2``, the
IASA and LRSA ``proj``) is refit so that its module reproduces the teacher's on calibration
crops. This is the mask tuning of Kwon et al., "A Fast Post-Training Pruning Framework for
Transformers" (NeurIPS 2022), with the consumer's kept columns and bias as the free variables
instead of one scale per unit. Consumers are fitted one at a time in forward order, each on the
inputs that the already-compensated student produces, so errors do not compound.

For a consumer W (out x in) with kept input columns K and bias b (where the layer has one), over
every calibration token: X = the student's (masked) input columns K, Y = the target; solve

    min ||X W_K^T + 1 b^T - Y||^2 + ridge * mean(diag(X_t^T X_t)) * ||W_K - W0_K||^2

from normal equations summed batch by batch (float64, so memory does not grow with the number of
crops; the bias is not regularised; X_t is the teacher's input to the layer, so the penalty is one
constant per layer whatever the units kept, and :mod:`.obs` predicts the refit of any kept set
exactly). The equations cover every input column (the layer's own groups unmasked while its
inputs are recorded) and are solved over the kept ones; :func:`compensated_copy` can also
chooses, per module, which units to keep from them. The ridge pulls towards the zeroed model's own weights W0,
not towards zero, so a large ridge gives back the zeroed model and a small budget cut (r = 0.9)
is not overfitted to the crops. The solve is a pseudo-inverse: with ``ridge = 0`` and fewer
samples than columns it gives the minimum-norm answer, never NaN. A consumer with every column
removed keeps only its bias, the mean target. Removed columns stay exactly 0, so the compensated
model has the zeroed model's structure and ``srprune rebuild`` still applies.

Targets (``CompensationSettings.target``):

* ``output``: the teacher's output of the same layer at the same token positions;
* ``stream``: that output plus the drift of the residual stream the layer adds to (teacher
  stream minus student stream, taken back through a linear map between them such as CATANet's
  TAB ``conv1x1``; ``Adapter.residual``), so the refit layer also cancels what earlier pruned
  modules left behind, as Kwon et al. fit the layer output after its residual connection. A
  consumer for which the adapter names no residual stream falls back to ``output``.

Defaults were chosen on validation splits (the demo's ``embedded:val``, and 20 held-out BSD200
images for the x4 model): ``stream`` was better than or equal to ``output`` everywhere (up to
0.25 dB); ridge 1e-2 is within 0.015 dB of the best ridge on both (the x4 model prefers 1e-1,
the demo 1e-3). Numbers: README, "Compensation (no training)".
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..checkpoint import CheckpointError, check_same_architecture, load_finite, save_model
from ..fileio import file_sha256
from ..models import scale_of
from ..progress import progress_bar
from ..settings import check_int
from .adapter import Adapter, ResidualTap, masked
from .artifacts import masks_of
from .calibration import Calibration
from .obs import Quadratic, removal_curve
from .registry import adapter_for

TARGETS = ("stream", "output")


@dataclass
class CompensationSettings:
    """Ridge (relative to the mean diagonal of X^T X), target and crops per forward."""

    ridge: float = 1e-2
    target: str = "stream"
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if not (math.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"ridge must be a finite number >= 0, got {self.ridge}")
        check_int("batch_size", self.batch_size, 1)


@dataclass(frozen=True)
class Consumer:
    """A layer fed by pruned units: its weight's name, which input columns are kept, and the
    groups owning its columns with the columns each unit owns."""

    weight: str
    keep: Tensor
    owners: tuple[tuple[str, int], ...] = ()


def consumers(adapter: Adapter, model: nn.Module, masks: dict[str, Tensor]) -> list[Consumer]:
    """Consumers with at least one removed column, in forward order (kept = AND over groups).

    A group missing from ``masks`` keeps all its units.
    """
    groups = {g.name: g for g in adapter.groups(model)}
    unknown = sorted(set(masks) - set(groups))
    if unknown:
        raise ValueError(f"the masks name groups this model does not have: {unknown}")
    keep: dict[str, Tensor] = {}
    owners: dict[str, list[tuple[str, int]]] = {}
    for group in groups.values():
        mask = masks.get(group.name)
        if mask is not None and tuple(mask.shape) != (group.count,):
            raise ValueError(f"mask of {group.name} has shape {tuple(mask.shape)}, the model's "
                             f"group has {group.count} units")
        units = torch.ones(group.count, dtype=torch.bool) if mask is None else mask.cpu().bool()
        for name, axis, width in adapter.slices(model, group):
            if axis != 1 or not adapter.consumes(name):
                continue
            columns = units.repeat_interleave(width)
            if columns.numel() != model.get_parameter(name).shape[1]:
                raise ValueError(f"{group.name} owns {columns.numel()} columns of {name}, which "
                                 f"has {model.get_parameter(name).shape[1]}")
            keep[name] = keep[name] & columns if name in keep else columns
            owners.setdefault(name, []).append((group.name, width))
    return [Consumer(name, cols, tuple(owners[name])) for name, cols in keep.items()
            if not bool(cols.all())]


class NormalEquations:
    """Z^T Z, Z^T Y and Y^T Y summed over batches, Z = [X, 1] (the 1 where there is a bias)."""

    def __init__(self, columns: int, outputs: int, bias: bool, device: torch.device):
        size = columns + int(bias)
        self.columns, self.bias = columns, bias
        self.zz = torch.zeros(size, size, dtype=torch.float64, device=device)
        self.zy = torch.zeros(size, outputs, dtype=torch.float64, device=device)
        self.yy = 0.0

    def add(self, x: Tensor, y: Tensor) -> None:
        """Add the samples ``x`` (... x columns) with targets ``y`` (... x outputs)."""
        z, y = x.flatten(0, -2).double(), y.flatten(0, -2).double()
        if self.bias:
            z = torch.cat([z, z.new_ones(z.shape[0], 1)], dim=1)
        self.zz += z.T @ z
        self.zy += z.T @ y
        self.yy += float((y * y).sum())

    def error(self, theta: Tensor) -> float:
        """||Z theta - Y||^2 / ||Y||^2 over the samples added (0 when Y is 0)."""
        theta = theta.double()
        sq = self.yy - 2 * float((theta * self.zy).sum()) + float((theta * (self.zz @ theta)).sum())
        return max(sq, 0.0) / self.yy if self.yy > 0 else 0.0


class _Recorded(Exception):
    """Raised by the last hook of :func:`record`: the rest of the forward is not needed."""


def record(run: Callable[[], Any], taps: dict[str, tuple[nn.Module, bool]]) -> dict[str, Tensor]:
    """Call ``run`` until every tap fired: ``{key: the module's output (True) or first input}``."""
    seen: dict[str, Tensor] = {}

    def keep(key: str, value: Tensor) -> None:
        seen[key] = value
        if len(seen) == len(taps):
            raise _Recorded

    handles = []
    for key, (module, output) in taps.items():
        if output:
            handles.append(module.register_forward_hook(
                lambda m, args, out, key=key: keep(key, out)))
        else:
            handles.append(module.register_forward_pre_hook(
                lambda m, args, key=key: keep(key, args[0])))
    try:
        run()
    except _Recorded:
        pass
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(set(taps) - set(seen))
    if missing:
        raise RuntimeError(f"the forward never reached the layers of {missing}")
    return seen


def drift(model: nn.Module, tap: ResidualTap, teacher: Tensor, student: Tensor) -> Tensor:
    """Teacher minus student stream, in the consumer's output space."""
    diff = teacher - student
    if tap.tokens is not None:
        diff = tap.tokens(diff)
    if tap.mix is not None:
        mix = model.get_parameter(tap.mix).detach()
        diff = diff @ torch.linalg.pinv(mix.reshape(mix.shape[0], -1).double()).T.to(diff)
    return diff


def layer_theta(layer: nn.Linear, keep: Tensor | None = None) -> Tensor:
    """The layer's weight (transposed; columns not in ``keep`` as 0) and bias, as the solver's
    unknowns over every input column."""
    weight = layer.weight.detach()
    if keep is not None:
        weight = weight * keep.to(weight)
    theta = weight.T
    if layer.bias is not None:
        theta = torch.cat([theta, layer.bias.detach()[None]])
    return theta


@torch.no_grad()
def _write(layer: nn.Linear, keep: Tensor, theta: Tensor) -> None:
    """Write the solution over the kept columns (and bias); the other columns become 0."""
    columns = int(keep.sum())
    weight = torch.zeros_like(layer.weight)
    weight[:, keep] = theta[:columns].T.to(weight)
    layer.weight.copy_(weight)
    if layer.bias is not None:
        layer.bias.copy_(theta[columns])


TeacherMemo = dict[tuple[str, Any], Any]


def _memo(memo: TeacherMemo | None, key: tuple[str, Any], make: Callable[[], Any]) -> Any:
    """``make()``, kept in ``memo`` under ``key`` (None: not kept)."""
    if memo is None:
        return make()
    if key not in memo:
        memo[key] = make()
    return memo[key]


@dataclass
class Streams:
    """The student's and the teacher's streams into block ``block``, one pair per batch.

    ``memo`` keeps what the teacher computes (its streams and recorded layers), which does not
    depend on the masks: compensating several candidates against one teacher on the same
    batches runs the teacher once (the compensated selection).
    """

    block: int
    student: list[Tensor]
    teacher: list[Tensor]
    memo: TeacherMemo | None = None

    @classmethod
    def start(cls, adapter: Adapter, student: nn.Module, teacher: nn.Module,
              batches: list[Tensor], memo: TeacherMemo | None = None) -> "Streams":
        return cls(0, [adapter.enter(student, x) for x in batches],
                   _memo(memo, ("block", 0), lambda: [adapter.enter(teacher, x) for x in batches]),
                   memo)

    def advance(self, adapter: Adapter, student: nn.Module, teacher: nn.Module | None,
                masks: dict[str, Tensor], block: int) -> None:
        """Run both models (the student masked) up to the input of ``block``; the student only
        when ``teacher`` is None (its streams are then dropped)."""
        while self.block < block:
            with masked(adapter, student, masks):
                self.student = [adapter.run_block(student, self.block, s) for s in self.student]
            teacher_in, i = self.teacher, self.block
            self.teacher = [] if teacher is None else _memo(self.memo, ("block", i + 1), lambda: [
                adapter.run_block(teacher, i, t) for t in teacher_in])
            self.block += 1


def _teacher_taps(record_run: Callable[[], Any], taps: dict[str, tuple[nn.Module, bool]]
                  ) -> dict[str, Tensor]:
    """:func:`record` of the teacher, its consumer input reduced to per-column sums of squares
    (all the ridge needs; the memo keeps them for every candidate)."""
    seen = record(record_run, taps)
    seen["xx"] = seen.pop("x").flatten(0, -2).double().pow(2).sum(dim=0)
    return seen


def ridge_penalty(settings: CompensationSettings, wanted: list[dict[str, Tensor]]) -> float:
    """``ridge`` times the mean diagonal of the teacher's X^T X: one constant per layer, whatever
    the units kept, so that :mod:`.obs` predicts the refit exactly."""
    diagonal = sum(w["xx"] for w in wanted)
    return settings.ridge * float(diagonal.mean()) if diagonal.numel() else 0.0


def reselectable(consumer: Consumer, masks: dict[str, Tensor], parents: set[str]) -> str | None:
    """The group whose kept units :func:`fit_consumer` may choose anew: the only owner of the
    consumer's columns, when it has masks and no channel groups inside it (else None)."""
    if len(consumer.owners) != 1:
        return None
    name = consumer.owners[0][0]
    return name if name in masks and name not in parents else None


@torch.no_grad()
def fit_consumer(adapter: Adapter, student: nn.Module, teacher: nn.Module,
                 masks: dict[str, Tensor], consumer: Consumer, streams: Streams,
                 settings: CompensationSettings, reselect: str | None = None
                 ) -> tuple[dict[str, float] | None, dict[str, Tensor]]:
    """Refit one consumer of ``student`` in place: (its relative error before and after, masks).

    ``streams`` are both models' inputs to the consumer's block (only that block is run). The
    consumer's inputs are recorded with its own groups unmasked, so the normal equations cover
    every column; the refit solves them over the kept ones. With ``reselect`` (a group name,
    :func:`reselectable`), that group keeps as many units as its mask does, but the ones whose
    removal the refit absorbs best (:func:`.obs.removal_curve` on these equations), and the
    masks returned say which; ``student`` must then still hold the group's weights (a masked
    copy of the teacher, not a zeroed one). The error is None when nothing is left to fit (no
    kept column and no bias): the layer stays as it is.
    """
    layer = adapter.consumer_layer(student, consumer.weight)
    teacher_layer = adapter.consumer_layer(teacher, consumer.weight)
    tap = adapter.residual(student, consumer.weight) if settings.target == "stream" else None
    owners = {name for name, _ in consumer.owners}
    lifted = {name: mask for name, mask in masks.items() if name not in owners}
    student_taps = {"x": (layer, False)}
    teacher_taps = {"y": (teacher_layer, True), "x": (teacher_layer, False)}
    if tap is not None:
        student_taps["r"] = (student.get_submodule(tap.module), False)
        teacher_taps["r"] = (teacher.get_submodule(tap.module), False)
    equations = NormalEquations(layer.in_features, layer.out_features, layer.bias is not None,
                                layer.weight.device)
    block = streams.block
    wanted = _memo(streams.memo, ("taps", (consumer.weight, tap is not None)), lambda: [
        _teacher_taps(lambda: adapter.run_block(teacher, block, t), teacher_taps)
        for t in streams.teacher])
    for s, want in zip(streams.student, wanted):
        with masked(adapter, student, lifted):
            got = record(lambda: adapter.run_block(student, block, s), student_taps)
        target = want["y"] if tap is None else want["y"] + drift(student, tap, want["r"], got["r"])
        equations.add(got["x"], target)
    quad = Quadratic.ridge(equations.zz, equations.zy, equations.yy, layer.in_features,
                           ridge_penalty(settings, wanted), layer_theta(teacher_layer).double())
    keep = consumer.keep.to(layer.weight.device)
    if reselect is not None:
        masks, keep = _reselect(adapter, student, masks, reselect, quad, consumer)
    if not int(keep.sum()) and layer.bias is None:
        return None, masks
    before = equations.error(layer_theta(layer, consumer.keep.to(layer.weight.device)))
    theta = quad.keep(keep).solve()
    _write(layer, keep, theta)
    return {"before": before, "after": equations.error(layer_theta(layer))}, masks


def _reselect(adapter: Adapter, model: nn.Module, masks: dict[str, Tensor], name: str,
              quad: Quadratic, consumer: Consumer) -> tuple[dict[str, Tensor], Tensor]:
    """Masks with group ``name``'s kept units chosen by the refit's error, and the consumer's
    kept columns."""
    width = dict(consumer.owners)[name]
    mask = masks[name]
    units = mask.numel()
    _, keep = removal_curve(quad, units, width)
    chosen = keep[int(mask.bool().sum())].to(mask)
    masks = {**masks, name: chosen}
    return masks, chosen.bool().repeat_interleave(width).to(quad.a.device)


def _compensate(adapter: Adapter, student: nn.Module, teacher: nn.Module,
                masks: dict[str, Tensor], x: Tensor, settings: CompensationSettings,
                progress: bool, memo: TeacherMemo | None, reselect: bool, run_out: bool = False
                ) -> tuple[dict[str, dict[str, float]], dict[str, Tensor], Tensor | None]:
    """(fit record, masks, and with ``run_out`` the masked student's output on ``x``: its
    streams run on through the blocks after the last consumer, so no second forward is needed)."""
    student.eval()
    teacher.eval()
    device = next(student.parameters()).device
    masks = {name: mask.to(device) for name, mask in masks.items()}
    parents = {g.parent for g in adapter.groups(student) if g.parent and g.name in masks}
    batches = list(x.to(device).split(settings.batch_size))
    streams = Streams.start(adapter, student, teacher, batches, memo)
    fit = {}
    for consumer in progress_bar(consumers(adapter, student, masks), desc="compensate",
                                 unit="layer", disable=not progress):
        block = adapter.block_of(consumer.weight)
        if block < streams.block:
            raise RuntimeError(f"{type(adapter).__name__}.slices lists consumer {consumer.weight} "
                               f"of block {block} after block {streams.block}'s (not forward order)")
        streams.advance(adapter, student, teacher, masks, block)
        group = reselectable(consumer, masks, parents) if reselect else None
        result, masks = fit_consumer(adapter, student, teacher, masks, consumer, streams,
                                     settings, group)
        if result is not None:
            fit[consumer.weight] = result
    if not run_out:
        return fit, masks, None
    streams.advance(adapter, student, None, masks, adapter.block_count(student))
    with masked(adapter, student, masks):
        out = torch.cat([adapter.leave(student, b, s) for b, s in zip(batches, streams.student)])
    return fit, masks, out


@torch.no_grad()
def compensate_model(adapter: Adapter, student: nn.Module, teacher: nn.Module,
                     masks: dict[str, Tensor], x: Tensor, settings: CompensationSettings,
                     progress: bool = True, memo: TeacherMemo | None = None
                     ) -> dict[str, dict[str, float]]:
    """Refit every consumer of pruned units of ``student`` in place, first to last.

    ``x`` are the calibration inputs (run ``settings.batch_size`` at a time). Both models'
    streams are kept at the entry of the current block, so each consumer's fit runs its own
    block only, on the inputs the already-compensated student gives it. Returns, per consumer
    weight, the relative error of its target before and after the refit (consumers with nothing
    left to fit are left out). ``memo`` (a dict, empty at first) keeps the teacher's part for
    later calls with the same teacher, ``x`` and settings.
    """
    return _compensate(adapter, student, teacher, masks, x, settings, progress, memo, False)[0]


@dataclass
class Refit:
    """A compensated copy of the teacher (zeroed), its masks, its fit record and its output on
    the calibration inputs."""

    student: nn.Module
    masks: dict[str, Tensor]
    fit: dict[str, dict[str, float]]
    output: Tensor


@torch.no_grad()
def compensated_copy(adapter: Adapter, teacher: nn.Module, masks: dict[str, Tensor], x: Tensor,
                     settings: CompensationSettings, reselect: bool = False,
                     progress: bool = True, memo: TeacherMemo | None = None) -> Refit:
    """The teacher with ``masks`` applied, compensated on ``x``, and its output on ``x``.

    With ``reselect``, each group keeps its kept count of ``masks`` but, module by module in
    forward order, the units whose removal the refit of their consumer absorbs best, from the
    inputs of the already pruned and compensated student and the teacher's targets
    (:func:`fit_consumer`); groups with channel groups inside them, and consumers of several
    groups, keep the units ``masks`` gives. The output comes from the compensation's own
    streams (the student is not run again).
    """
    student = copy.deepcopy(teacher)
    if not reselect:
        adapter.zero_units(student, masks)
    fit, masks, out = _compensate(adapter, student, teacher, masks, x, settings, progress, memo,
                                  reselect, run_out=True)
    if reselect:
        adapter.zero_units(student, masks)
    return Refit(student, masks, fit, out)


def compensate_checkpoint(teacher_path: str | Path, model_path: str | Path, out: str | Path,
                          calibration: Calibration, settings: CompensationSettings,
                          model_config: dict[str, Any] | None = None, device: str = "cpu",
                          progress: bool = True) -> dict[str, Any]:
    """Compensate a zeroed checkpoint against its teacher; write it to ``out`` (self-describing).

    The output keeps the input's meta (masks, method, budget) with ``stage: compensated`` and a
    ``compensation`` record (settings, calibration, per-consumer errors, seconds), returned too.
    """
    teacher = load_finite(teacher_path, **(model_config or {}))
    student = load_finite(model_path)
    masks = masks_of(student, model_path)
    adapter_for(student).check_masks(student, masks)
    if student.checkpoint_meta.get("teacher_sha256") != file_sha256(teacher_path):
        raise CheckpointError(f"the masks of {model_path} were not chosen for {teacher_path} "
                              f"(teacher checksum differs or is not recorded)")
    check_same_architecture(student, teacher, model_path, teacher_path)
    x = calibration.crops(scale_of(teacher))
    start = time.perf_counter()
    fit = compensate_model(adapter_for(student), student.to(device), teacher.to(device), masks,
                           x, settings, progress)
    summary = {"settings": asdict(settings), "calibration": asdict(calibration), "fit": fit,
               "seconds": time.perf_counter() - start, "teacher": str(teacher_path),
               "source": str(model_path)}
    save_model(student, out, {**student.checkpoint_meta, "stage": "compensated",
                              "compensation": summary})
    return summary
