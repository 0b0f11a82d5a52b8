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

    min ||X W_K^T + 1 b^T - Y||^2 + ridge * mean(diag(X^T X)) * ||W_K - W0_K||^2

from normal equations summed batch by batch (float64, so memory does not grow with the number of
crops; the bias is not regularised). The ridge pulls towards the zeroed model's own weights W0,
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
    """A layer fed by pruned units: its weight's name and which input columns are kept."""

    weight: str
    keep: Tensor


def consumers(adapter: Adapter, model: nn.Module, masks: dict[str, Tensor]) -> list[Consumer]:
    """Consumers with at least one removed column, in forward order (kept = AND over groups).

    A group missing from ``masks`` keeps all its units.
    """
    groups = {g.name: g for g in adapter.groups(model)}
    unknown = sorted(set(masks) - set(groups))
    if unknown:
        raise ValueError(f"the masks name groups this model does not have: {unknown}")
    keep: dict[str, Tensor] = {}
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
    return [Consumer(name, cols) for name, cols in keep.items() if not bool(cols.all())]


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

    def solve(self, ridge: float, prior: Tensor) -> Tensor:
        """The ridge solution (columns + bias) x outputs, shrunk towards ``prior``.

        Minimises ||Z theta - Y||^2 + ridge * mean(diag) * ||W - W_prior||^2 (the bias is free);
        minimum-norm where singular.
        """
        a, b = self.zz.clone(), self.zy.clone()
        if self.columns:
            penalty = ridge * float(a.diagonal()[:self.columns].mean())
            a.diagonal()[:self.columns] += penalty
            b[:self.columns] += penalty * prior[:self.columns].double()
        return torch.linalg.pinv(a, hermitian=True) @ b

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


def _theta(layer: nn.Linear, keep: Tensor) -> Tensor:
    """The layer's current kept columns (transposed) and bias, as the solver's unknowns."""
    theta = layer.weight.detach()[:, keep].T
    if layer.bias is not None:
        theta = torch.cat([theta, layer.bias.detach()[None]])
    return theta


@torch.no_grad()
def _write(layer: nn.Linear, keep: Tensor, theta: Tensor) -> None:
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

    def advance(self, adapter: Adapter, student: nn.Module, teacher: nn.Module,
                masks: dict[str, Tensor], block: int) -> None:
        """Run both models (the student masked) up to the input of ``block``."""
        while self.block < block:
            with masked(adapter, student, masks):
                self.student = [adapter.run_block(student, self.block, s) for s in self.student]
            teacher_in, i = self.teacher, self.block
            self.teacher = _memo(self.memo, ("block", i + 1), lambda: [
                adapter.run_block(teacher, i, t) for t in teacher_in])
            self.block += 1


@torch.no_grad()
def fit_consumer(adapter: Adapter, student: nn.Module, teacher: nn.Module,
                 masks: dict[str, Tensor], consumer: Consumer, streams: Streams,
                 settings: CompensationSettings) -> dict[str, float] | None:
    """Refit one consumer of ``student`` in place; its relative error before and after.

    ``streams`` are both models' inputs to the consumer's block (only that block is run). None
    when nothing is left to fit (no kept column and no bias): the layer stays as it is.
    """
    layer = adapter.consumer_layer(student, consumer.weight)
    keep = consumer.keep.to(layer.weight.device)
    tap = adapter.residual(student, consumer.weight) if settings.target == "stream" else None
    if not int(keep.sum()) and layer.bias is None:
        return None
    student_taps = {"x": (layer, False)}
    teacher_taps = {"y": (adapter.consumer_layer(teacher, consumer.weight), True)}
    if tap is not None:
        student_taps["r"] = (student.get_submodule(tap.module), False)
        teacher_taps["r"] = (teacher.get_submodule(tap.module), False)
    equations = NormalEquations(int(keep.sum()), layer.out_features, layer.bias is not None,
                                layer.weight.device)
    block = streams.block
    wanted = _memo(streams.memo, ("taps", (consumer.weight, tap is not None)), lambda: [
        record(lambda: adapter.run_block(teacher, block, t), teacher_taps)
        for t in streams.teacher])
    for s, want in zip(streams.student, wanted):
        with masked(adapter, student, masks):
            got = record(lambda: adapter.run_block(student, block, s), student_taps)
        target = want["y"] if tap is None else want["y"] + drift(student, tap, want["r"], got["r"])
        equations.add(got["x"][..., keep], target)
    current = _theta(layer, keep)
    before = equations.error(current)
    theta = equations.solve(settings.ridge, current)
    _write(layer, keep, theta)
    return {"before": before, "after": equations.error(theta)}


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
    student.eval()
    teacher.eval()
    device = next(student.parameters()).device
    masks = {name: mask.to(device) for name, mask in masks.items()}
    streams = Streams.start(adapter, student, teacher, list(x.to(device).split(settings.batch_size)),
                            memo)
    fit = {}
    for consumer in progress_bar(consumers(adapter, student, masks), desc="compensate",
                                 unit="layer", disable=not progress):
        block = adapter.block_of(consumer.weight)
        if block < streams.block:
            raise RuntimeError(f"{type(adapter).__name__}.slices lists consumer {consumer.weight} "
                               f"of block {block} after block {streams.block}'s (not forward order)")
        streams.advance(adapter, student, teacher, masks, block)
        result = fit_consumer(adapter, student, teacher, masks, consumer, streams, settings)
        if result is not None:
            fit[consumer.weight] = result
    return fit


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
