"""One table and a few figures for a whole run: teacher, bicubic and every pruned stage.

The comparison reads what the workflow wrote under ``results/<run>/`` (the paths of
:mod:`srprune.layout`) and never recomputes a number differently from the file it comes from:

* ``eval/teacher_<dataset>.json`` and ``eval/bicubic_<dataset>.json`` (``srprune evaluate``);
* ``latency.json`` (``srprune time-models``: the teacher and every rebuilt model timed side by
  side in one process; see :mod:`srprune.latency`), when present;
* per method and budget ``<method>/<budget>/<arch>_pruning_masks.pth`` (``srprune
  search-masks``), ``<method>/<budget>/eval_<stage>_<dataset>.json`` for the stages ``zeroed``
  (the teacher with the removed units set to zero), ``compensated`` (its least-squares refit),
  ``finetuned`` (feature KD) and ``rebuilt``, and, when present,
  ``<method>/<budget>/sparsity.json`` (``srprune inspect``).

Rows: one per (stage, method, budget, dataset); the ``teacher`` and ``bicubic`` rows have no
method or budget. Columns (:data:`COLUMNS`), empty where a number does not exist:

``run``                 name of the results folder (``results/<run>``)
``stage``               teacher, bicubic, zeroed, compensated, finetuned or rebuilt
``method``, ``budget``  unit scores (optin, magnitude, random) and MAC budget (the folder name)
``dataset``             evaluation data set
``params_total``        parameters of the evaluated file (eval JSON ``params``)
``params_nonzero``      of which nonzero (eval JSON ``params_nonzero``)
``macs_thop``           conv/Linear MACs as thop counts them (eval JSON ``macs_thop``)
``macs_full``           every MAC of the evaluated file as it runs (eval JSON ``macs_full``)
``effective_macs_full`` full MACs of the structure the row stands for (see below)
``macs_lr_size``        LR input size "HxW" of the MAC counts (eval JSON ``macs_lr_size``)
``latency_ms``          median latency (ms) from ``latency.json`` (see below)
``latency_source``      ``measured`` (its own row of ``latency.json``: teacher, rebuilt) or
                        ``dense (teacher's)`` (zeroed, compensated, fine-tuned files)
``psnr``, ``ssim``      mean Y-channel PSNR (dB) and SSIM (eval JSON)
``mac_ratio``           effective MACs relative to the teacher's (see below)
``prunable_mac_ratio``  the same for the prunable part only: (effective - floor) / (teacher -
                        floor), the floor being the model with every unit removed (masks
                        artifact ``prunable_mac_ratio``; 1 for the teacher)
``params_ratio``        ``params_nonzero`` / teacher ``params_total``
``speedup``             ``latency.json`` ``speedup``: median over the interleaved rounds of
                        the teacher's time over the model's (1 for dense rows)
``delta_psnr``          ``psnr`` - teacher ``psnr`` (same data set)
``delta_ssim``          ``ssim`` - teacher ``ssim``
``masks_consistent``    from sparsity.json: the fully-zero units are exactly the masked ones
                        (zeroed, compensated and fine-tuned files only; empty without
                        sparsity.json)
``latency_lr_size``     LR input "HxW" the latencies were measured at
``latency_threads``     threads of the timing process
``latency_machine``     where: CPU model name and capability (e.g. AVX2), or the GPU
``onnx_latency_ms``     rebuilt rows: median latency of its exported ``.onnx`` file under ONNX
                        Runtime (CPU, same threads), timed in the same rounds (``latency.json``
                        rows of backend ``onnxruntime``; empty when ONNX export is off)
``onnx_speedup``        the PyTorch teacher's time over that, median over the rounds

Which MAC number each stage reports
-----------------------------------
All counts are for one image at the reference LR size (output 1280x720) and follow
:mod:`srprune.complexity` (1 MAC = one multiply-add, attention included in ``macs_full``).

* ``teacher``: ``macs_full`` is the dense teacher's count; ``effective_macs_full`` is the same
  number and ``mac_ratio`` is 1.
* ``bicubic``: no model, no MACs counted (``macs_*`` empty, ``mac_ratio`` empty).
* ``zeroed``, ``compensated`` and ``finetuned``: these files are the teacher's
  architecture with the removed heads and neurons set to zero, so they still compute dense arithmetic and their eval
  JSON ``macs_full`` is the teacher's count; that is what ``macs_full`` reports (what running the
  file costs). What the *pruned structure* costs is the masks artifact's ``macs_pruned`` (the
  adapter's closed-form count of the architecture with only the kept units, at the masks'
  ``macs_lr_size``): that is ``effective_macs_full``, and ``mac_ratio`` is the artifact's
  ``achieved_mac_ratio`` (= ``macs_pruned`` / ``macs_teacher``, the same analytic count).
* ``rebuilt``: the physically smaller model; ``macs_full`` is measured on it (its eval JSON), and
  ``effective_macs_full`` is that same number; ``mac_ratio`` = ``macs_full`` / teacher
  ``macs_full``. It should equal the masks' ``macs_pruned``: a difference is warned about.

Latency
-------
Every latency comes from one ``srprune time-models`` run (rule ``latency``), which times the
teacher and each rebuilt model (label ``<method>/<budget>``) in interleaved rounds while
nothing else runs. The zeroed, compensated and fine-tuned files keep the teacher's dense
shapes, so they run what the teacher runs: their rows carry the teacher's latency and a
speed-up of 1 rather than a timing of their own. Only the PyTorch rows (``backend``
``pytorch``) are read. Bicubic has none.

A masks artifact whose ``macs_teacher`` or ``macs_lr_size`` differs from the teacher's eval JSON
gives a warning too (its ratio would then not compare with the rebuilt one).

Public API: :func:`collect`, :func:`load_masks`, :func:`read_latency`, :func:`write_csv`, :func:`write_markdown`,
:func:`plot_psnr_vs_macs`, :func:`plot_kept_units`, :func:`compare`.

The parts: :mod:`.collect` (reading the results into rows), :mod:`.tables` (CSV and
Markdown) and :mod:`.plots` (figures).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..models import DEFAULT_ARCH
from .collect import (COLUMNS, MissingResultError, ResultFormatError, collect, discover,
                      latency_label, load_masks, read_latency, read_masks)
from .plots import plot_kept_units, plot_psnr_vs_macs
from .tables import format_markdown, write_csv, write_markdown


def compare(results_dir: str | os.PathLike, out_dir: str | os.PathLike,
            datasets: Sequence[str] | None = None,
            layout: Mapping[str, Sequence[str]] | None = None,
            latency: str | os.PathLike | None = None,
            arch: str = DEFAULT_ARCH) -> dict[str, Any]:
    """Write ``comparison.csv``, ``comparison.md``, ``psnr_vs_macs_<dataset>.png`` and
    ``kept_units.png`` into ``out_dir``.

    Returns ``{"csv": Path, "markdown": Path, "psnr_vs_macs": {dataset: Path},
    "kept_units": Path}``. ``datasets``, ``layout``, ``latency`` and ``arch`` as in :func:`collect`.
    """
    root = Path(results_dir)
    out = Path(out_dir)
    layout = discover(root) if layout is None and root.is_dir() else layout
    rows = collect(root, datasets, layout, latency=latency, arch=arch)
    paths: dict[str, Any] = {"csv": write_csv(rows, out / "comparison.csv"),
                             "markdown": write_markdown(rows, out / "comparison.md"),
                             "psnr_vs_macs": {}}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        paths["psnr_vs_macs"][dataset] = plot_psnr_vs_macs(
            rows, out / f"psnr_vs_macs_{dataset}.png", dataset)
    paths["kept_units"] = plot_kept_units(load_masks(root, layout, arch), out / "kept_units.png")
    return paths


__all__ = ["COLUMNS", "MissingResultError", "ResultFormatError", "collect", "compare",
           "discover", "format_markdown", "latency_label", "load_masks", "plot_kept_units",
           "plot_psnr_vs_macs", "read_latency", "read_masks", "write_csv", "write_markdown"]
