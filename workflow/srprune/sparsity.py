"""What is zero in a checkpoint: the engine of ``srprune inspect PATH...``.

Two views of one file, both read without running the model:

* **Per tensor** (any readable state dict: srprune checkpoints, BasicSR files with
  ``params``/``params_ema``, plain state dicts): shape, number of entries and of exact zeros.
  The totals count *parameters* only, approximated from the file alone as every floating tensor
  except the floating buffers architectures register as not weights (CATANet's TAB token
  centres, names ending in ``.means``); non-floating tensors
  (CATANet's ``initted`` flags) are left out too. For CATANet this is exactly
  ``model.parameters()``.
* **Structured**, when the file loads as a registered model (:func:`srprune.load_model`, with
  ``model_config`` for what a BasicSR file cannot tell): for every prunable group of the pruning
  adapter, its units and those that are *fully zero* (every weight and bias slice the unit owns,
  as listed by ``adapter.slices``, is zero; for channel groups also per head); for every Linear
  and Conv weight, its all-zero rows
  (output channels) and columns (input channels of each group of a grouped conv). If the file
  cannot be loaded as a model, the reason is recorded under ``structured_error`` and the
  per-tensor view is still given.

When the checkpoint's meta records pruning masks (``srprune export-zeroed`` and ``finetune``
write them), the report lists the masked units and says whether they are exactly the fully-zero
ones (``masks_consistent``; a channel of a masked head is expected to be zero too); a unit
zeroed by hand but not recorded, or a recorded unit whose weights are not zero, makes it False
and is listed under ``masks_mismatch``. ``masks_invalid`` says why the recorded masks are not
valid masks (``Adapter.check_masks``: e.g. kept heads of one module keeping different numbers
of channels), or is None.

Every report holds plain JSON types only. Public API: :func:`inspect_checkpoint`,
:func:`format_table`, :func:`inspect_paths`.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .checkpoint import CheckpointError, model_from_state, read_checkpoint, split_checkpoint
from .fileio import save_json
from .models import ARCHS

# floating buffers that are not weights, as the architectures register them (CATANet: .means)
BUFFER_SUFFIXES = tuple(dict.fromkeys(end for arch in ARCHS.values()
                                      for end in arch.float_buffers))
PARAM_RULE = "floating tensors except *" + ", *".join(BUFFER_SUFFIXES)


# --------------------------------------------------------------------------- per tensor
def _fraction(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def _is_param(name: str, tensor: Tensor) -> bool:
    return tensor.is_floating_point() and not name.endswith(BUFFER_SUFFIXES)


def _layout(obj: dict[str, Any]) -> tuple[str, str | None]:
    """(format of the file, key holding its state dict), as ``split_checkpoint`` chooses it."""
    for key in ("params", "params_ema", "state_dict", "model"):
        if isinstance(obj.get(key), dict):
            if key == "params" and "arch" in obj and "config" in obj:
                return "srprune", key
            return ("basicsr" if key.startswith("params") else "nested"), key
    return "plain state dict", None


def tensor_stats(state: dict[str, Tensor]) -> list[dict[str, Any]]:
    """One row per tensor: name, shape, dtype, numel, zeros, zero_fraction, param."""
    rows = []
    for name, tensor in state.items():
        numel = tensor.numel()
        zeros = numel - int(torch.count_nonzero(tensor)) if numel else 0
        rows.append({"name": name, "shape": list(tensor.shape),
                     "dtype": str(tensor.dtype).replace("torch.", ""), "numel": numel,
                     "zeros": zeros, "zero_fraction": _fraction(zeros, numel),
                     "param": _is_param(name, tensor)})
    return rows


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    params = sum(r["numel"] for r in rows if r["param"])
    zeros = sum(r["zeros"] for r in rows if r["param"])
    return {"params": params, "zeros": zeros, "zero_fraction": _fraction(zeros, params),
            "rule": PARAM_RULE, "excluded": [r["name"] for r in rows if not r["param"]]}


def _plain_meta(meta: Any) -> dict[str, Any]:
    """The scalar entries of the checkpoint's meta (stage, method, budget...)."""
    if not isinstance(meta, dict):
        return {}
    return {str(k): v for k, v in meta.items()
            if v is None or isinstance(v, (str, int, float, bool))}


