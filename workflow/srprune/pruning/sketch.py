"""A fast estimate of OPTIN's terms: Hutchinson sketches of their second-order values.

Both OPTIN terms of a unit u are squared distortions of a residual r(m) of the unit masks m,
zero at m = 1 (the teacher): MD_j is ||G_j(m) - G_j(1)||^2 (Gram matrices of layer j) and D is
the mean of (y(m) - y(1))^2 (SR output). Masking u alone (m = 1 - e_u), to second order, gives
||J e_u||^2 with J = dr/dm at m = 1: the first-order term vanishes. For a random sign vector z
over the residual, E[(z^T J e_u)^2] = ||J e_u||^2, and z^T J is one vector-Jacobian product: one
backward pass per probe estimates every unit of every group at once.

Details that make it cheap and exact in expectation:

* The masks are differentiable multipliers with one row per calibration image, so each image's
  products are squared on their own (no cross terms between images: the variance falls with the
  number of images, not only with the number of probes).
* A unit is scored on the layers after its own (:func:`.importance.later_layers`). The gradient
  of the whole trajectory also carries the unit's own layer; that part is removed exactly by
  subtracting, with the same probe, the gradient of every layer run alone from the teacher's
  cached input to it (:meth:`.adapter.Adapter.local_layers`), which depends on that layer's masks
  only. The last layer keeps its own term.
* Images are processed ``max_batch`` at a time; the graph of a chunk is built once and every
  probe re-uses it.

Cost: one forward with a retained graph, then two backward passes per probe (trajectory, output)
per chunk, whatever the number of units; the exact scorer runs one masked forward per unit.

What it cannot see: CATANet's TAB assigns tokens to centres by an argmax, which has no gradient.
Measured on the third-party x4 model (4 crops of 32x32), masking a TAB FFN neuron by a factor
1 - eps gives an MD that falls only like eps^0.4 (about 16 at eps = 1, 3.6 at eps = 0.03), not
eps^2: tokens near a decision boundary change group, a jump the exact scorer counts and the
sketch does not. Hence the sketch ranks heads like the exact scorer (Spearman 0.97 on MD) but
neurons less so (0.82); see the README for what that does to the masks.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor, nn

from ..progress import progress_bar
from .adapter import Adapter, UnitGroup, masked
from .importance import OptinSettings, gram, optin_terms, teacher_reference


def rademacher(shape: torch.Size, gen: torch.Generator, like: Tensor) -> Tensor:
    """Random signs (+1 or -1) of ``shape``, drawn on the CPU from ``gen`` (reproducible)."""
    return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(like)


@contextmanager
def frozen(model: nn.Module) -> Iterator[None]:
    """No parameter gradients inside the block (only the masks are differentiated)."""
    flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)


def _probe_grads(target: Tensor, leaves: list[Tensor], gen: torch.Generator) -> list[Tensor]:
    """Squared per-image VJPs of ``target`` (summed over images) for one random sign probe."""
    z = rademacher(target.shape, gen, target)
    grads = torch.autograd.grad((z * target).sum(), leaves, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(leaf[0]) if g is None else g.pow(2).sum(0)
            for leaf, g in zip(leaves, grads)]


def _chunk_sums(adapter: Adapter, model: nn.Module, x: Tensor, positions: list[Tensor],
                groups: list[UnitGroup], probes: int, gen: torch.Generator
                ) -> tuple[list[Tensor], list[Tensor], int]:
    """Sums over probes and the chunk's images of the squared VJPs: (md, out) per group, and
    the number of output values per image."""
    with torch.no_grad():
        cache = adapter.cache(model, x)
    leaves = [torch.ones(x.shape[0], g.count, dtype=x.dtype, device=x.device, requires_grad=True)
              for g in groups]
    with masked(adapter, model, {g.name: m for g, m in zip(groups, leaves)}):
        feats, output = adapter.trajectory(model, x)
        local = adapter.local_layers(model, cache)
    # all layers' Grams of the trajectory, minus each layer alone (but the last, kept on itself)
    grams = torch.stack([gram(f, p) for f, p in zip(feats, positions)])
    own = torch.stack([gram(f, p) for f, p in zip(local[:-1], positions[:-1])])
    trajectory = grams - torch.cat([own, torch.zeros_like(grams[-1:])])
    md = [torch.zeros(g.count, dtype=x.dtype, device=x.device) for g in groups]
    out = [torch.zeros(g.count, dtype=x.dtype, device=x.device) for g in groups]
    for _ in range(probes):
        for total, part in zip(md, _probe_grads(trajectory, leaves, gen)):
            total += part
        for total, part in zip(out, _probe_grads(output, leaves, gen)):
            total += part
    return md, out, output[0].numel()


def sketch_terms(adapter: Adapter, model: nn.Module, x: Tensor, settings: OptinSettings,
                 progress: bool = True, groups: list[UnitGroup] | None = None
                 ) -> dict[str, dict[str, Tensor]]:
    """Estimates of the ``md`` and ``out`` terms of every unit from ``settings.probes`` probes.

    Same units and normalisation as :func:`.importance.optin_terms` (MD: mean over images of
    the Frobenius norms summed over the scored layers; out: mean over output pixels).
    """
    model.eval()
    groups = adapter.groups(model) if groups is None else groups
    with torch.no_grad():
        positions = teacher_reference(adapter, model, x, settings).positions
    gen = torch.Generator().manual_seed(settings.seed)
    md = [torch.zeros(g.count) for g in groups]
    out = [torch.zeros(g.count) for g in groups]
    chunk = max(1, settings.max_batch)
    with frozen(model), progress_bar(total=x.shape[0], desc="optin sketch",
                                     unit="image", disable=not progress) as bar:
        for start in range(0, x.shape[0], chunk):
            part = slice(start, start + chunk)
            *sums, pixels = _chunk_sums(adapter, model, x[part], [p[part] for p in positions],
                                        groups, settings.probes, gen)
            for totals, values in zip((md, out), sums):
                for total, value in zip(totals, values):
                    total += value.cpu()
            bar.update(x[part].shape[0])
    samples = settings.probes * x.shape[0]
    return {g.name: {"md": m / samples, "out": o / (samples * pixels)}
            for g, m, o in zip(groups, md, out)}


def hybrid_terms(adapter: Adapter, model: nn.Module, x: Tensor, settings: OptinSettings,
                 progress: bool = True, groups: list[UnitGroup] | None = None
                 ) -> dict[str, dict[str, Tensor]]:
    """Exact terms for the head groups (few units, large effects), sketched terms for the rest."""
    groups = adapter.groups(model) if groups is None else groups
    heads = [g for g in groups if g.kind == "head"]
    others = [g for g in groups if g.kind != "head"]
    terms = {**optin_terms(adapter, model, x, settings, progress, heads),
             **sketch_terms(adapter, model, x, settings, progress, others)}
    return {g.name: terms[g.name] for g in groups}
