"""One table and a few figures for a whole run: teacher, bicubic and every pruned stage.

The comparison reads what the workflow wrote under ``results/<run>/`` and never recomputes a
number differently from the file it comes from:

* ``eval/teacher_<dataset>.json`` and ``eval/bicubic_<dataset>.json`` (``srprune evaluate``);
* ``latency.json`` (``srprune time-models``: the teacher and every rebuilt model timed side by
  side in one process; see :mod:`srprune.latency`), when present;
* per method and budget ``<method>/<budget>/catanet_pruning_masks.pth`` (``srprune
  search-masks``), ``<method>/<budget>/eval_<stage>_<dataset>.json`` for the stages ``pruned``
  (the zeroed teacher), ``compensated`` (its least-squares refit, ``srprune compensate``),
  ``finetuned_feature_kd`` and ``rebuilt``, and, when present,
  ``<method>/<budget>/sparsity.json`` (``srprune inspect``).

Rows: one per (stage, method, budget, dataset); the ``teacher`` and ``bicubic`` rows have no
method or budget. Columns (:data:`COLUMNS`), empty where a number does not exist:

``run``                 name of the results folder (``results/<run>``)
``stage``               teacher, bicubic, pruned, compensated, finetuned_feature_kd or rebuilt
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
* ``pruned``, ``compensated`` and ``finetuned_feature_kd``: these files are the teacher's
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
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from .fileio import atomic_path, save_text

MODEL_STAGES = ("pruned", "compensated", "finetuned_feature_kd", "rebuilt")  # catanet_<stage>.pth
ZEROED_STAGES = ("pruned", "compensated", "finetuned_feature_kd")  # dense, masked units set to 0
STAGES = ("teacher", "bicubic", *MODEL_STAGES)
METHOD_ORDER = ("optin", "magnitude", "random")
NOT_METHODS = {"eval", "logs"}
MASKS_FILE = "catanet_pruning_masks.pth"
SPARSITY_FILE = "sparsity.json"
LATENCY_FILE = "latency.json"
MEASURED, DENSE = "measured", "dense (teacher's)"

COLUMNS = ("run", "stage", "method", "budget", "dataset", "params_total", "params_nonzero",
           "macs_thop", "macs_full", "effective_macs_full", "macs_lr_size", "latency_ms",
           "latency_source", "psnr", "ssim", "mac_ratio", "prunable_mac_ratio", "params_ratio",
           "speedup", "delta_psnr", "delta_ssim", "masks_consistent", "latency_lr_size",
           "latency_threads", "latency_machine", "onnx_latency_ms", "onnx_speedup")

# what produces each file, for the error messages
_PRODUCERS = {
    "teacher": "srprune evaluate --model <teacher> (rule evaluate_teacher)",
    "bicubic": "srprune evaluate --model bicubic (rule evaluate_baseline)",
    "stage": "srprune evaluate --model catanet_<stage>.pth (rule evaluate_stage)",
    "masks": "srprune search-masks (rule search_masks)",
    "latency": "srprune time-models (rule latency)",
}


class MissingResultError(FileNotFoundError):
    """A file the comparison needs is not in the results folder."""

    def __init__(self, path: str | os.PathLike, producer: str):
        super().__init__(f"missing result file {path} (written by {producer}); "
                         f"run the workflow for it first")
        self.filename = str(path)

    def __str__(self) -> str:
        return str(self.args[0])  # not OSError's "[Errno None] None: <filename>"


class ResultFormatError(ValueError):
    """A results file exists but does not hold what the comparison reads."""


# --------------------------------------------------------------------------- reading
def _is_budget(name: str) -> bool:
    try:
        value = float(name)
    except ValueError:
        return False
    return math.isfinite(value) and not name.startswith(".")


def _method_key(name: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER), name)


def discover(results_dir: str | os.PathLike) -> dict[str, list[str]]:
    """``{method: [budget folder names]}`` found under ``results_dir``.

    A method is a sub-folder (not ``eval``/``logs``/hidden) holding at least one folder whose name
    is a number (the budget). Methods come in the order optin, magnitude, random, then others
    alphabetically; budgets from the largest to the smallest.
    """
    root = Path(results_dir)
    found: dict[str, list[str]] = {}
    for method_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if method_dir.name in NOT_METHODS or method_dir.name.startswith("."):
            continue
        budgets = [p.name for p in method_dir.iterdir() if p.is_dir() and _is_budget(p.name)]
        if budgets:
            found[method_dir.name] = sorted(budgets, key=lambda b: (-float(b), b))
    return {m: found[m] for m in sorted(found, key=_method_key)}


def _read_json(path: Path, producer: str) -> dict[str, Any]:
    if not path.is_file():
        raise MissingResultError(path, producer)
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResultFormatError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ResultFormatError(f"{path} holds a {type(data).__name__}, not a JSON object")
    return data


def _require(data: Mapping[str, Any], keys: Iterable[str], path: Path) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise ResultFormatError(f"{path} lacks the key(s) {', '.join(missing)}")


EVAL_KEYS = ("psnr", "params", "params_nonzero", "macs_thop", "macs_full")
MASKS_KEYS = ("masks", "macs_teacher", "macs_pruned", "achieved_mac_ratio")


def _read_eval(path: Path, producer: str) -> dict[str, Any]:
    data = _read_json(path, producer)
    _require(data, EVAL_KEYS, path)
    return data


def read_masks(path: str | os.PathLike) -> dict[str, Any]:
    """A masks artifact (``torch.load(weights_only=True)``), checked to be one."""
    path = Path(path)
    if not path.is_file():
        raise MissingResultError(path, _PRODUCERS["masks"])
    try:
        artifact = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise ResultFormatError(f"{path} is not a readable masks artifact: {err}") from None
    if not isinstance(artifact, dict) or artifact.get("kind") != "pruning_masks":
        raise ResultFormatError(f"{path} is not a masks artifact (kind 'pruning_masks')")
    _require(artifact, MASKS_KEYS, path)
    return artifact


def load_masks(results_dir: str | os.PathLike,
               layout: Mapping[str, Sequence[str]] | None = None
               ) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(method, budget): masks artifact}`` for every budget folder (``layout``: which)."""
    root = Path(results_dir)
    layout = discover(root) if layout is None else layout
    return {(method, budget): read_masks(root / method / budget / MASKS_FILE)
            for method, budgets in layout.items() for budget in budgets}