# --------------------------------------------------------------------------- structured
def zero_rows_cols(weight: Tensor) -> tuple[int, int]:
    """(all-zero rows, all-zero columns) of a Linear (out x in) or conv (out x in/g x ...) weight.

    A row is an output channel, a column an input channel (of each group, for a grouped conv).
    A tensor with no entries has neither.
    """
    if weight.numel() == 0:
        return 0, 0
    nonzero = weight.detach() != 0
    rows = int((~nonzero.flatten(1).any(dim=1)).sum())
    cols = int((~nonzero.transpose(0, 1).flatten(1).any(dim=1)).sum())
    return rows, cols


def layer_stats(model: nn.Module) -> list[dict[str, Any]]:
    """All-zero rows and columns of every Linear and Conv weight of ``model``."""
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        weight = module.weight
        rows, cols = zero_rows_cols(weight)
        out.append({"name": f"{name}.weight", "type": type(module).__name__,
                    "shape": list(weight.shape), "groups": getattr(module, "groups", 1),
                    "rows": weight.shape[0], "zero_rows": rows,
                    "cols": weight.shape[1], "zero_cols": cols})
    return out


def zero_units(adapter: Any, model: nn.Module, group: Any) -> list[int]:
    """Units of ``group`` whose every slice is zero (L1 magnitude 0), in increasing order."""
    if group.count == 0:
        return []
    return [int(u) for u in (adapter.unit_magnitude(model, group) == 0).nonzero().flatten()]


