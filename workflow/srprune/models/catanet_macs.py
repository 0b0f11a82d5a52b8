r"""Closed-form MACs of one CATANet forward pass (eval, batch 1) on an H x W input.

Registered as the ``catanet`` architecture's ``macs`` (:mod:`srprune.models.catanet`);
:func:`srprune.complexity.analytic_macs` looks it up.

Notation: N = H*W tokens, C = dim, s = upscale; per block and attention module, dq and dv
are the q/k and v channels per head (``tab_qk[i]``, ``tab_v[i]``, ``lrsa_qk[i]``,
``lrsa_v[i]``; at full width qk_dim/heads and dim/heads); per block i: h_T = tab_heads[i], h_L = lrsa_heads[i],
m_T = tab_mlp[i], m_L = lrsa_mlp[i], K = num_tokens[i], G = group_size[i], p = patch_size[i].
Conventions as in :mod:`srprune.complexity` (1 MAC = multiply-add; biases, norms, activations,
softmax, adds and the bilinear base are free).

Stem and reconstruction (3x3 convs)::

    first_conv      9 * 3 * C * N
    mid_convs.i     9 * C * C * N                        (per block)
    upconv          9 * C * (s^2 C) * N                  (s = 1, 2, 3)
    upconv1/2       9 * C * 4C * N  +  9 * C * 4C * 4N    (s = 4; the second runs at 2H x 2W)
    last_conv       9 * C * 3 * s^2 N

ConvFFN of hidden width m on N tokens (fc1, 5x5 depthwise, fc2); nothing when m = 0 (it then
only adds fc2's bias)::

    FFN(m) = N*C*m + 25*N*m + N*m*C

TAB (all of its attention part is skipped when h_T = 0; its FFN is FFN(m_T))::

    assignment scores   N * K * C                     normalize(t) @ normalize(g)^T
    irca to_k, to_v     K * C * h_T * (dq + dv)       keys/values of the K centres
    iasa to_q, to_k     2 * N * C * h_T * dq
    iasa to_v, proj     2 * N * C * h_T * dv
    conv1x1             N * C * C
    attention           h_T * ng * gs * (2 gs + K) * (dq + dv)

with gs = min(N, G) and ng = ceil(N / gs): the queries are padded (by reflection) to ng*gs
and cut into ng groups of gs; each group attends to a window of 2*gs keys (QK^T: gs*2gs*dq,
AV: gs*2gs*dv per group and head) and, in the same IASA module, all ng*gs padded queries attend
to the K centres (ng*gs*K*(dq+dv) per head).

LRSA (attention skipped when h_L = 0; FFN is FFN(m_L)): along a side L, if L <= p there is one
patch of side L, otherwise n_L = |{0, p-2, 2(p-2), ... < L + (p-2) - p}| patches of side p
(stride p-2, the last shifted back inside the map). With P = n_H * n_W patches of
T = p_H * p_W tokens::

    to_q, to_k          2 * P * T * C * h_L * dq
    to_v, proj          2 * P * T * C * h_L * dv
    attention           P * h_L * T^2 * (dq + dv)

The total is the sum over all of the above. It depends on the input size only through N, the
IASA grouping and the LRSA patch grid, never on the pixel values.
"""
from __future__ import annotations

import math
from typing import Any


def _patch_grid(length: int, patch: int) -> tuple[int, int]:
    """(number of LRSA patches, patch side) along one side of ``length``.

    A side no longer than the patch is one patch spanning it. Otherwise patches start at
    0, s, 2s, ... (s = patch - 2) while start < length + s - patch (the last one is shifted back
    to end at the border, which changes no count).
    """
    if length <= patch:
        return 1, length
    stride = patch - 2
    return len(range(0, length + stride - patch, stride)), patch