def _datasets(root: Path) -> list[str]:
    eval_dir = root / "eval"
    names = sorted(p.name[len("teacher_"):-len(".json")] for p in eval_dir.glob("teacher_*.json"))
    if not names:
        raise MissingResultError(eval_dir / "teacher_<dataset>.json", _PRODUCERS["teacher"])
    return names


def latency_label(method: str, budget: str) -> str:
    """The ``latency.json`` label of a budget's rebuilt model (what the workflow passes)."""
    return f"{method}/{budget}"


def read_latency(path: str | os.PathLike) -> dict[str, Any]:
    """A ``srprune time-models`` JSON, checked to hold the teacher's PyTorch row."""
    path = Path(path)
    data = _read_json(path, _PRODUCERS["latency"])
    _require(data, ("models", "machine", "lr_size", "reference"), path)
    if not any(r.get("label") == data["reference"] and r.get("backend") == "pytorch"
               for r in data["models"]):
        raise ResultFormatError(f"{path} has no PyTorch row for its reference "
                                f"{data['reference']!r}")
    return data


def _latency_setup(data: Mapping[str, Any]) -> dict[str, Any]:
    """The ``latency_lr_size``, ``latency_threads`` and ``latency_machine`` columns."""
    machine = data["machine"]
    where = (f"{machine.get('cpu_name')} ({machine.get('cpu_capability')})"
             if machine.get("device", "cpu") == "cpu" else machine.get("device_name"))
    return {"latency_lr_size": "x".join(str(v) for v in data["lr_size"]),
            "latency_threads": machine.get("threads"), "latency_machine": where}


