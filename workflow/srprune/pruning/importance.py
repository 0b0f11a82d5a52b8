"""Unit importance: OPTIN's trajectory score adapted to super-resolution, and two baselines.

OPTIN (Khaki & Plataniotis, ICLR 2024) scores a unit by how much masking it alone disturbs the
teacher's later-layer features, with no retraining. The trajectory is the output of every layer
(the adapter's; for CATANet two per block: the TAB output and the block output), and a unit
writes into layer ``group.layer`` (for CATANet, TAB units into the TAB output, LRSA units into
the block output). For a unit writing into layer i:

    score = sum over layers j > i of MD_j  +  lambda * c * D          (j = i for the last layer)

so a TAB unit is scored on its own block's LRSA output and on everything after it.

* **MD_j** (manifold distillation): each token of layer j's output is L2-normalised over
  channels; the same K token positions (sampled once per image, seeded) are taken from the
  teacher and the masked run; MD_j is the squared Frobenius norm of the difference of the two
  K x K Gram matrices, averaged over the calibration images.
* **D** (output distortion, replacing OPTIN's classification KL): the mean squared error
  between the masked and the teacher SR outputs, over all pixels and calibration images.
* **Balance.** OPTIN's reference code rescales its KL term per unit, by a power of ten, to
  about MD / 10 (its lambda = 10). We use one factor for the whole model instead,
  ``c = sum MD / sum D`` over all units, so that the output term as a whole weighs ``lam``
  times the trajectory term and the ranking of units within the output term is kept: the
  paper's lambda = 10 is ``lam = 0.1`` here; ``lam = 0`` scores by the trajectory only.
  The default ``lam = 0.3`` was measured on the validation split
  (``benchmarks/bench_optin_lambda.py``: third-party x4 teacher, exact terms from 4 LR crops of
  32x32 of the training split, OPTIN selection, zeroed-model PSNR on the 20 validation images,
  teacher 28.220 dB). dB against the teacher at r = 0.7 / 0.5: ``lam`` 0: -0.468 / -0.866;
  0.03: -0.466 / -0.839; 0.1 (the paper's lambda = 10): -0.467 / -0.818; 0.3: -0.454 / -0.803;
  1 (the former default): -0.515 / -0.989. 0.1 and 0.3 differ by under 0.02 dB.

The raw terms (``md``, ``out``) are kept beside the combined score so that another lambda can be
applied without rescoring. Two scorers compute them (``OptinSettings.scorer``): ``exact`` (below)
and ``sketch`` (:mod:`.sketch`: random-probe estimates of their second-order values from a few
backward passes, whatever the number of units).

Speed of the exact scorer: the teacher runs once and its activations are cached; each unit's masked forward
restarts at its own module, and masked variants of one module run as one batch of at most
``max_batch`` images (variants x calibration crops). Restarting skips on average the part of the
forward before the unit's module (38% of it for the released x4 model, whose reconstruction
every restart redoes), which bounds the gain over one full forward per unit (1.6x there). On a CPU, batching several variants was measured to cost
about 1.2x per image against one variant per forward, hence the default of 16 images (one
variant per forward at 16 or more crops); on a GPU, larger batches pay off.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from ..progress import progress_bar
from ..settings import check_int
from .adapter import Adapter, UnitGroup, masked

@dataclass
class OptinSettings:
    """Settings of the OPTIN score; defaults are documented in the module docstring."""

    tokens: int = 64          # K token positions per image for the Gram matrices
    lam: float = 0.3          # weight of the output term relative to the trajectory term
    seed: int = 0             # token positions
    max_batch: int = 16       # images (variants x crops) per masked forward; see the docstring
    scorer: str = "exact"     # exact (one masked forward per unit), sketch or hybrid (.sketch)
    probes: int = 8           # random probes of the sketch scorer

    def __post_init__(self) -> None:
        check_int("tokens", self.tokens, 1)
        check_int("max_batch", self.max_batch, 1)
        if not math.isfinite(self.lam) or self.lam < 0:
            raise ValueError(f"lam must be a finite number >= 0, got {self.lam}")

    def to_dict(self) -> dict:
        return asdict(self)


def token_positions(feats: list[Tensor], k: int, seed: int) -> list[Tensor]:
    """K sampled token positions per image for each block (B x K), the same for every run."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for f in feats:
        b, n, _ = f.shape
        out.append(torch.stack([torch.randperm(n, generator=gen)[:min(k, n)] for _ in range(b)]))
    return out


def gram(tokens: Tensor, positions: Tensor) -> Tensor:
    """Gram matrices (B x K x K) of the L2-normalised tokens at ``positions`` (B' x K).

    ``tokens`` may hold several variants of the batch (B = V * B'); positions repeat per variant.
    """
    reps = tokens.shape[0] // positions.shape[0]
    idx = positions.repeat(reps, 1).to(tokens.device)
    picked = torch.nn.functional.normalize(
        tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])), dim=-1)
    return picked @ picked.transpose(1, 2)


def later_layers(group: UnitGroup, n_layers: int) -> list[int]:
    """Trajectory layers a unit of ``group`` is scored on: those after its own (last: its own)."""
    return [group.layer] if group.layer == n_layers - 1 else list(range(group.layer + 1, n_layers))


@dataclass
class Reference:
    """The teacher's Gram matrices, output and token positions for a calibration batch."""

    grams: list[Tensor]
    output: Tensor
    positions: list[Tensor]