def zero_per_head(zero: list[int], group: Any) -> list[int]:
    """Fully-zero channels in each head of a channel group."""
    heads = group.count // group.per_parent if group.per_parent else 0
    counts = [0] * heads
    for unit in zero:
        counts[unit // group.per_parent] += 1
    return counts


def _masks_of(meta: Any) -> tuple[dict[str, list[int]] | None, str | None]:
    """Recorded masks as ``{group: [0/1, ...]}``, or (None, why) when they are unusable."""
    if not isinstance(meta, dict) or "masks" not in meta:
        return None, None
    masks = meta["masks"]
    if not isinstance(masks, dict):
        return None, f"meta 'masks' is a {type(masks).__name__}, not a mapping"
    out = {}
    for name, mask in masks.items():
        try:
            values = torch.as_tensor(mask).flatten().tolist()
        except (TypeError, ValueError, RuntimeError) as err:
            return None, f"meta mask of {name!r} is not a tensor: {err}"
        out[str(name)] = [int(bool(v)) for v in values]
    return out, None


def _effective_mask(group: dict[str, Any], masks: dict[str, list[int]]) -> list[int] | None:
    """A group's recorded mask; a channel of a masked head counts as masked (None: unrecorded)."""
    mask, parent = masks.get(group["name"]), group.get("parent")
    if parent not in masks:
        return mask
    heads, per_head = masks[parent], group["per_parent"]
    own = [1] * group["units"] if mask is None else mask
    return [keep if u // per_head >= len(heads) or heads[u // per_head] else 0
            for u, keep in enumerate(own)]


def _compare_masks(groups: list[dict[str, Any]], masks: dict[str, list[int]]
                   ) -> list[dict[str, Any]]:
    """Groups whose fully-zero units differ from the masked ones (with what each side says).

    A channel of a head that is masked as a whole is expected to be zero as well.
    """
    mismatch = []
    known = {g["name"]: g for g in groups}
    for name in sorted(set(masks) - set(known)):
        mismatch.append({"group": name, "reason": "masked group not in the model"})
    for g in groups:
        mask = masks.get(g["name"])
        if mask is not None and len(mask) != g["units"]:
            mismatch.append({"group": g["name"], "reason": f"mask has {len(mask)} entries, "
                                                           f"the group {g['units']} units"})
            continue
        masked = [u for u, keep in enumerate(_effective_mask(g, masks) or []) if not keep]
        if masked != g["zero_unit_indices"]:
            mismatch.append({"group": g["name"], "masked": masked,
                             "zero": g["zero_unit_indices"]})
    return mismatch


def structured_view(model: nn.Module) -> dict[str, Any]:
    """Per prunable group: units, fully-zero units; per Linear/Conv weight: zero rows/columns."""
    from .models import arch_name, model_config
    from .pruning.registry import adapter_for

    view: dict[str, Any] = {"arch": arch_name(model), "config": model_config(model)}
    try:
        adapter = adapter_for(model)
    except ValueError as err:
        view["groups"], view["groups_error"] = None, str(err)
    else:
        view["groups"] = []
        for group in adapter.groups(model):
            zero = zero_units(adapter, model, group)
            entry = {"name": group.name, "kind": group.kind, "block": group.block,
                     "units": group.count, "zero_units": len(zero), "zero_unit_indices": zero}
            if group.parent is not None:
                entry.update(parent=group.parent, per_parent=group.per_parent,
                             zero_per_head=zero_per_head(zero, group))
            view["groups"].append(entry)
    view["layers"] = layer_stats(model)
    return view


# --------------------------------------------------------------------------- report
def _masks_invalid(model: nn.Module, masks: dict[str, list[int]]) -> str | None:
    """Why ``masks`` are not valid masks of ``model`` (None: valid, or no adapter)."""
    from .pruning.registry import adapter_for

    try:
        adapter = adapter_for(model)
    except ValueError:
        return None
    try:
        adapter.check_masks(model, {k: torch.tensor(v, dtype=torch.float32) for k, v in masks.items()})
    except ValueError as err:
        return str(err)
    return None


def inspect_checkpoint(path: str | os.PathLike, model_config: dict[str, Any] | None = None
                       ) -> dict[str, Any]:
    """Zeros of every tensor of the checkpoint at ``path`` and, if it loads, of every unit.

    Raises :class:`CheckpointError` when the file is not a readable checkpoint. Keys: ``path``,
    ``format``, ``state_key``, ``meta`` (its scalar entries), ``tensors``, ``totals``, then either
    ``structured`` (``arch``, ``config``, ``groups``, ``layers``) or ``structured_error``, and,
    when the meta records masks, ``masks`` (``{group: [0/1...]}``), ``masks_consistent`` (None
    when the structured view is missing), ``masks_mismatch`` and ``masks_invalid``.
    """
    obj = read_checkpoint(path)
    state, info = split_checkpoint(obj)
    fmt, key = _layout(obj)
    tensors = tensor_stats(state)
    report: dict[str, Any] = {"path": str(path), "format": fmt, "state_key": key,
                              "meta": _plain_meta(info.get("meta")), "tensors": tensors,
                              "totals": _totals(tensors)}
    model = None
    try:
        model = model_from_state(state, info, str(path), **(model_config or {}))
    except (ValueError, TypeError, KeyError, RuntimeError) as err:  # CheckpointError included
        report["structured"], report["structured_error"] = None, str(err)
    else:
        report["structured"] = structured_view(model)
    masks, why = _masks_of(info.get("meta"))
    if why:
        report["masks_error"] = why
    if masks is not None:
        report["masks"] = masks
        report["masks_invalid"] = None if model is None else _masks_invalid(model, masks)
        groups = (report["structured"] or {}).get("groups")
        if groups is None:
            report["masks_consistent"], report["masks_mismatch"] = None, []
        else:
            report["masks_mismatch"] = _compare_masks(groups, masks)
            report["masks_consistent"] = not report["masks_mismatch"]
    return report


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'' if n == 1 else 's'}"