def _set_latency(row: dict[str, Any], data: Mapping[str, Any] | None) -> None:
    """Latency columns of one row from ``latency.json`` (None: not measured)."""
    if data is None or row["stage"] not in ("teacher", *MODEL_STAGES):
        return
    timed = {r["label"]: r for r in data["models"] if r.get("backend") == "pytorch"}
    dense = row["stage"] in ZEROED_STAGES
    label = data["reference"] if dense or row["stage"] == "teacher" else \
        latency_label(row["method"], row["budget"])
    if label not in timed:
        warnings.warn(f"latency.json has no row {label!r}; {row['stage']} {label} left untimed",
                      stacklevel=3)
        return
    row.update(_latency_setup(data), latency_ms=timed[label]["median_ms"],
               speedup=1.0 if dense else timed[label]["speedup"],
               latency_source=DENSE if dense else MEASURED)
    onnx = {r["label"]: r for r in data["models"] if r.get("backend") == "onnxruntime"}
    if row["stage"] == "rebuilt" and label in onnx:
        row.update(onnx_latency_ms=onnx[label]["median_ms"], onnx_speedup=onnx[label]["speedup"])


def _masks_consistency(path: Path) -> dict[str, Any]:
    """``{stage: masks_consistent}`` from ``sparsity.json`` (empty when there is none)."""
    if not path.is_file():
        return {}
    reports = _read_json(path, "srprune inspect (rule inspect)")
    out = {}
    for key, report in reports.items():
        match = re.fullmatch(r"catanet_(.+)\.pth", Path(key).name)
        if match and isinstance(report, dict):
            out[match.group(1)] = report.get("masks_consistent")
    return out


def _lr_size(data: Mapping[str, Any]) -> str | None:
    size = data.get("macs_lr_size")
    return "x".join(str(int(v)) for v in size) if size else None


def _ratio(num: Any, den: Any) -> float | None:
    if num is None or den is None or den == 0:
        return None
    return num / den


