"""Helpers shared by the pruning benchmarks: ../shared, threads, memory, and unit subsets.

:class:`UnitSubset` restricts an adapter to the first units of some of its groups, so that the
library's own scorers (``optin_terms``, ``naive_optin_terms``) run unmodified on a sample of units:
the masks they build for a restricted group are padded with ones (the units outside the sample
stay), and every masked run is timestamped so that the time of each group can be read off one call.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from srprune.pruning.adapter import Adapter, UnitGroup  # noqa: F401 (UnitSubset wraps an Adapter)

SHARED = Path(__file__).resolve().parents[2] / "shared"


def random_released_x4(seed: int = 0) -> nn.Module:
    """Released-size CATANet x4 with seeded random weights and centres (``initted``), eval mode."""
    from srprune.models import create_model

    torch.manual_seed(seed)
    model = create_model("catanet", upscale=4)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for tab, _ in model.blocks:
            tab.means.copy_(torch.randn(tab.means.shape, generator=gen))
            tab.initted.fill_(True)
    return model.eval()


def require_shared(*relative: str) -> Path:
    """``../shared``, or exit with a message saying what is missing."""
    missing = [r for r in relative if not (SHARED / r).exists()]
    if not SHARED.is_dir() or missing:
        what = SHARED if not SHARED.is_dir() else ", ".join(str(SHARED / r) for r in missing)
        sys.exit(f"this benchmark needs the shared read-only data, which is absent here: {what} "
                 f"not found (a fresh clone has no ../shared; see the project README)")
    return SHARED


def set_threads(threads: int) -> str:
    """Pin torch's intra-op threads; returns a line saying so, for the output."""
    torch.set_num_threads(threads)
    return (f"torch {torch.__version__}, {torch.get_num_threads()} intra-op thread(s) "
            f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
            f"load average at start {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class UnitSubset:
    """``inner`` restricted to the first ``counts[name]`` units of the named groups.

    Duck-typed: it overrides what the scorers call and hands every other adapter method to
    ``inner`` unchanged, so it keeps working as the Adapter interface grows. Groups come out in
    the inner adapter's (forward) order. Masks narrower than a group are padded with ones before
    they reach the model. ``marks`` records ``(group name, time)`` at every masked run the
    scorers start (``run_from`` or ``set_masks`` with masks), see :meth:`group_times`.
    """

    def __init__(self, inner: Adapter, model: nn.Module, counts: dict[str, int]):
        self.inner = inner
        self.full = {g.name: g for g in inner.groups(model)}
        unknown = sorted(set(counts) - set(self.full))
        if unknown:
            raise ValueError(f"unknown groups {unknown}")
        self.subset = [replace(g, count=min(counts[g.name], g.count))
                       for g in self.full.values() if g.name in counts]
        self.marks: list[tuple[str, float]] = []

    def _pad(self, name: str, mask: Tensor) -> Tensor:
        width = self.full[name].count
        if mask.shape[-1] == width:
            return mask
        ones = torch.ones(*mask.shape[:-1], width - mask.shape[-1], dtype=mask.dtype,
                          device=mask.device)
        return torch.cat([mask, ones], dim=-1)

    def groups(self, model: nn.Module) -> list[UnitGroup]:
        return list(self.subset)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def set_masks(self, model: nn.Module, masks: dict[str, Tensor] | None) -> None:
        if masks:
            self.marks.append((next(iter(masks)), time.perf_counter()))
            masks = {name: self._pad(name, mask) for name, mask in masks.items()}
        self.inner.set_masks(model, masks)

    def trajectory(self, model: nn.Module, x: Tensor) -> tuple[list[Tensor], Tensor]:
        return self.inner.trajectory(model, x)

    def cache(self, model: nn.Module, x: Tensor) -> Any:
        return self.inner.cache(model, x)

    def run_from(self, model: nn.Module, cache: Any, group: UnitGroup,
                 masks: Tensor) -> tuple[list[Tensor], Tensor]:
        self.marks.append((group.name, time.perf_counter()))
        return self.inner.run_from(model, cache, self.full[group.name],
                                   self._pad(group.name, masks))

    def group_times(self, start: float, end: float) -> tuple[float, dict[str, float]]:
        """(setup seconds before the first masked run, seconds per group) of one scorer call.

        A group's time runs from its first masked run to the first masked run of the next group
        (or ``end``), so it includes building the masks and the distortion terms.
        """
        if not self.marks:
            return end - start, {}
        times: dict[str, float] = {}
        stamps = self.marks + [("", end)]
        for (name, t0), (_, t1) in zip(stamps, stamps[1:]):
            times[name] = times.get(name, 0.0) + t1 - t0
        return self.marks[0][1] - start, times


def per_block(measured: dict[int, float], blocks: int) -> list[float]:
    """Per-unit times of every block, linearly interpolated between the measured blocks."""
    xs = sorted(measured)
    return list(np.interp(range(blocks), xs, [measured[b] for b in xs]))


def sample_counts(groups: list[UnitGroup], blocks: list[int], units: int) -> dict[str, int]:
    """The groups of ``blocks``: all heads, the first ``units`` neurons of each FFN."""
    return {g.name: (g.count if g.kind == "head" else min(units, g.count))
            for g in groups if g.block in blocks}


def suffix(name: str) -> str:
    """``blocks.3.1.layer.0.fn`` -> ``1.layer.0.fn`` (the group's kind of module)."""
    return name.split(".", 2)[2]


def extrapolate(groups: list[UnitGroup], per_unit: dict[str, float], setup: float) -> float:
    """Seconds to score every unit of ``groups`` from per-unit times measured on some blocks.

    Per kind of module (TAB heads, TAB FFN, LRSA heads, LRSA FFN), the per-unit time of an
    unmeasured block is interpolated linearly between the measured blocks.
    """
    by_module: dict[str, dict[int, float]] = {}
    for g in groups:
        if g.name in per_unit:
            by_module.setdefault(suffix(g.name), {})[g.block] = per_unit[g.name]
    n_blocks = 1 + max(g.block for g in groups)
    curves = {mod: per_block(m, n_blocks) for mod, m in by_module.items()}
    return setup + sum(g.count * curves[suffix(g.name)][g.block] for g in groups)


def fmt_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def training_split(root: Path | None = None) -> dict[str, Path]:
    """Folders of symlinks: ``train`` (T91 + BSD200 less its validation part) and ``val``.

    The validation split is fixed: BSD200 sorted by file name, every 10th image starting with
    the first (20 images). Defaults are chosen on ``val``; Set5 is only for reporting.
    """
    shared = require_shared("data/T91/HR", "data/BSD200/HR")
    root = Path(root or Path(os.environ.get("TMPDIR", "/tmp")) / "srprune_split")
    bsd = sorted((shared / "data/BSD200/HR").glob("*.png"))
    parts = {"val": bsd[::10],
             "train": sorted((shared / "data/T91/HR").glob("*.png"))
             + [p for i, p in enumerate(bsd) if i % 10]}
    folders = {}
    for name, files in parts.items():   # idempotent: other benchmark processes may share root
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        links = {f"{path.parent.parent.name}_{path.name}": path for path in files}
        for stale in folder.iterdir():
            if stale.name not in links or Path(os.readlink(stale)) != links[stale.name]:
                stale.unlink(missing_ok=True)
        for link, path in links.items():
            try:
                (folder / link).symlink_to(path)
            except FileExistsError:
                pass
        folders[name] = folder
    return folders


def knapsack_masks(adapter: Adapter, model: nn.Module, groups: list[UnitGroup],
                   scores: dict[str, Tensor], budget: float) -> dict[str, Tensor]:
    """The library's knapsack masks (unmeasured, so scorers are compared on their scores only)."""
    from srprune.pruning.selection import Selector

    lr_size = adapter.reference_lr_size(model)
    selector = Selector(groups, scores, lambda kept: adapter.macs(model, kept, lr_size))
    return selector.select(budget, "knapsack")[0].masks


def zeroed_psnr(teacher: Path, masks: dict[str, Tensor], pairs: Any, scale: int) -> float:
    """PSNR (Y, uint8 output) on ``pairs`` of the teacher with the masked units zeroed."""
    from srprune import load_model
    from srprune.evaluate import score_model
    from srprune.pruning.registry import adapter_for

    model = load_model(teacher)
    adapter_for(model).zero_units(model, masks)
    return score_model(model, pairs, scale, ssim=False)["psnr"]
