"""Collecting a run's results into comparison rows (see :mod:`srprune.compare` for the columns)."""
from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..layout import DENSE_STAGES, MODEL_STAGES, NOT_METHODS, TEACHER, RunPaths, latency_label
from ..models import DEFAULT_ARCH
from ..pruning.methods import METHODS

STAGES = (TEACHER, "bicubic", *MODEL_STAGES)
METHOD_ORDER = METHODS  # the registry's order
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
    "stage": "srprune evaluate --model <arch>_<stage>.pth (rule evaluate_stage)",
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


def method_key(name: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(name) if name in METHOD_ORDER else len(METHOD_ORDER), name)


def discover(results_dir: str | os.PathLike) -> dict[str, list[str]]:
    """``{method: [budget folder names]}`` found under ``results_dir``.

    A method is a sub-folder (not ``eval``/``logs``/hidden) holding at least one folder whose name
    is a number (the budget). Methods come in the registry's order (obs, optin, magnitude,
    random), then others alphabetically; budgets from the largest to the smallest.
    """
    root = Path(results_dir)
    found: dict[str, list[str]] = {}
    for method_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if method_dir.name in NOT_METHODS or method_dir.name.startswith("."):
            continue
        budgets = [p.name for p in method_dir.iterdir() if p.is_dir() and _is_budget(p.name)]
        if budgets:
            found[method_dir.name] = sorted(budgets, key=lambda b: (-float(b), b))
    return {m: found[m] for m in sorted(found, key=method_key)}


def read_json(path: Path, producer: str) -> dict[str, Any]:
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
    data = read_json(path, producer)
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
               layout: Mapping[str, Sequence[str]] | None = None, arch: str = DEFAULT_ARCH
               ) -> dict[tuple[str, str], dict[str, Any]]:
    """``{(method, budget): masks artifact}`` for every budget folder (``layout``: which)."""
    paths = RunPaths(str(results_dir), arch)
    layout = discover(results_dir) if layout is None else layout
    return {(method, budget): read_masks(paths.masks(method, budget))
            for method, budgets in layout.items() for budget in budgets}


def _datasets(paths: RunPaths) -> list[str]:
    pattern = Path(paths.reference_eval(TEACHER, "*"))
    prefix, suffix = pattern.name.split("*")
    names = sorted(p.name[len(prefix):-len(suffix)] for p in pattern.parent.glob(pattern.name))
    if not names:
        raise MissingResultError(paths.reference_eval(TEACHER, "<dataset>"), _PRODUCERS["teacher"])
    return names


def read_latency(path: str | os.PathLike) -> dict[str, Any]:
    """A ``srprune time-models`` JSON, checked to hold the teacher's PyTorch row."""
    path = Path(path)
    data = read_json(path, _PRODUCERS["latency"])
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
    if data is None or row["stage"] not in (TEACHER, *MODEL_STAGES):
        return
    timed = {r["label"]: r for r in data["models"] if r.get("backend") == "pytorch"}
    dense = row["stage"] in DENSE_STAGES
    label = data["reference"] if dense or row["stage"] == TEACHER else \
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


def _masks_consistency(path: Path, arch: str) -> dict[str, Any]:
    """``{stage: masks_consistent}`` from ``sparsity.json`` (empty when there is none)."""
    if not path.is_file():
        return {}
    reports = read_json(path, "srprune inspect (rule inspect)")
    out = {}
    for key, report in reports.items():
        match = re.fullmatch(re.escape(arch) + r"_(.+)\.pth", Path(key).name)
        if match and isinstance(report, dict):
            out[match.group(1)] = report.get("masks_consistent")
    return out


def _lr_size(data: Mapping[str, Any]) -> str | None:
    size = data.get("macs_lr_size")
    return "x".join(str(int(v)) for v in size) if size else None