def _diff(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else a - b


def _row(run: str, stage: str, method: str, budget: str, dataset: str,
         data: Mapping[str, Any]) -> dict[str, Any]:
    row = dict.fromkeys(COLUMNS)
    row.update(run=run, stage=stage, method=method, budget=budget, dataset=dataset,
               params_total=data["params"], params_nonzero=data["params_nonzero"],
               macs_thop=data["macs_thop"], macs_full=data["macs_full"],
               effective_macs_full=data["macs_full"], macs_lr_size=_lr_size(data),
               psnr=data["psnr"], ssim=data.get("ssim"))
    return row


def _relative(row: dict[str, Any], teacher: Mapping[str, Any]) -> None:
    if row["mac_ratio"] is None and row["stage"] not in ZEROED_STAGES:
        row["mac_ratio"] = _ratio(row["macs_full"], teacher["macs_full"])
    row["params_ratio"] = _ratio(row["params_nonzero"], teacher["params_total"])
    row["delta_psnr"] = _diff(row["psnr"], teacher["psnr"])
    row["delta_ssim"] = _diff(row["ssim"], teacher["ssim"])


def _check_masks(masks: Mapping[str, Any], path: Path, teacher: Mapping[str, Any],
                 teacher_path: Path) -> None:
    if masks["macs_teacher"] != teacher["macs_full"]:
        warnings.warn(f"{path}: macs_teacher {masks['macs_teacher']} differs from the teacher's "
                      f"macs_full {teacher['macs_full']} in {teacher_path}; its "
                      f"achieved_mac_ratio is relative to its own count", stacklevel=3)
    lr = masks.get("macs_lr_size")
    if lr is not None and teacher["macs_lr_size"] is not None \
            and "x".join(str(int(v)) for v in lr) != teacher["macs_lr_size"]:
        warnings.warn(f"{path}: MACs counted at LR size {list(lr)}, the teacher's at "
                      f"{teacher['macs_lr_size']} ({teacher_path})", stacklevel=3)


def collect(results_dir: str | os.PathLike, datasets: Sequence[str] | None = None,
            layout: Mapping[str, Sequence[str]] | None = None,
            baselines: Sequence[str] = ("bicubic",),
            latency: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Rows of the comparison (see the module docstring for the columns).

    ``datasets``: the data sets to report (default: every ``eval/teacher_<dataset>.json``).
    ``layout``: ``{method: [budget, ...]}`` expected (default: what :func:`discover` finds).
    ``baselines``: reference upscalers evaluated under ``eval/`` (default bicubic).
    ``latency``: the ``srprune time-models`` JSON (default ``<results_dir>/latency.json`` when
    it exists; without one the latency columns stay empty).
    Every named file must exist: a missing one raises :class:`MissingResultError` (a
    FileNotFoundError) naming it; a malformed one :class:`ResultFormatError` (a ValueError).
    Rows come per data set: teacher, baselines, then per method and budget (largest first) the
    stages pruned, compensated, finetuned_feature_kd, rebuilt.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise MissingResultError(root, "the workflow (results folder)")
    run = root.resolve().name
    datasets = _datasets(root) if datasets is None else list(datasets)
    layout = discover(root) if layout is None else {m: list(b) for m, b in layout.items()}
    masks = load_masks(root, layout)
    if latency is None and (root / LATENCY_FILE).is_file():
        latency = root / LATENCY_FILE
    timing = None if latency is None else read_latency(latency)
    consistency = {(m, b): _masks_consistency(root / m / b / SPARSITY_FILE)
                   for m, budgets in layout.items() for b in budgets}
    rows: list[dict[str, Any]] = []
    for dataset in datasets:
        teacher_path = root / "eval" / f"teacher_{dataset}.json"
        teacher = _row(run, "teacher", "", "", dataset,
                       _read_eval(teacher_path, _PRODUCERS["teacher"]))
        teacher["prunable_mac_ratio"] = 1.0
        block = [teacher]
        for baseline in baselines:
            path = root / "eval" / f"{baseline}_{dataset}.json"
            block.append(_row(run, baseline, "", "", dataset,
                              _read_eval(path, _PRODUCERS["bicubic"])))
        for method, budgets in layout.items():
            for budget in budgets:
                folder = root / method / budget
                artifact = masks[(method, budget)]
                _check_masks(artifact, folder / MASKS_FILE, teacher, teacher_path)
                for stage in MODEL_STAGES:
                    path = folder / f"eval_{stage}_{dataset}.json"
                    row = _row(run, stage, method, budget, dataset,
                               _read_eval(path, _PRODUCERS["stage"]))
                    row["prunable_mac_ratio"] = artifact.get("prunable_mac_ratio")
                    if stage in ZEROED_STAGES:
                        row["effective_macs_full"] = artifact["macs_pruned"]
                        row["mac_ratio"] = artifact["achieved_mac_ratio"]
                        row["masks_consistent"] = consistency[(method, budget)].get(stage)
                    elif row["macs_full"] != artifact["macs_pruned"]:
                        warnings.warn(f"{path}: rebuilt macs_full {row['macs_full']} differs "
                                      f"from the masks' macs_pruned {artifact['macs_pruned']}",
                                      stacklevel=2)
                    block.append(row)
        for row in block:
            _relative(row, teacher)
            _set_latency(row, timing)
        rows.extend(block)
    return rows


# --------------------------------------------------------------------------- tables
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
zeroed (`pruned`), compensated and fine-tuned (`finetuned_feature_kd`) files keep the teacher's
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


# --------------------------------------------------------------------------- figures
STAGE_STYLE = {  # marker, filled, line style joining the budgets, legend label
    "pruned": ("v", True, ":", "pruned (zeroed, no fine-tuning)"),
    "compensated": ("D", True, "--", "compensated (least squares, no training)"),
    "finetuned_feature_kd": ("o", True, "-", "finetuned_feature_kd (zeroed)"),
    "rebuilt": ("s", False, "", "rebuilt (physically smaller)"),
}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # Agg canvas, no pyplot global state

    return Figure(figsize=(width, height), dpi=120, layout="constrained")


def _save_png(fig: Any, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def _method_colors(methods: Iterable[str]) -> dict[str, str]:
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
    colors = _method_colors(methods)
    fig = _figure(9.0, 5.4)
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
    model_psnr = [r["psnr"] for r in part if r["stage"] in (*MODEL_STAGES, "teacher")]
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
    references = [r for r in part if r["stage"] not in (*MODEL_STAGES, "teacher")]
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
    return _save_png(fig, path)


def _group_label(name: str, units: int) -> str:
    """``blocks.0.0.iasa_attn`` -> the name and, for CATANet, what its units are."""
    from .pruning.catanet import CHANNEL_FIELDS, GROUP_FIELDS

    channel = next((kind for end, (_, kind, _) in CHANNEL_FIELDS.items() if name.endswith(end)),
                   None)
    if channel is not None:
        return f"{name}\n({units} {channel}s per head)"
    kind = next((k for suffix, (_, k) in GROUP_FIELDS.items() if name.endswith("." + suffix)),
                "unit")
    return f"{name}\n({units} {kind}{'' if units == 1 else 's'})"


def _kept_bar(masks: Mapping[str, Any], group: str) -> tuple[float, str, int]:
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

    Channel groups show the q/k or v channels kept per kept head (see :func:`_kept_bar`).

    ``masks_by_budget``: ``{(method, budget): masks artifact}`` (as :func:`load_masks` returns)
    or ``{(method, budget): {group: 0/1 mask}}``. Bars are grouped per module, one per budget,
    labelled with the kept count.
    """
    def group_masks(value: Mapping[str, Any]) -> Mapping[str, Any]:
        return value["masks"] if "masks" in value else value

    methods = list(dict.fromkeys(m for m, _ in sorted(masks_by_budget,
                                                      key=lambda k: _method_key(k[0]))))
    if not methods:
        fig = _figure(6, 2)
        fig.text(0.5, 0.5, "no pruning masks in this run", ha="center", va="center")
        return _save_png(fig, path)
    groups = list(dict.fromkeys(g for v in masks_by_budget.values() for g in group_masks(v)))
    budgets = sorted({b for _, b in masks_by_budget}, key=lambda b: (-float(b), b))
    cmap_colors = _budget_colors(len(budgets))
    width = 0.8 / len(budgets)
    per_group = 0.55 + 0.22 * len(budgets)
    fig = _figure(min(max(8.0, per_group * len(groups) + 1.5), 30.0), 2.6 * len(methods) + 1.6)
    axes = fig.subplots(len(methods), 1, sharex=True, squeeze=False)[:, 0]
    units = {}
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
                fraction, label, units[group] = _kept_bar(masks, group)
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
                        [_group_label(g, units.get(g, 0)) for g in groups],
                        rotation=35 if len(groups) <= 12 else 90, ha="right",
                        rotation_mode="anchor", fontsize=8)
    fig.suptitle("Kept heads and neurons per module (bar labels: units kept; for channels, "
                 "channels kept per kept head)", fontsize=12)
    return _save_png(fig, path)


def _budget_colors(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.15 + 0.7 * i / max(n - 1, 1)) for i in range(n)]


# --------------------------------------------------------------------------- all together
def compare(results_dir: str | os.PathLike, out_dir: str | os.PathLike,
            datasets: Sequence[str] | None = None,
            layout: Mapping[str, Sequence[str]] | None = None,
            latency: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write ``comparison.csv``, ``comparison.md``, ``psnr_vs_macs_<dataset>.png`` and
    ``kept_units.png`` into ``out_dir``.

    Returns ``{"csv": Path, "markdown": Path, "psnr_vs_macs": {dataset: Path},
    "kept_units": Path}``. ``datasets``, ``layout`` and ``latency`` as in :func:`collect`.
    """
    root = Path(results_dir)
    out = Path(out_dir)
    layout = discover(root) if layout is None and root.is_dir() else layout
    rows = collect(root, datasets, layout, latency=latency)
    paths: dict[str, Any] = {"csv": write_csv(rows, out / "comparison.csv"),
                             "markdown": write_markdown(rows, out / "comparison.md"),
                             "psnr_vs_macs": {}}
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        paths["psnr_vs_macs"][dataset] = plot_psnr_vs_macs(
            rows, out / f"psnr_vs_macs_{dataset}.png", dataset)
    paths["kept_units"] = plot_kept_units(load_masks(root, layout), out / "kept_units.png")
    return paths


__all__ = ["COLUMNS", "MissingResultError", "ResultFormatError", "collect", "compare",
           "discover", "format_markdown", "latency_label", "load_masks", "plot_kept_units",
           "plot_psnr_vs_macs", "read_latency", "read_masks", "write_csv", "write_markdown"]