def format_table(report: dict[str, Any], max_tensors: int | None = None) -> str:
    """A terminal summary: groups, masks, totals, then the parameter tensors that hold zeros.

    Buffers (``*.means``, ``initted``) are not listed. ``max_tensors`` caps the per-tensor lines
    (None: every parameter tensor with zeros); the JSON report always has every tensor.
    """
    lines = [f"{report['path']}  ({report['format']}"
             + (f", state dict under {report['state_key']!r}" if report["state_key"] else "")
             + (f", stage {report['meta']['stage']}" if "stage" in report["meta"] else "") + ")"]
    structured = report.get("structured")
    masks = report.get("masks")
    if structured is None:
        lines.append(f"  structured view unavailable: {report.get('structured_error')}")
    elif structured.get("groups") is None:
        lines.append(f"  no prunable groups: {structured.get('groups_error')}")
    else:
        groups = structured["groups"]
        width = max([len("group")] + [len(g["name"]) for g in groups])
        lines.append(f"  {'group':<{width}}  {'kind':<10}  {'units':>5}  {'zero':>5}"
                     + (f"  {'masked':>6}" if masks is not None else "") + "  zero units")
        for g in groups:
            masked = "" if masks is None else (
                f"  {sum(1 for keep in masks.get(g['name'], []) if not keep):>6}")
            shown = ", ".join(map(str, g["zero_unit_indices"][:12]))
            if len(g["zero_unit_indices"]) > 12:
                shown += ", ..."
            if "zero_per_head" in g:
                shown = f"per head {g['zero_per_head']} of {g['per_parent']}: {shown}"
            lines.append(f"  {g['name']:<{width}}  {g['kind']:<10}  {g['units']:>5}  "
                         f"{g['zero_units']:>5}{masked}  {shown}".rstrip())
        for kind in sorted({g["kind"] for g in groups}):
            of_kind = [g for g in groups if g["kind"] == kind]
            lines.append(f"  {kind}s: {sum(g['zero_units'] for g in of_kind):,} of "
                         f"{sum(g['units'] for g in of_kind):,} fully zero "
                         f"({len(of_kind)} groups)")
    if masks is not None:
        consistent = report.get("masks_consistent")
        if consistent is None:
            lines.append("  masks recorded; cannot compare them without the structured view")
        elif consistent:
            lines.append("  masks recorded: the fully-zero units are exactly the masked ones")
        else:
            names = ", ".join(m["group"] for m in report["masks_mismatch"])
            lines.append(f"  masks recorded: INCONSISTENT with the zero units in {names}")
        if report.get("masks_invalid"):
            lines.append(f"  masks recorded are INVALID: {report['masks_invalid']}")
    if report.get("masks_error"):
        lines.append(f"  masks unreadable: {report['masks_error']}")
    t = report["totals"]
    lines.append(f"  params {t['params']:,}, zeros {t['zeros']:,} "
                 f"({100 * t['zero_fraction']:.2f}%)  (params: {t['rule']}: "
                 f"{_count(len(t['excluded']), 'tensor')} left out)")
    layers = {layer["name"]: layer for layer in (structured or {}).get("layers", [])}
    params = [r for r in report["tensors"] if r["param"]]
    with_zeros = [r for r in params if r["zeros"]]
    shown = with_zeros if max_tensors is None else with_zeros[:max_tensors]
    lines.append(f"  parameter tensors with zeros: {len(with_zeros)} of {len(params)} "
                 f"(the other {len(params) - len(with_zeros)} have none)")
    if shown:
        width = max(len(r["name"]) for r in shown)
        lines.append(f"    {'tensor':<{width}}  {'shape':<16}  {'zeros':>9}  {'frac':>6}"
                     f"  {'zero rows':>10}  {'zero cols':>10}")
        for r in shown:
            layer = layers.get(r["name"])
            rows = f"{layer['zero_rows']}/{layer['rows']}" if layer else ""
            cols = f"{layer['zero_cols']}/{layer['cols']}" if layer else ""
            shape = "x".join(map(str, r["shape"])) or "scalar"
            lines.append(f"    {r['name']:<{width}}  {shape:<16}  {r['zeros']:>9,}  "
                         f"{r['zero_fraction']:>6.3f}  {rows:>10}  {cols:>10}".rstrip())
    if len(shown) < len(with_zeros):
        lines.append(f"    ... {len(with_zeros) - len(shown)} more tensors with zeros "
                     f"(see the JSON)")
    return "\n".join(lines)


def inspect_paths(paths: Sequence[str | os.PathLike], json_out: str | os.PathLike | None = None,
                  model_config: dict[str, Any] | None = None, print_tables: bool = True
                  ) -> list[dict[str, Any]]:
    """Inspect each path, print its table, and write ``{path: report}`` as JSON if asked.

    Stops at the first unreadable file (its CheckpointError propagates; no JSON is written).
    """
    reports = []
    for i, path in enumerate(paths):
        report = inspect_checkpoint(path, model_config)
        reports.append(report)
        if print_tables:
            print(("\n" if i else "") + format_table(report))
    if json_out is not None:
        save_json({str(p): r for p, r in zip(paths, reports)}, Path(json_out))
    return reports


__all__ = ["CheckpointError", "format_table", "inspect_checkpoint", "inspect_paths",
           "layer_stats", "tensor_stats", "zero_per_head", "zero_rows_cols", "zero_units"]