def teacher_reference(adapter: Adapter, model: nn.Module, x: Tensor,
                      settings: OptinSettings) -> Reference:
    feats, output = adapter.trajectory(model, x)
    positions = token_positions(feats, settings.tokens, settings.seed)
    return Reference([gram(f, p) for f, p in zip(feats, positions)], output, positions)


def distortion(ref: Reference, group: UnitGroup, feats: list[Tensor], output: Tensor,
               variants: int) -> tuple[Tensor, Tensor]:
    """(MD summed over the scored layers, output MSE) per variant and image (variants x images);
    ``feats`` start at the group. A unit's terms are their means over the images."""
    md = torch.zeros(variants, ref.output.shape[0])
    for j in later_layers(group, len(ref.grams)):
        g = gram(feats[j - group.layer], ref.positions[j])
        diff = (g.unflatten(0, (variants, -1)) - ref.grams[j].unsqueeze(0)).pow(2)
        md += diff.sum(dim=(2, 3)).cpu()
    out = (output.unflatten(0, (variants, -1)) - ref.output.unsqueeze(0)).pow(2)
    return md, out.flatten(2).mean(dim=2).cpu()


def one_off_masks(count: int, units: Iterable[int]) -> Tensor:
    """One row per unit in ``units``: all ones but that unit."""
    units = list(units)
    masks = torch.ones(len(units), count)
    masks[torch.arange(len(units)), torch.tensor(units)] = 0
    return masks


@torch.no_grad()
def optin_terms(adapter: Adapter, model: nn.Module, x: Tensor, settings: OptinSettings,
                progress: bool = True, groups: list[UnitGroup] | None = None,
                per_image: bool = False) -> dict[str, dict[str, Tensor]]:
    """Raw trajectory (``md``) and output (``out``) terms of every unit, batched and cached.

    ``per_image`` also returns each image's terms (``md_images``, ``out_images``: units x
    images, whose means over images are ``md`` and ``out``), to measure how stable the scores
    are across calibration crops.
    """
    model.eval()
    ref = teacher_reference(adapter, model, x, settings)
    cache = adapter.cache(model, x)
    groups = adapter.groups(model) if groups is None else groups
    per_forward = max(1, settings.max_batch // x.shape[0])
    terms = {}
    bar = progress_bar(total=sum(g.count for g in groups), desc="optin scores", unit="unit",
                       disable=not progress)
    for group in groups:
        md, out = torch.zeros(group.count, x.shape[0]), torch.zeros(group.count, x.shape[0])
        for start in range(0, group.count, per_forward):
            units = range(start, min(group.count, start + per_forward))
            masks = one_off_masks(group.count, units).to(x.device)
            feats, output = adapter.run_from(model, cache, group, masks)
            md[start:units.stop], out[start:units.stop] = distortion(ref, group, feats, output,
                                                                     len(units))
            bar.update(len(units))
        terms[group.name] = {"md": md.mean(1), "out": out.mean(1)}
        if per_image:
            terms[group.name].update(md_images=md, out_images=out)
    bar.close()
    return terms


@torch.no_grad()
def naive_optin_terms(adapter: Adapter, model: nn.Module, x: Tensor,
                      settings: OptinSettings) -> dict[str, dict[str, Tensor]]:
    """Reference scorer: one full forward from the input per unit (for tests and benchmarks)."""
    model.eval()
    ref = teacher_reference(adapter, model, x, settings)
    terms = {}
    for group in adapter.groups(model):
        md, out = torch.zeros(group.count), torch.zeros(group.count)
        for unit in range(group.count):
            with masked(adapter, model, {group.name: one_off_masks(group.count, [unit])[0]}):
                feats, output = adapter.trajectory(model, x)
            md[unit], out[unit] = (t.mean() for t in distortion(ref, group, feats[group.layer:],
                                                                output, 1))
        terms[group.name] = {"md": md, "out": out}
    return terms


def combine(terms: dict[str, dict[str, Tensor]], lam: float) -> tuple[dict[str, Tensor], float]:
    """OPTIN score per unit and the balance factor ``c`` (see the module docstring)."""
    md_total = sum(float(t["md"].sum()) for t in terms.values())
    out_total = sum(float(t["out"].sum()) for t in terms.values())
    factor = md_total / out_total if out_total > 0 else 0.0
    return {name: t["md"] + lam * factor * t["out"] for name, t in terms.items()}, factor


def magnitude_scores(adapter: Adapter, model: nn.Module) -> dict[str, Tensor]:
    """Baseline: L1 norm of each unit's weights."""
    return {g.name: adapter.unit_magnitude(model, g) for g in adapter.groups(model)}


def random_scores(adapter: Adapter, model: nn.Module, seed: int,
                  groups: list[UnitGroup] | None = None) -> dict[str, Tensor]:
    """Baseline: uniform random scores of ``groups`` (default: all), seeded.

    Channel groups are drawn after all others, so that the other groups' scores do not depend
    on whether channels are scored too.
    """
    gen = torch.Generator().manual_seed(seed)
    groups = adapter.groups(model) if groups is None else groups
    drawn = {g.name: torch.rand(g.count, generator=gen)
             for g in sorted(groups, key=lambda g: g.parent is not None)}
    return {g.name: drawn[g.name] for g in groups}

