"""Figures of a run: PSNR against MACs, kept units per module; shared figure helpers."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..fileio import atomic_path
from ..layout import COMPENSATED, FINETUNED, MODEL_STAGES, REBUILT, TEACHER, ZEROED
from .collect import method_key


STAGE_STYLE = {  # marker, filled, line style joining the budgets, legend label
    ZEROED: ("v", True, ":", "zeroed (no fine-tuning)"),
    COMPENSATED: ("D", True, "--", "compensated (least squares, no training)"),
    FINETUNED: ("o", True, "-", "finetuned (feature KD, zeroed units stay zero)"),
    REBUILT: ("s", False, "", "rebuilt (physically smaller)"),
}


def figure(width: float, height: float):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def save_png(fig: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def method_colors(methods: Iterable[str]) -> dict[str, str]:
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def plot_psnr_vs_macs(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                      dataset: str) -> Path:
    """PSNR against effective full MACs per method and stage, teacher and bicubic as references.

    Colours are methods, markers stages; each (method, stage) joins its budgets. Rebuilt points
    are hollow squares: they sit on their fine-tuned point when the rebuild is exact. Methods
    drawn first have larger markers, so methods that reach the same point stay visible.
    """
    from matplotlib.lines import Line2D

    part = [r for r in rows if r["dataset"] == dataset]
    if not part:
        raise ValueError(f"no rows for data set {dataset!r}")
    teacher = next((r for r in part if r["stage"] == "teacher"), None)
    methods = list(dict.fromkeys(r["method"] for r in part if r["method"]))
    colors = method_colors(methods)
    fig = figure(9.0, 5.4)
    ax = fig.add_subplot()
    for i, method in enumerate(methods):
        grow = 1.0 + 0.35 * (len(methods) - 1 - i)
        for stage, (marker, filled, line, _) in STAGE_STYLE.items():
            pts = sorted((r["effective_macs_full"] / 1e9, r["psnr"]) for r in part
                         if r["method"] == method and r["stage"] == stage
                         and r["effective_macs_full"] is not None)
            if not pts:
                continue
            xs, ys = zip(*pts)
            ax.plot(xs, ys, linestyle=line or "none", color=colors[method], linewidth=1.2,
                    marker=marker, markersize=6.5 * grow * (1.5 if not filled else 1.0),
                    markerfacecolor=colors[method] if filled else "none",
                    markeredgecolor=colors[method], markeredgewidth=1.4, alpha=0.9,
                    zorder=2 + i)
    handles = []
    model_psnr = [r["psnr"] for r in part if r["stage"] in (*MODEL_STAGES, TEACHER)]
    lo, hi = min(model_psnr, default=0.0), max(model_psnr, default=1.0)
    pad = max(0.05, 0.08 * (hi - lo))
    if teacher is not None:
        ax.axhline(teacher["psnr"], color="0.35", linestyle="--", linewidth=1, zorder=1)
        if teacher["effective_macs_full"] is not None:
            ax.plot([teacher["effective_macs_full"] / 1e9], [teacher["psnr"]], marker="*",
                    markersize=15, color="black", linestyle="none", zorder=10)
        handles.append(Line2D([], [], color="black", marker="*", markersize=12, linestyle="--",
                              label=f"teacher ({teacher['psnr']:.3f} dB)"))
    off_scale = []
    references = [r for r in part if r["stage"] not in (*MODEL_STAGES, TEACHER)]
    for j, row in enumerate(references):
        style = (0, (1, 1.5)) if j == 0 else (0, (4, 1, 1, 1))
        label = f"{row['stage']} ({row['psnr']:.3f} dB, no MACs)"
        if model_psnr and not hi - 2.5 * max(hi - lo, 0.2) <= row["psnr"] <= hi + 1.0:
            off_scale.append(f"{row['stage']}: {row['psnr']:.3f} dB "
                             f"({'below' if row['psnr'] < lo else 'above'} this range)")
            label += ", off the scale"
        else:
            ax.axhline(row["psnr"], color="0.2", linestyle=style, linewidth=1.2, zorder=1)
            lo, hi = min(lo, row["psnr"]), max(hi, row["psnr"])
        handles.append(Line2D([], [], color="0.2", linestyle=style, label=label))
    ax.set_ylim(lo - pad, hi + pad)
    if off_scale:
        ax.text(0.01, 0.015, "\n".join(off_scale), transform=ax.transAxes, fontsize=9,
                va="bottom", ha="left", color="0.2",
                bbox=dict(boxstyle="round,pad=0.3", facecolor="white", edgecolor="0.6"))
    handles += [Line2D([], [], color=colors[m], linewidth=3, label=m) for m in methods]
    handles += [Line2D([], [], color="0.3", marker=marker, linestyle=line or "none",
                       markerfacecolor="0.3" if filled else "none", markeredgecolor="0.3",
                       markersize=8, label=label)
                for marker, filled, line, label in STAGE_STYLE.values()]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9,
              frameon=False, borderaxespad=0)
    ax.set_xlabel("full MACs per image (G); effective count of the pruned structure")
    ax.set_ylabel("PSNR Y (dB)")
    sizes = sorted({r["macs_lr_size"] for r in part if r["macs_lr_size"]})
    ax.set_title(f"{part[0]['run']}: PSNR against MACs on {dataset}"
                 + (f" (LR {', '.join(sizes)})" if sizes else ""), fontsize=11)
    ax.grid(True, alpha=0.3)
    if teacher is not None and teacher["effective_macs_full"]:
        total = teacher["effective_macs_full"] / 1e9
        ax.set_xlim(0, total * 1.06)
        top = ax.secondary_xaxis("top", functions=(lambda x: x / total, lambda r: r * total))
        top.set_xlabel("MAC ratio to the teacher")
    return save_png(fig, path)


def _group_label(name: str, units: int, kind: str) -> str:
    """``blocks.0.0.iasa_attn`` -> the name and what its units are (``kind`` from the artifact)."""
    if kind.endswith("_channel"):
        return f"{name}\n({units} {kind}s per head)"
    return f"{name}\n({units} {kind}{'' if units == 1 else 's'})"


def _group_kinds(masks_by_budget: Mapping[tuple[str, str], Mapping[str, Any]]) -> dict[str, str]:
    """``{group: kind}`` recorded by the masks artifacts (plain masks record none)."""
    return {str(g["name"]): str(g["kind"]) for value in masks_by_budget.values()
            for g in value.get("groups", ()) if "masks" in value}


def kept_bar(masks: Mapping[str, Any], group: str) -> tuple[float, str, int]:
    """(bar height, bar label, units for the axis label) of one group's mask.

    A channel group (``<head group>.qk`` / ``.v``) shows the channels kept per kept head
    against a head's full width; any other group its kept units against all of them.
    """
    mask = torch.as_tensor(masks[group]).flatten()
    kept, total = int((mask != 0).sum()), mask.numel()
    parent = group.rsplit(".", 1)[0]
    if group.endswith((".qk", ".v")) and parent in masks:
        heads = torch.as_tensor(masks[parent]).flatten()
        per_head = total // heads.numel() if heads.numel() else 0
        kept_heads = int((heads != 0).sum())
        width = kept // kept_heads if kept_heads else 0
        return (width / per_head if per_head else 0.0), f"{width}", per_head
    return (kept / total if total else 0.0), f"{kept}", total


def plot_kept_units(masks_by_budget: Mapping[tuple[str, str], Mapping[str, Any]],
                    path: str | os.PathLike) -> Path:
    """Kept fraction of the heads and neurons of every module, one subplot per method.

    Channel groups show the q/k or v channels kept per kept head (see :func:`kept_bar`).

    ``masks_by_budget``: ``{(method, budget): masks artifact}`` (as :func:`load_masks` returns)
    or ``{(method, budget): {group: 0/1 mask}}``. Bars are grouped per module, one per budget,
    labelled with the kept count.
    """
    def group_masks(value: Mapping[str, Any]) -> Mapping[str, Any]:
        return value["masks"] if "masks" in value else value

    methods = list(dict.fromkeys(m for m, _ in sorted(masks_by_budget,
                                                      key=lambda k: method_key(k[0]))))
    if not methods:
        fig = figure(6, 2)
        fig.text(0.5, 0.5, "no pruning masks in this run", ha="center", va="center")
        return save_png(fig, path)
    groups = list(dict.fromkeys(g for v in masks_by_budget.values() for g in group_masks(v)))
    budgets = sorted({b for _, b in masks_by_budget}, key=lambda b: (-float(b), b))
    cmap_colors = _budget_colors(len(budgets))
    width = 0.8 / len(budgets)
    per_group = 0.55 + 0.22 * len(budgets)
    fig = figure(min(max(8.0, per_group * len(groups) + 1.5), 30.0), 2.6 * len(methods) + 1.6)
    axes = fig.subplots(len(methods), 1, sharex=True, squeeze=False)[:, 0]
    units, kinds = {}, _group_kinds(masks_by_budget)
    for ax, method in zip(axes, methods):
        for j, budget in enumerate(budgets):
            value = masks_by_budget.get((method, budget))
            if value is None:
                continue
            masks = group_masks(value)
            xs, fractions, labels = [], [], []
            for k, group in enumerate(groups):
                if group not in masks:
                    continue
                fraction, label, units[group] = kept_bar(masks, group)
                xs.append(k - 0.4 + width * (j + 0.5))
                fractions.append(fraction)
                labels.append(label)
            ratio = value.get("achieved_mac_ratio") if "masks" in value else None
            label = f"budget {budget}" + (f" (MAC ratio {ratio:.3f})" if ratio is not None
                                          else "")
            bars = ax.bar(xs, fractions, width=width * 0.92, color=cmap_colors[j], label=label)
            if len(budgets) <= 4:
                ax.bar_label(bars, labels=labels, fontsize=7, padding=1)
        ax.set_ylim(0, 1.18)
        ax.set_ylabel("kept fraction")
        ax.set_title(method, fontsize=11, loc="left", fontweight="bold")
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc="upper right", ncols=len(budgets), frameon=False)
        for k in range(1, len(groups)):
            if groups[k].split(".")[:2] != groups[k - 1].split(".")[:2]:
                ax.axvline(k - 0.5, color="0.6", linewidth=0.8)
    axes[-1].set_xticks(range(len(groups)),
                        [_group_label(g, units.get(g, 0), kinds.get(g, "unit")) for g in groups],
                        rotation=35 if len(groups) <= 12 else 90, ha="right",
                        rotation_mode="anchor", fontsize=8)
    fig.suptitle("Kept heads and neurons per module (bar labels: units kept; for channels, "
                 "channels kept per kept head)", fontsize=12)
    return save_png(fig, path)


def _budget_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.15 + 0.7 * i / max(n - 1, 1)) for i in range(n)]
