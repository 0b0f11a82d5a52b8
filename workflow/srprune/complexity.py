"""Parameters and multiply-accumulates (MACs) of super-resolution models (CATANet first).

Conventions
-----------
* **1 MAC = one multiply-add.** A convolution costs ``out_elements * in_channels/groups * kh * kw``
  (depthwise convs included), a Linear ``out_elements * in_features``, a matmul ``(m x k) @ (k x n)``
  ``m * n * k``. Biases, activations (GELU, LeakyReLU), LayerNorm, softmax, the attention scale,
  residual adds, reshapes, gathers/scatters and PixelShuffle are **not** counted. This is thop's
  convention for convs and Linears, so ``macs_thop`` and ``macs_full`` are comparable: their
  difference is exactly what thop cannot see.
* The **bilinear base** (``F.interpolate`` in ``CATANet.reconstruct``) is not counted: it is an
  interpolation (4 weights per output value, about 11 M multiply-adds at 1280x720, < 0.1 % of
  the model) and neither thop nor FlopCounterMode counts it.
* Counts are for **one image** (batch 1) in **eval mode** (the training-only k-means steps of the
  TAB are not counted; in eval the token centres are the ``means`` buffer, no MACs).
* The **reference size** is the SR field's usual one: the LR input whose x``s`` output is 1280x720
  (see :func:`reference_lr_size`).

What each counter sees (measured with torch 2.13 CPU and thop 0.1.1, released x4 model at
320x180 input, see the docstrings of :func:`macs_thop` and :func:`macs_full`)
-------------------------------------------------------------------------------------------------
* thop only hooks leaf ``nn.Module``\\ s: it counts Conv2d and Linear, and, in its stock rules,
  LayerNorm as 4 ops per element (we switch that off by default). It misses every functional op:
  all of ``F.scaled_dot_product_attention`` (QK^T and AV of IASA's windows, of the attention to
  the token centres and of LRSA's patches) and the token-to-centre assignment matmul.
* ``torch.utils.flop_counter.FlopCounterMode`` sees aten ops. SDPA calls that PyTorch routes to its
  math path (q/k width != v width, 5-D tensors, or any meta tensors) are decomposed into ``bmm``
  and counted, but the fused CPU kernel ``aten._scaled_dot_product_flash_attention_for_cpu`` (4-D,
  equal widths: what the model's default ``fast`` attention uses) is **not in its registry and
  counts as zero** (x4 at 320x180 with ``fast``: 41.84 G instead of 75.01 G). We map it with
  :func:`_sdpa_flops`, and count on a copy switched to the ``reference`` attention so that the zero
  channels the ``fast`` formulation pads q/k with (width 9 -> 10) are not counted (76.76 G).

Public API: :func:`count_params`, :func:`reference_lr_size`, :func:`thop_profile`,
:func:`macs_thop`, :func:`macs_full`, :func:`analytic_breakdown`, :func:`analytic_macs`,
:func:`complexity_report`.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .models import arch_of, scale_of

REFERENCE_HR_SIZE = (720, 1280)  # (height, width) of the 720p output the field reports MACs at
ROOT_KEY = "(root)"  # MACs of ops a model's own forward runs outside any submodule


# --------------------------------------------------------------------------- parameters
def count_params(model: nn.Module) -> dict[str, int]:
    """``{"total": ..., "nonzero": ...}`` over the model's parameters (buffers excluded).

    Shared parameters are counted once. ``nonzero`` counts entries different from 0, so zeroing
    weights in place (unstructured pruning) lowers it while ``total`` stays put.
    """
    params = list(model.parameters())
    return {"total": int(sum(p.numel() for p in params)),
            "nonzero": int(sum(int(torch.count_nonzero(p.detach())) for p in params))}


def reference_lr_size(scale: int) -> tuple[int, int]:
    """LR input size ``(height, width)`` whose x``scale`` output is (about) 1280x720.

    The SR field reports MACs for a 1280x720 output (height 720, width 1280), i.e. an input of
    ``(720 // scale, 1280 // scale)``: x2 -> 360x640, x3 -> 240x426 (output 720x1278, the usual
    floor), x4 -> 180x320, x1 -> 720x1280.
    """
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale must be a positive integer, got {scale}")
    return REFERENCE_HR_SIZE[0] // scale, REFERENCE_HR_SIZE[1] // scale


# --------------------------------------------------------------------------- shared helpers
def _lr_hw(lr_size: Any) -> tuple[int, int]:
    h, w = (int(v) for v in lr_size)
    if h < 1 or w < 1:
        raise ValueError(f"lr_size must be two positive integers (height, width), got {lr_size}")
    return h, w


def _counting_copy(model: nn.Module, device: str) -> nn.Module:
    """A deep copy in eval mode, ``reference`` attention, on ``device``.

    On the meta device only shapes are computed, so the count costs no arithmetic and almost no
    memory whatever the size; MACs of this architecture depend on shapes only. Boolean buffers
    (CATANet's ``initted`` flags, read with ``bool()`` in Python control flow) stay real CPU
    tensors, since a meta tensor has no value. Parameters stop requiring grad: a ConvFFN with no
    neuron left returns a view of ``fc2.bias``, which makes FlopCounterMode's module tracker fail
    under ``no_grad`` ("Expected gradient function to be set").
    """
    counted = copy.deepcopy(model).eval().requires_grad_(False)
    if hasattr(counted, "set_attention_impl"):
        counted.set_attention_impl("reference")
    flags = [(module, name, buf.detach().cpu().clone())
             for module in counted.modules() for name, buf in module._buffers.items()
             if buf is not None and buf.dtype == torch.bool]
    counted.to(device)
    if torch.device(device).type == "meta":
        for module, name, value in flags:
            module._buffers[name] = value
    return counted


def _with_fallback(count: Callable[[str], dict[str, Any]], device: str) -> dict[str, Any]:
    """Run ``count(device)``; if the meta device fails (an op without a meta kernel), use CPU."""
    if torch.device(device).type != "meta":
        return count(device)
    try:
        return count(device)
    except (NotImplementedError, RuntimeError) as err:
        warnings.warn(f"counting on the meta device failed ({err}); counting on CPU instead",
                      RuntimeWarning, stacklevel=3)
        return count("cpu")


def _coarse_units(model: nn.Module) -> dict[str, str]:
    """Map each submodule name to its reporting unit: the shallowest non-container module.

    For CATANet the units are ``first_conv``, ``blocks.i.0`` (TAB), ``blocks.i.1`` (LRSA),
    ``mid_convs.i``, ``upconv`` (x1-x3) or ``upconv1``/``upconv2`` (x4) and ``last_conv``.
    """
    containers = (nn.ModuleList, nn.ModuleDict)
    units: dict[str, str] = {}
    for name, module in model.named_modules():
        if not name or isinstance(module, containers):
            continue
        parts = name.split(".")
        unit = name
        for depth in range(1, len(parts) + 1):
            prefix = ".".join(parts[:depth])
            if not isinstance(model.get_submodule(prefix), containers):
                unit = prefix
                break
        units[name] = unit
    return units


def _rollup(model: nn.Module, per_layer: Mapping[str, int]) -> dict[str, int]:
    """Sum exclusive per-layer MACs into reporting units (every unit listed, zeros included)."""
    units = _coarse_units(model)
    per_module = {unit: 0 for unit in dict.fromkeys(units.values())}
    for name, macs in per_layer.items():
        unit = ROOT_KEY if name == ROOT_KEY else units[name]
        per_module[unit] = per_module.get(unit, 0) + int(macs)
    return per_module


def _input(lr_size: tuple[int, int], device: str) -> torch.Tensor:
    return torch.zeros(1, 3, *lr_size, device=device)


# --------------------------------------------------------------------------- thop
def _thop_no_ops(module: nn.Module, inputs: Any, output: Any) -> None:
    """thop hook that counts nothing (used for LayerNorm unless ``count_norms``)."""


def thop_profile(model: nn.Module, lr_size: Any, *, count_norms: bool = False,
                 device: str = "meta") -> dict[str, Any]:
    """thop's count: ``{"total", "per_module", "per_layer"}`` (MACs, ints).

    ``per_layer`` maps each leaf module name to its MACs (nonzero only), ``per_module`` rolls it up
    into the units of :func:`macs_full` (``first_conv``, ``blocks.i.0``, ...); both sum to
    ``total``. See :func:`macs_thop` for what is counted and what is missed.
    """
    with warnings.catch_warnings():  # thop 0.1.1 imports distutils' deprecated LooseVersion
        warnings.simplefilter("ignore")
        import thop  # noqa: PLC0415

    hw = _lr_hw(lr_size)
    custom_ops = {} if count_norms else {nn.LayerNorm: _thop_no_ops}

    def count(dev: str) -> dict[str, Any]:
        counted = _counting_copy(model, dev)
        with torch.no_grad(), warnings.catch_warnings(), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            total, _, tree = thop.profile(counted, inputs=(_input(hw, dev),), custom_ops=custom_ops,
                                          verbose=False, ret_layer_info=True)
        per_layer: dict[str, int] = {}

        def walk(prefix: str, node: Mapping[str, Any]) -> None:
            for name, (ops, _params, children) in node.items():
                full = f"{prefix}{name}"
                if children:
                    walk(full + ".", children)
                elif ops:
                    per_layer[full] = int(round(ops))

        walk("", tree)
        result = {"total": int(round(total)), "per_layer": per_layer}
        if sum(per_layer.values()) != result["total"]:
            raise RuntimeError("thop's per-layer MACs do not add up to its total")
        result["per_module"] = _rollup(model, per_layer)
        return result

    return _with_fallback(count, device)


def macs_thop(model: nn.Module, lr_size: Any, *, count_norms: bool = False,
              device: str = "meta") -> int:
    """MACs as thop 0.1.1 counts them, for a 1x3xHxW input (``lr_size`` = (H, W)); thop is silenced.

    thop registers hooks on leaf modules and adds ``total_ops``/``total_params`` buffers to *every*
    module (it removes them only from modules it has a rule for), which would pollute the state
    dict: it therefore runs on a deep copy (eval mode, no_grad; on the meta device by default,
    which gives the same numbers without arithmetic, see :func:`_counting_copy`).

    What thop counts: ``nn.Conv2d`` (``out_elements * Cin/groups * k*k``, no bias) and ``nn.Linear``
    (``out_elements * in_features``), i.e. all projections, FFN layers, convs and the depthwise
    convs. Its stock rules also count ``nn.LayerNorm`` as ``4 * elements`` *ops* (not MACs); we
    disable that unless ``count_norms=True`` so that the number is pure conv/Linear MACs.

    What thop misses (functional ops are invisible to it): ``F.scaled_dot_product_attention``,
    i.e. every QK^T and AV product (IASA's windows, the attention of every token to the token
    centres, LRSA's patches), and the assignment scores ``normalize(t) @ normalize(g)^T``.
    Measured on the released x4 model at 320x180 (torch 2.13, thop 0.1.1): 40.73 G with LayerNorm
    off (41.05 G stock), against 75.01 G in :func:`macs_full`: thop misses 34.28 G (46 %), of which
    1.11 G are the assignment scores and the rest attention. x2 at 640x360: 106.4 G vs 239.8 G.
    """
    return thop_profile(model, lr_size, count_norms=count_norms, device=device)["total"]


# --------------------------------------------------------------------------- FlopCounterMode
def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                out_shape: Any = None, **kwargs: Any) -> int:
    """FLOPs (2 per MAC) of one SDPA call on (batch, heads, tokens, width) tensors: QK^T and AV."""
    *lead, s_q, d_qk = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * math.prod(lead) * s_q * s_k * (d_qk + d_v)


def _sdpa_mapping() -> dict[Any, Callable[..., int]]:
    aten = torch.ops.aten
    mapping = {}
    for name in ("_scaled_dot_product_flash_attention_for_cpu",):
        packet = getattr(aten, name, None)
        if packet is not None:
            mapping[packet] = _sdpa_flops
    return mapping


def _exclusive(counts: Mapping[str, Mapping[Any, int]], root: str) -> dict[str, int]:
    """Per-module *exclusive* FLOPs from FlopCounterMode's inclusive, per-active-module counts.

    FlopCounterMode adds an op's FLOPs to every module running at the time ('Global', the root
    named by its class, then ``Root.child.grandchild``). Running modules form a chain along the
    naming tree, so a module's own FLOPs are its count minus those of its nearest counted
    descendants.
    """
    inclusive = {name: sum(ops.values()) for name, ops in counts.items()}
    prefix = root + "."
    renamed: dict[str, int] = {}
    for name, flops in inclusive.items():
        if name == "Global":
            continue
        key = ROOT_KEY if name == root else name[len(prefix):] if name.startswith(prefix) else None
        if key is None:
            raise RuntimeError(f"unexpected module name {name!r} in FlopCounterMode's counts")
        renamed[key] = flops

    def parent(name: str) -> str:
        parts = name.split(".")
        for depth in range(len(parts) - 1, 0, -1):
            candidate = ".".join(parts[:depth])
            if candidate in renamed:
                return candidate
        return ROOT_KEY

    exclusive = dict(renamed)
    for name, flops in renamed.items():
        if name != ROOT_KEY:
            exclusive[parent(name)] -= flops
    outside = inclusive.get("Global", 0) - renamed.get(ROOT_KEY, 0)
    if outside:
        exclusive[ROOT_KEY] = exclusive.get(ROOT_KEY, 0) + outside
    return exclusive


def macs_full(model: nn.Module, lr_size: Any, *, method: str = "measured",
              device: str = "meta") -> dict[str, Any]:
    """Every multiply-accumulate of one forward pass on a 1x3xHxW input, attention included.

    Returns ``{"total": int, "per_module": {unit: MACs}, "per_layer": {name: MACs}}``.
    ``per_module`` has every reporting unit (``first_conv``, ``blocks.i.0`` = TAB, ``blocks.i.1``
    = LRSA, ``mid_convs.i``, ``upconv`` or ``upconv1``/``upconv2``, ``last_conv``; zeros kept);
    ``per_layer`` has the *exclusive* MACs of each module that has any, at the finest level:
    e.g. ``blocks.i.0.iasa_attn.to_q`` (a projection), ``blocks.i.0.iasa_attn`` (IASA's windowed
    attention plus the attention to the token centres, QK^T and AV), ``blocks.i.0`` (the
    assignment scores), ``blocks.i.1.layer.0.fn`` (LRSA's patch attention). Each sums to
    ``total``; a key ``"(root)"`` would hold MACs outside any submodule (none for CATANet).

    ``method="measured"`` (default) runs ``torch.utils.flop_counter.FlopCounterMode`` over a deep
    copy in eval mode with the ``reference`` attention (true head widths: q/k ``qk_dim/heads``,
    v ``dim/heads``; the default ``fast`` attention pads q/k with zero channels to the v width and
    would be over-counted), with the fused CPU SDPA kernel mapped (FlopCounterMode counts it as
    zero otherwise), and halves FLOPs into MACs. By default it runs on the meta device: shapes
    only, so the released x2 model at 640x360 costs about 0.3 s and 0.3 GB; ``device="cpu"``
    runs real arithmetic (same numbers; 20-40 s and 2.5 GB for x4 at 320x180 on 2 cores). Should
    the meta device fail for some model, it falls back to CPU with a warning. ``method="analytic"`` returns
    :func:`analytic_breakdown` of the model's registered architecture; the tests check both
    agree.

    Measured facts (torch 2.13 CPU, released x4 model, 320x180 input, real CPU tensors):
    ``reference`` attention: 75.010 G MACs (= analytic; its q/k width 9 != v width 10, so every
    SDPA takes the math path and is counted as ``bmm``, mapping or not). Default ``fast``
    attention without the mapping: every SDPA takes the fused kernel, which counts as zero, and
    FlopCounterMode reports 41.84 G (thop's 40.73 G plus the 1.11 G of assignment scores: all
    attention invisible). ``fast`` with the mapping: 76.76 G (the zero q/k channels padded from 9
    to 10 inflate QK^T by 10/9). On the meta device SDPA always decomposes into the math path
    (no fused-kernel choice), so there ``fast`` gives 76.76 G even unmapped. The mapping still
    matters for CPU counts of configs whose q/k and v head widths are equal (then even the
    ``reference`` attention takes the fused kernel).
    """
    hw = _lr_hw(lr_size)
    if method == "analytic":
        return analytic_breakdown(model, hw)
    if method != "measured":
        raise ValueError(f"method must be 'measured' or 'analytic', got {method!r}")
    from torch.utils.flop_counter import FlopCounterMode  # noqa: PLC0415

    def count(dev: str) -> dict[str, Any]:
        counted = _counting_copy(model, dev)
        counter = FlopCounterMode(display=False, custom_mapping=_sdpa_mapping())
        with torch.no_grad(), counter:
            counted(_input(hw, dev))
        flops = _exclusive(counter.get_flop_counts(), type(counted).__name__)
        total_flops = counter.get_total_flops()
        if any(v % 2 for v in flops.values()) or sum(flops.values()) != total_flops:
            raise RuntimeError("FlopCounterMode's per-module FLOPs are inconsistent")
        per_layer = {name: v // 2 for name, v in sorted(flops.items()) if v}
        return {"total": total_flops // 2, "per_module": _rollup(model, per_layer),
                "per_layer": per_layer}

    return _with_fallback(count, device)


# --------------------------------------------------------------------------- analytic count
def analytic_breakdown(cfg: Any, lr_size: Any) -> dict[str, Any]:
    """Closed-form MACs per layer of a registered model or config (its architecture's count).

    Same keys and meaning as :func:`macs_full`; the formula is the architecture's registered
    ``macs`` (for CATANet :mod:`srprune.models.catanet_macs`).
    """
    return arch_of(cfg).macs(getattr(cfg, "cfg", cfg), _lr_hw(lr_size))


def analytic_macs(cfg: Any, lr_size: Any) -> int:
    """Total of :func:`analytic_breakdown`."""
    return analytic_breakdown(cfg, lr_size)["total"]


# --------------------------------------------------------------------------- report
def complexity_report(model: nn.Module, lr_size: Any = None, scale: int | None = None) -> dict[str, Any]:
    """Parameters and MACs of ``model`` as a JSON-serialisable dict of plain types.

    ``lr_size`` (H, W) defaults to :func:`reference_lr_size` of ``scale``, which defaults to
    the model's declared ``scale``. Keys: ``lr_size`` [H, W], ``scale``, ``output_size`` [sH, sW] (when the
    scale is known), ``params_total``, ``params_nonzero``, ``macs_thop`` (conv/Linear MACs as thop
    sees them), ``macs_thop_stock`` (thop's stock number, LayerNorm counted as 4 ops/element),
    ``macs_full`` (every MAC, attention included), ``per_module`` (full MACs per unit),
    ``per_module_thop`` and ``per_layer`` (full MACs, exclusive, finest level).
    """
    if scale is None and hasattr(model, "scale"):
        scale = scale_of(model)
    if lr_size is None:
        if scale is None:
            raise ValueError("give lr_size or scale (the model declares no scale)")
        lr_size = reference_lr_size(scale)
    hw = _lr_hw(lr_size)
    params = count_params(model)
    full = macs_full(model, hw)
    thop_counts = thop_profile(model, hw)
    report: dict[str, Any] = {
        "lr_size": list(hw),
        "scale": None if scale is None else int(scale),
        "output_size": None if scale is None else [hw[0] * int(scale), hw[1] * int(scale)],
        "params_total": params["total"],
        "params_nonzero": params["nonzero"],
        "macs_thop": thop_counts["total"],
        "macs_thop_stock": macs_thop(model, hw, count_norms=True),
        "macs_full": full["total"],
        "per_module": {k: int(v) for k, v in full["per_module"].items()},
        "per_module_thop": {k: int(v) for k, v in thop_counts["per_module"].items()},
        "per_layer": {k: int(v) for k, v in full["per_layer"].items()},
    }
    return report


__all__ = ["REFERENCE_HR_SIZE", "analytic_breakdown", "analytic_macs", "complexity_report",
           "count_params", "macs_full", "macs_thop", "reference_lr_size", "thop_profile"]
