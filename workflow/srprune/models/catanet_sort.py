"""CATANet's token order, the same in PyTorch and in every export.

A TAB sorts its tokens by the centre each belongs to with torch's default sort (``argsort``
without ``stable``), and its output depends on how that sort orders the tokens of one centre:
the groups of ``group_size`` consecutive sorted tokens are cut wherever the order puts them.
The authors' outputs (the parity fixtures) come from that order; a stable order changes them
by about 0.4. On CPU, torch's default sort of a row is libstdc++'s ``std::sort`` (an introsort:
median-of-three quicksort partitions down to segments of 16, then one insertion sort), so the
order is well defined, but ONNX only has a stable sort (TopK orders ties by index).

:func:`token_order` therefore sorts with torch on CPU (on another device too: the owners go to
the CPU and back, so a GPU gives the CPU's order), and while ``torch.export`` traces the model it
computes the same order with tensor ops (:func:`introsort_order`): every level of the quicksort
partitions all segments at once, each Hoare partition in closed form (the k-th element from the
left not below the pivot trades places with the k-th from the right not above it, while the
first lies left of the second), in a ``while_loop`` that runs until every segment has at most 16
tokens; a stable sort of the result is then the insertion sort's answer. The one case it does not
follow is introsort's fallback to heapsort, taken when a segment of more than 16 tokens is still
left after ``2 * floor(log2 n)`` levels; there the stable order is kept (on real images the
partitioning ends about 7 levels before that limit, README "Export").
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch._higher_order_ops import while_loop

THRESHOLD = 16  # libstdc++'s _S_threshold: segments up to this length are left to insertion sort


def token_order(owner: Tensor) -> Tensor:
    """``owner.argsort(dim=-1)`` as torch's CPU sort orders it, also under ``torch.export``."""
    if torch.compiler.is_exporting():
        return introsort_order(owner)
    return owner.cpu().argsort(dim=-1).to(owner.device)


def introsort_order(owner: Tensor) -> Tensor:
    """The permutation ``std::sort`` gives each row of ``owner`` (B, n), by tensor ops only."""
    b, n = owner.shape
    flat = torch.arange(owner.numel(), device=owner.device)
    start = flat // n * n  # every row starts as one segment [start, end) of the flat rows
    limit = depth_limit(n, owner.device)
    state = (owner.flatten(), flat - start, start, start + n, torch.zeros_like(limit))
    loop = while_loop if torch.compiler.is_exporting() else _python_while_loop
    key, index, *_ = loop(lambda key, index, start, end, depth: _active(start, end, depth, limit).any(),
                          lambda *state: _partition_level(*state, limit), state)
    ranked = key.view(b, n) * n + torch.arange(n, device=owner.device)  # ties: by position
    return index.view(b, n).gather(1, ranked.argsort(dim=-1))


def depth_limit(n: int, device: torch.device | None = None) -> Tensor:
    """Introsort's depth limit ``2 * floor(log2 n)``, exact for a symbolic ``n`` too."""
    powers = torch.pow(2, torch.arange(1, 63, device=device))
    return 2 * (torch.full((), n, device=device) >= powers).sum()


def _python_while_loop(cond, body, state):
    """``while_loop``'s semantics in plain Python (eager runs: no tracing, no compilation)."""
    while cond(*state):
        state = body(*state)
    return state


def _active(start: Tensor, end: Tensor, depth: Tensor, limit: Tensor) -> Tensor:
    """Tokens in a segment that introsort still partitions at this depth."""
    return (end - start > THRESHOLD) & (depth < limit)


def _partition_level(key: Tensor, index: Tensor, start: Tensor, end: Tensor, depth: Tensor,
                     limit: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Partition every active segment once; each splits into [start, cut) and [cut, end)."""
    pos = torch.arange(key.shape[0], device=key.device)
    active = _active(start, end, depth, limit)
    key, index, pivot = _median_to_front(key, index, start, end, active, pos)
    key, index, cut = _hoare_partition(key, index, start, end, pivot, active, pos)
    start, end = (torch.where(active & side, cut, bound)
                  for side, bound in ((pos >= cut, start), (pos < cut, end)))
    return key, index, start, end, depth + 1


def _median_to_front(key: Tensor, index: Tensor, start: Tensor, end: Tensor, active: Tensor,
                     pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``__move_median_to_first``: the median of the keys at start + 1, the middle and end - 1
    trades places with the segment's first token; returns the moved arrays and the pivot key."""
    last = end - 1
    a, b, c = torch.minimum(start + 1, last), start + (end - start) // 2, last
    ka, kb, kc = (key.gather(0, i) for i in (a, b, c))
    median = torch.where(ka < kb,
                         torch.where(kb < kc, b, torch.where(ka < kc, c, a)),
                         torch.where(ka < kc, a, torch.where(kb < kc, c, b)))
    pivot = key.gather(0, median)
    trade = torch.where(active & (pos == start), median,
                        torch.where(active & (pos == median), start, pos))
    return key.gather(0, trade), index.gather(0, trade), pivot


def _hoare_partition(key: Tensor, index: Tensor, start: Tensor, end: Tensor, pivot: Tensor,
                     active: Tensor, pos: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``__unguarded_partition`` of (start, end) around the pivot at start, in closed form.

    The left scan stops at keys >= pivot (L_1 < L_2 < ...), the right scan at keys <= pivot
    (R_1 > R_2 > ...); L_k and R_k trade places for every k < m, the first k with L_k >= R_k,
    and the cut is min(L_m, R_{m-1}) (a missing L_m, or R_0, counts as past the end).
    """
    scan = active & (pos > start)
    stop_l, stop_r = scan & (key >= pivot), scan & (key <= pivot)
    count_l, count_r = stop_l.long().cumsum(0), stop_r.long().cumsum(0)
    slot_l = start + count_l - count_l.gather(0, start) - 1  # L_k -> slot start + k - 1
    slot_r = start + count_r.gather(0, end - 1) - count_r    # R_k -> slot start + k - 1
    at_l = _place(pos, stop_l, slot_l, fill=key.shape[0])     # at_l[start + k - 1] = L_k
    at_r = _place(pos, stop_r, slot_r, fill=-1)
    partner_l, partner_r = at_r.gather(0, slot_l.clamp(min=0)), at_l.gather(0, slot_r)
    swap_l, swap_r = stop_l & (partner_l > pos), stop_r & (partner_r < pos)
    trade = torch.where(swap_l, partner_l, torch.where(swap_r, partner_r, pos))
    swapped = swap_l.long().cumsum(0)
    m = swapped.gather(0, end - 1) - swapped.gather(0, start)  # trades in the segment: m - 1
    last_r = torch.where(m > 0, at_r.gather(0, (start + m - 1).clamp(min=0)), key.shape[0])
    cut = torch.minimum(at_l.gather(0, start + m), last_r)
    return key.gather(0, trade), index.gather(0, trade), cut


def _place(pos: Tensor, flag: Tensor, slot: Tensor, fill: int) -> Tensor:
    """An array with ``pos[i]`` at ``slot[i]`` for every flagged i and ``fill`` elsewhere."""
    size = pos.shape[0]
    spill = torch.full_like(slot, size)  # unflagged tokens write into one extra entry, dropped
    out = torch.full((size + 1,), fill, dtype=pos.dtype, device=pos.device)
    return out.scatter(0, torch.where(flag, slot, spill), pos)[:size]
