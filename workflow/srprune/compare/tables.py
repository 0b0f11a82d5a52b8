"""The comparison rows as CSV and Markdown tables."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..fileio import save_text
from .collect import COLUMNS, MEASURED


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """All columns (:data:`COLUMNS`, then any extra ones), full precision, empty for None."""
    columns = list(COLUMNS) + [k for row in rows for k in row if k not in COLUMNS]
    columns = list(dict.fromkeys(columns))
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(c)) for c in columns])
    save_text(buffer.getvalue(), path)
    return Path(path)


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    if value is None:
        return "–"
    return format(value if scale == 1.0 else value / scale, spec)


def _signed(value: Any, digits: int) -> str:
    return "–" if value is None else f"{value:+.{digits}f}"


# (header, formatter) of the Markdown columns; latency columns appear only when measured
_MD_COLUMNS = [
    ("stage", lambda r: r["stage"]),
    ("method", lambda r: r["method"] or ""),
    ("budget", lambda r: r["budget"] or ""),
    ("params (nonzero)", lambda r: _fmt(r["params_nonzero"], ",d")),
    ("params ratio", lambda r: _fmt(r["params_ratio"], ".3f")),
    ("MACs run (G)", lambda r: _fmt(r["macs_full"], ".3f", 1e9)),
    ("MACs effective (G)", lambda r: _fmt(r["effective_macs_full"], ".3f", 1e9)),
    ("MAC ratio", lambda r: _fmt(r["mac_ratio"], ".3f")),
    ("prunable MAC ratio", lambda r: _fmt(r["prunable_mac_ratio"], ".3f")),
    ("latency (ms)", lambda r: _fmt(r["latency_ms"], ".2f")),
    ("speedup", lambda r: _fmt(r["speedup"], ".3f")),
    ("latency from", lambda r: r["latency_source"] or ""),
    ("ONNX Runtime (ms)", lambda r: _fmt(r["onnx_latency_ms"], ".2f")),
    ("ONNX speedup", lambda r: _fmt(r["onnx_speedup"], ".3f")),
    ("PSNR (dB)", lambda r: _fmt(r["psnr"], ".3f")),
    ("ΔPSNR", lambda r: _signed(r["delta_psnr"], 3)),
    ("SSIM", lambda r: _fmt(r["ssim"], ".4f")),
    ("ΔSSIM", lambda r: _signed(r["delta_ssim"], 4)),
]
_LATENCY_HEADERS = {"latency (ms)", "speedup", "latency from"}
_ONNX_HEADERS = {"ONNX Runtime (ms)", "ONNX speedup"}

_MD_NOTES = """\
MACs are per image at the reference LR size (output 1280x720), 1 MAC = one multiply-add,
attention included (`macs_full`). *MACs run*: what the evaluated file computes as it is; the
zeroed, compensated and fine-tuned files keep the teacher's
dense shapes, so theirs is the teacher's count. *MACs effective*: what the pruned structure
costs: for zeroed, compensated and fine-tuned rows the masks artifact's `macs_pruned` (analytic count with only the kept heads
and neurons), for the rebuilt model its own measured count. *MAC ratio*: effective MACs over the
teacher's (the masks' `achieved_mac_ratio` for zeroed, compensated and fine-tuned rows).
*prunable MAC ratio*: the same over the part pruning can remove (the floor, every unit removed,
subtracted from both). *params ratio*:
nonzero parameters over the teacher's parameters. Δ: difference to the teacher on the same data
set. Bicubic has no MACs counted. *latency*: median of interleaved rounds in one process
(`srprune time-models`, `latency.json`), teacher and rebuilt models each measured; *speedup*:
median over the rounds of the teacher's time over the model's. Zeroed, compensated and
fine-tuned files run the teacher's dense shapes: they carry its latency and a speed-up of 1
(*latency from*: dense (teacher's)). *ONNX Runtime*: the rebuilt model's exported `.onnx`
file run by ONNX Runtime (CPU, same threads, same rounds); *ONNX speedup*: the PyTorch
teacher's time over it (only with `export.formats: [onnx]`).
"""


def _latency_note(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """A line saying where, with how many threads and at which size the times were taken."""
    setups = sorted({(r["latency_machine"], r["latency_threads"], r["latency_lr_size"])
                     for r in rows if r["latency_source"] == MEASURED}, key=str)
    return [f"Latency measured side by side on {machine}, {threads} thread(s), LR input "
            f"{size}, batch 1." for machine, threads, size in setups] + ([""] if setups else [])


def format_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """A Markdown document: one table per data set, then what the columns mean."""
    runs = sorted({r["run"] for r in rows})
    lines = [f"# srprune comparison: {', '.join(runs) or '(no rows)'}", ""]
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        part = [r for r in rows if r["dataset"] == dataset]
        measured = any(r["latency_ms"] is not None for r in part)
        onnx = any(r["onnx_latency_ms"] is not None for r in part)
        columns = [c for c in _MD_COLUMNS if (measured or c[0] not in _LATENCY_HEADERS)
                   and (onnx or c[0] not in _ONNX_HEADERS)]
        sizes = sorted({r["macs_lr_size"] for r in part if r["macs_lr_size"]})
        lines += [f"## {dataset}", "", *_latency_note(part)]
        if sizes:
            lines += [f"MACs counted at LR input {', '.join(sizes)}.", ""]
        lines.append("| " + " | ".join(h for h, _ in columns) + " |")
        lines.append("|" + "|".join(":---" if h in ("stage", "method", "latency from") else "---:"
                                    for h, _ in columns) + "|")
        for row in part:
            lines.append("| " + " | ".join(f(row) for _, f in columns) + " |")
        if not measured:
            lines += ["", "Latency was not measured (no `latency.json` of `srprune time-models`)."]
        lines.append("")
    lines += ["## Columns", "", _MD_NOTES]
    return "\n".join(lines)


def write_markdown(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    save_text(format_markdown(rows), path)
    return Path(path)
