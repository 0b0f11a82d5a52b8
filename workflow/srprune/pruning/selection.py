"""Choosing which units to keep under a MAC budget.

Cost model: every unit of group g costs ``cost[g]`` MACs (the full model minus the model with one
unit fewer, see :func:`.adapter.unit_costs`), and the rest of the model (convolutions, embedding,
upsampler, and whatever no mask removes) costs ``base``. This linear model is exact except that
removing *every* head of a TAB also skips its token assignment and 1x1 conv, which saves more
than it predicts, so a selection that fits the linear budget always fits the true one. The exact
MACs of the result are recomputed by the adapter and recorded.

Two selections, both guaranteeing the budget:

* ``optin`` (OPTIN's search): heads sorted by importance; for every number h of heads kept, keep
  the h most important, fill the rest of the budget with the most important neurons, and keep
  the combination with the highest total importance.
* ``greedy``: all units by importance per MAC, taken while they fit.

``min_keep`` units of every group are always kept (its most important ones).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .adapter import UnitGroup

SELECTIONS = ("optin", "greedy")


class BudgetError(ValueError):
    """The budget is below what pruning can reach."""


@dataclass(frozen=True)
class Unit:
    group: str
    index: int
    kind: str
    score: float
    cost: int


def _units(groups: list[UnitGroup], scores: dict[str, Tensor], costs: dict[str, int],
           min_keep: int) -> tuple[list[Unit], list[Unit]]:
    """(forced units, free units), each group's units in descending score (stable on ties)."""
    forced, free = [], []
    for g in groups:
        order = sorted(range(g.count), key=lambda u: (-float(scores[g.name][u]), u))
        units = [Unit(g.name, u, g.kind, float(scores[g.name][u]), costs[g.name]) for u in order]
        forced += units[:min_keep]
        free += units[min_keep:]
    return forced, free


def _fill(units: list[Unit], room: float) -> list[Unit]:
    """Take units in the given order while they fit into ``room`` MACs."""
    taken = []
    for unit in units:
        if unit.cost <= room:
            taken.append(unit)
            room -= unit.cost
    return taken


def _optin(free: list[Unit], room: float) -> list[Unit]:
    by_score = lambda u: (-u.score, u.group, u.index)  # noqa: E731
    heads = sorted((u for u in free if u.kind == "head"), key=by_score)
    neurons = sorted((u for u in free if u.kind != "head"), key=by_score)
    best, best_total = [], -float("inf")
    spent = 0
    for h in range(len(heads) + 1):
        if h:
            spent += heads[h - 1].cost
        if spent > room:
            break
        chosen = heads[:h] + _fill(neurons, room - spent)
        total = sum(u.score for u in chosen)
        if total > best_total:
            best, best_total = chosen, total
    return best


def _greedy(free: list[Unit], room: float) -> list[Unit]:
    ratio = lambda u: (-(u.score / u.cost) if u.cost else -float("inf"), u.group, u.index)  # noqa: E731
    return _fill(sorted(free, key=ratio), room)


def select(groups: list[UnitGroup], scores: dict[str, Tensor], costs: dict[str, int],
           total_macs: int, budget: float, selection: str = "optin",
           min_keep: int = 0) -> dict[str, Tensor]:
    """Masks (1 keep, 0 remove) whose linear-model MACs are at most ``budget * total_macs``."""
    if not 0 < budget <= 1:
        raise ValueError(f"mac_constraint must lie in (0, 1], got {budget}")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
    if min_keep < 0:
        raise ValueError(f"min_keep must be >= 0, got {min_keep}")
    base = total_macs - sum(costs[g.name] * g.count for g in groups)
    forced, free = _units(groups, scores, costs, min_keep)
    floor = base + sum(u.cost for u in forced)
    room = budget * total_macs - floor
    if room < 0:
        raise BudgetError(
            f"mac_constraint {budget} is below the floor of {floor / total_macs:.4f}: the "
            f"parts no mask removes (convolutions, embedding, upsampler"
            f"{', and min_keep units per group' if min_keep else ''}) cost {floor:,} of "
            f"{total_macs:,} MACs")
    chosen = forced + (_optin if selection == "optin" else _greedy)(free, room)
    masks = {g.name: torch.zeros(g.count) for g in groups}
    for unit in chosen:
        masks[unit.group][unit.index] = 1.0
    return masks


def linear_macs(groups: list[UnitGroup], costs: dict[str, int], total_macs: int,
                masks: dict[str, Tensor]) -> int:
    """MACs the linear cost model predicts for ``masks``."""
    removed = sum(costs[g.name] * (g.count - int(masks[g.name].sum())) for g in groups)
    return total_macs - removed