def ratio(num: Any, den: Any) -> float | None:
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
    if row["mac_ratio"] is None and row["stage"] not in DENSE_STAGES:
        row["mac_ratio"] = ratio(row["macs_full"], teacher["macs_full"])
    row["params_ratio"] = ratio(row["params_nonzero"], teacher["params_total"])
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
            latency: str | os.PathLike | None = None,
            arch: str = DEFAULT_ARCH) -> list[dict[str, Any]]:
    """Rows of the comparison (see the module docstring for the columns).

    ``arch`` names the artifacts (``<arch>_pruning_masks.pth``, ``<arch>_<stage>.pth``).

    ``datasets``: the data sets to report (default: every ``eval/teacher_<dataset>.json``).
    ``layout``: ``{method: [budget, ...]}`` expected (default: what :func:`discover` finds).
    ``baselines``: reference upscalers evaluated under ``eval/`` (default bicubic).
    ``latency``: the ``srprune time-models`` JSON (default ``<results_dir>/latency.json`` when
    it exists; without one the latency columns stay empty).
    Every named file must exist: a missing one raises :class:`MissingResultError` (a
    FileNotFoundError) naming it; a malformed one :class:`ResultFormatError` (a ValueError).
    Rows come per data set: teacher, baselines, then per method and budget (largest first) the
    stages zeroed, compensated, finetuned, rebuilt.
    """
    root = Path(results_dir)
    if not root.is_dir():
        raise MissingResultError(root, "the workflow (results folder)")
    paths = RunPaths(str(root), arch)
    datasets = _datasets(paths) if datasets is None else list(datasets)
    layout = discover(root) if layout is None else {m: list(b) for m, b in layout.items()}
    budgets = [(m, b) for m, method_budgets in layout.items() for b in method_budgets]
    masks = load_masks(root, layout, arch)
    if latency is None and Path(paths.latency).is_file():
        latency = paths.latency
    timing = None if latency is None else read_latency(latency)
    consistency = {mb: _masks_consistency(Path(paths.sparsity(*mb)), arch) for mb in budgets}
    rows: list[dict[str, Any]] = []
    for dataset in datasets:
        block = _reference_rows(paths, root.resolve().name, dataset, baselines)
        teacher, teacher_path = block[0], paths.reference_eval(TEACHER, dataset)
        for method, budget in budgets:
            _check_masks(masks[(method, budget)], Path(paths.masks(method, budget)), teacher,
                         teacher_path)
            block += [_stage_row(paths, teacher["run"], stage, method, budget, dataset,
                                 masks[(method, budget)], consistency[(method, budget)])
                      for stage in MODEL_STAGES]
        for row in block:
            _relative(row, teacher)
            _set_latency(row, timing)
        rows.extend(block)
    return rows


def _reference_rows(paths: RunPaths, run: str, dataset: str,
                    baselines: Sequence[str]) -> list[dict[str, Any]]:
    """The teacher's row and the baselines' of one data set."""
    teacher = _row(run, TEACHER, "", "", dataset,
                   _read_eval(Path(paths.reference_eval(TEACHER, dataset)), _PRODUCERS[TEACHER]))
    teacher["prunable_mac_ratio"] = 1.0
    return [teacher] + [_row(run, who, "", "", dataset,
                             _read_eval(Path(paths.reference_eval(who, dataset)),
                                        _PRODUCERS["bicubic"])) for who in baselines]


def _stage_row(paths: RunPaths, run: str, stage: str, method: str, budget: str, dataset: str,
               artifact: Mapping[str, Any], consistency: Mapping[str, Any]) -> dict[str, Any]:
    """One model stage's row; the dense stages take their MACs from the masks artifact."""
    path = Path(paths.stage_eval(method, budget, stage, dataset))
    row = _row(run, stage, method, budget, dataset, _read_eval(path, _PRODUCERS["stage"]))
    row["prunable_mac_ratio"] = artifact.get("prunable_mac_ratio")
    if stage in DENSE_STAGES:
        row.update(effective_macs_full=artifact["macs_pruned"],
                   mac_ratio=artifact["achieved_mac_ratio"],
                   masks_consistent=consistency.get(stage))
    elif row["macs_full"] != artifact["macs_pruned"]:
        warnings.warn(f"{path}: rebuilt macs_full {row['macs_full']} differs from the masks' "
                      f"macs_pruned {artifact['macs_pruned']}", stacklevel=3)
    return row