def catanet_macs(cfg: Any, lr_size: tuple[int, int]) -> dict[str, Any]:
    """Closed-form MACs of CATANet per layer at LR ``(H, W)``; keys as ``complexity.macs_full``.

    ``cfg``: a ``CATANetConfig`` (or anything with its fields). See the module doc.
    """
    h, w = lr_size
    n = h * w
    c, s = cfg.dim, cfg.upscale
    layers: dict[str, int] = {"first_conv": n * 3 * c * 9}
    for i in range(cfg.block_num):
        tab, lrsa = f"blocks.{i}.0", f"blocks.{i}.1"
        heads, k = cfg.tab_heads[i], cfg.num_tokens[i]
        dq, dv = cfg.tab_qk[i], cfg.tab_v[i]
        if heads:
            gs = min(n, cfg.group_size[i])
            ng = math.ceil(n / gs)
            layers[tab] = n * k * c                                   # assignment scores
            layers[f"{tab}.irca_attn.to_k"] = k * c * heads * dq
            layers[f"{tab}.irca_attn.to_v"] = k * c * heads * dv
            layers[f"{tab}.iasa_attn.to_q"] = n * c * heads * dq
            layers[f"{tab}.iasa_attn.to_k"] = n * c * heads * dq
            layers[f"{tab}.iasa_attn.to_v"] = n * c * heads * dv
            layers[f"{tab}.iasa_attn.proj"] = n * heads * dv * c
            layers[f"{tab}.iasa_attn"] = heads * ng * gs * (2 * gs + k) * (dq + dv)
            layers[f"{tab}.conv1x1"] = n * c * c
        _ffn(layers, f"{tab}.mlp.fn", n, c, cfg.tab_mlp[i])
        heads, p = cfg.lrsa_heads[i], cfg.patch_size[i]
        dq, dv = cfg.lrsa_qk[i], cfg.lrsa_v[i]
        if heads:
            (nh, ph), (nw, pw) = _patch_grid(h, p), _patch_grid(w, p)
            patches, t = nh * nw, ph * pw
            attn = f"{lrsa}.layer.0.fn"
            layers[f"{attn}.to_q"] = patches * t * c * heads * dq
            layers[f"{attn}.to_k"] = patches * t * c * heads * dq
            layers[f"{attn}.to_v"] = patches * t * c * heads * dv
            layers[f"{attn}.proj"] = patches * t * heads * dv * c
            layers[attn] = patches * heads * t * t * (dq + dv)
        _ffn(layers, f"{lrsa}.layer.1.fn", n, c, cfg.lrsa_mlp[i])
        layers[f"mid_convs.{i}"] = n * c * c * 9
    if s == 4:
        layers["upconv1"] = n * c * 4 * c * 9
        layers["upconv2"] = 4 * n * c * 4 * c * 9
    else:
        layers["upconv"] = n * c * s * s * c * 9
    layers["last_conv"] = s * s * n * c * 3 * 9
    per_layer = {name: v for name, v in sorted(layers.items()) if v}
    per_module: dict[str, int] = {"first_conv": 0}
    for i in range(cfg.block_num):
        per_module[f"blocks.{i}.0"] = per_module[f"blocks.{i}.1"] = per_module[f"mid_convs.{i}"] = 0
    for name in (("upconv1", "upconv2") if s == 4 else ("upconv",)) + ("last_conv",):
        per_module[name] = 0
    for name, v in per_layer.items():
        parts = name.split(".")
        unit = ".".join(parts[:3]) if parts[0] == "blocks" else ".".join(parts[:2]) \
            if parts[0] == "mid_convs" else parts[0]
        per_module[unit] += v
    return {"total": sum(per_layer.values()), "per_module": per_module, "per_layer": per_layer}


def _ffn(layers: dict[str, int], name: str, n: int, c: int, hidden: int) -> None:
    if hidden:
        layers[f"{name}.fc1"] = n * c * hidden
        layers[f"{name}.dwconv.depthwise_conv.0"] = n * hidden * 25
        layers[f"{name}.fc2"] = n * hidden * c
