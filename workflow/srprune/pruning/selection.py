"""Choosing which units to keep under a MAC budget: an exact knapsack, then a measured check.

**Families.** A family is one prunable module: a neuron group (an FFN), or a head group with the
channel groups inside its heads (``parent``/``per_parent`` of :class:`.adapter.UnitGroup`). Its
*options* are the counts it can keep: ``k`` neurons, or ``h`` heads each keeping the same number of
q/k and of v channels (one batched attention per module after the rebuild). Every option's cost is
counted exactly by the adapter (the whole model with only this family narrowed), so modules whose
heads cost different amounts (a head of a large-patch LRSA, of a TAB with many centres) are priced
as they are; MACs of different modules add up, which the search checks on the result.

**Loss.** Scores are read as the damage removing a unit does (OPTIN's distortion terms are that);
an option's loss is the sum of the scores of the units it removes, each head keeping its
best-scored channels and the heads with the most to lose kept. Scores that are not distortions
(magnitude, random) are only rankings within their group: they are rescaled so that a group's
mean score equals the MACs one of its units costs (``normalize``), i.e. without information
every MAC is worth the same.

**Knapsack.** For a weight ``alpha`` on the head families' losses (heads against neurons), the
options minimising the total loss under the budget are found by dynamic programming over costs
rounded to ``1 / RESOLUTION`` of the teacher's MACs; the answer is checked against the exact
costs, and a smaller capacity taken if rounding let it overrun, so the budget always holds.

**Measured check** (``selection = "measured"``). The losses assume that damage adds
up, which it does not: removing many units interacts. The knapsack solutions for head weights
``alpha = 2^k`` are the candidates; a callback measures each one's actual distortion on
calibration data and the least distorting one is kept. The sweep over k is coarse to fine
(:meth:`Selector._sweep`): k = -8, -4, 0, 4, 8 (heads from 256 times cheaper to lose than the
scores say to 256 times dearer), extended by 4 past an end that is best (to +-``SWEEP_LIMIT``),
then the best k's neighbours at 2 and at 1; about 9 measurements where every k of -8..8 took
17, and the distortion of the x4 model's candidates is unimodal enough in k that the two find
the same best (README, "Mask search"). ``selection = "compensated"`` (the default) does the same with a
callback that compensates each candidate first (what the compensate stage will do to it: removed
units differ in how well the refit restores them). ``selection = "knapsack"`` keeps ``alpha = 1``
unmeasured.

``min_keep`` units of every head and neuron group are always kept (its best-scored ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from .adapter import UnitGroup

SELECTIONS = ("measured", "compensated", "knapsack")
DEFAULT_SELECTION = "compensated"  # validation split of the x4 model, README "Mask search"
SWEEP = (-8, -4, 0, 4, 8)   # first log2 head weights of the sweep
SWEEP_LIMIT = 16            # how far past an end that is best the sweep goes
DEFAULT_STEPS = 8  # local moves after the head-weight sweep
RESOLUTION = 20000


class BudgetError(ValueError):
    """The budget is below what pruning can reach, or the chosen masks exceed it."""


@dataclass(frozen=True)
class Family:
    """A head or neuron group and the channel groups inside its heads."""

    group: UnitGroup
    channels: tuple[UnitGroup, ...] = ()

    def kept(self, option: tuple[int, ...]) -> dict[str, int]:
        """Kept-unit counts per group of ``option`` = (units, per-head width of each channel group)."""
        counts = {self.group.name: option[0]}
        for group, width in zip(self.channels, option[1:]):
            counts[group.name] = option[0] * width
        return counts

    def full(self) -> tuple[int, ...]:
        return (self.group.count, *(c.per_parent for c in self.channels))

    def options(self, min_keep: int) -> list[tuple[int, ...]]:
        """Every count this family may keep; widths are at least 1 in a kept head."""
        first = min(min_keep, self.group.count)
        out = []
        for units in range(first, self.group.count + 1):
            if units == 0 or not self.channels:
                out.append((units, *(0 if units == 0 else c.per_parent for c in self.channels)))
                continue
            grids = np.meshgrid(*[np.arange(1, c.per_parent + 1) for c in self.channels],
                                indexing="ij")
            out += [(units, *map(int, w)) for w in zip(*(g.ravel() for g in grids))]
        return out


def families(groups: list[UnitGroup]) -> list[Family]:
    """Head and neuron groups in order, each with its channel groups."""
    children: dict[str, list[UnitGroup]] = {}
    for g in groups:
        if g.parent is not None:
            children.setdefault(g.parent, []).append(g)
    names = {g.name for g in groups}
    orphans = sorted(set(children) - names)
    if orphans:
        raise ValueError(f"channel groups without their head group: {orphans}")
    return [Family(g, tuple(children.get(g.name, ()))) for g in groups if g.parent is None]


class _Ranked:
    """One family's scores, sorted for choosing the kept units of any option."""

    def __init__(self, family: Family, scores: dict[str, Tensor]):
        self.family = family
        self.unit = scores[family.group.name].double().numpy()
        # per head: scores of its channels in each channel group, ascending, and their cumsum
        self.channel = [np.sort(scores[c.name].double().numpy().reshape(family.group.count, -1),
                                axis=1) for c in family.channels]
        self.lost = [np.concatenate([np.zeros((s.shape[0], 1)), np.cumsum(s, axis=1)], axis=1)
                     for s in self.channel]

    def _channel_loss(self, option: tuple[int, ...]) -> np.ndarray:
        """Per head: the scores of the channels it drops when it keeps option's widths."""
        loss = np.zeros(self.family.group.count)
        for lost, group, width in zip(self.lost, self.family.channels, option[1:]):
            loss += lost[:, group.per_parent - width]
        return loss

    def kept_units(self, option: tuple[int, ...]) -> np.ndarray:
        """Indices of the units kept: the best-scored, heads net of their dropped channels."""
        value = self.unit - self._channel_loss(option) if self.family.channels else self.unit
        order = sorted(range(len(value)), key=lambda u: (-value[u], u))
        return np.array(sorted(order[:option[0]]), dtype=np.int64)

    def loss(self, option: tuple[int, ...]) -> float:
        kept = self.kept_units(option)
        dropped = self.unit.sum() - self.unit[kept].sum()
        return float(dropped + self._channel_loss(option)[kept].sum())

    def masks(self, option: tuple[int, ...], scores: dict[str, Tensor]) -> dict[str, Tensor]:
        kept = self.kept_units(option)
        group = self.family.group
        out = {group.name: torch.zeros(group.count)}
        out[group.name][torch.from_numpy(kept)] = 1.0
        for child, width in zip(self.family.channels, option[1:]):
            mask = torch.zeros(group.count, child.per_parent)
            per_head = scores[child.name].reshape(group.count, -1)
            for head in kept.tolist():
                best = sorted(range(child.per_parent), key=lambda c: (-float(per_head[head, c]), c))
                mask[head, best[:width]] = 1.0
            out[child.name] = mask.flatten()
        return out


class _Curved(_Ranked):
    """One family chosen from an error curve: for every kept count, the error left and the
    units kept (:mod:`.obs`; not nested across counts where the curve is exact)."""

    def __init__(self, family: Family, scores: dict[str, Tensor], curve: dict[str, Tensor]):
        if family.channels:
            raise ValueError(f"{family.group.name}: error curves cover whole heads; channels "
                             f"inside heads need per-unit scores")
        super().__init__(family, scores)
        self.error = curve["err"].double().numpy()
        self.keep = curve["keep"].bool()
        if tuple(self.keep.shape) != (family.group.count + 1, family.group.count):
            raise ValueError(f"{family.group.name}: the error curve has shape "
                             f"{tuple(self.keep.shape)}, the group {family.group.count} units")

    def kept_units(self, option: tuple[int, ...]) -> np.ndarray:
        return self.keep[option[0]].nonzero().flatten().numpy()

    def loss(self, option: tuple[int, ...]) -> float:
        return float(self.error[option[0]])


@dataclass
class Table:
    """The options of one family with their exact extra MACs and their loss."""

    family: Family
    options: list[tuple[int, ...]]
    cost: np.ndarray
    loss: np.ndarray


class Costs:
    """Exact MACs of the model with families narrowed, from the adapter's count."""

    def __init__(self, fams: list[Family], macs: Callable[[dict[str, int]], int], min_keep: int):
        self.families, self.macs, self.min_keep = fams, macs, min_keep
        self.full = {k: v for f in fams for k, v in f.kept(f.full()).items()}
        self.total = macs(self.full)
        self.least = {f.group.name: f.options(min_keep)[0] for f in fams}
        self.floor = macs({k: v for f in fams for k, v in f.kept(self.least[f.group.name]).items()})

    def of(self, family: Family, options: list[tuple[int, ...]]) -> np.ndarray:
        """MACs of each option above the family's cheapest one (other families full)."""
        base = self.macs({**self.full, **family.kept(self.least[family.group.name])})
        return np.array([self.macs({**self.full, **family.kept(o)}) - base for o in options],
                        dtype=np.int64)

    def unit(self, family: Family) -> dict[str, float]:
        """MACs one unit costs in each group of the family (a channel: per kept head)."""
        full = family.full()
        cheaper = [full[:i] + (max(full[i] - 1, 0),) + full[i + 1:] for i in range(len(full))]
        drop = self.of(family, [full]) - self.of(family, cheaper)
        names = [family.group.name, *(c.name for c in family.channels)]
        per = [1] + [family.group.count] * len(family.channels)
        return {name: float(d) / p for name, d, p in zip(names, drop, per)}


def normalize(groups: list[UnitGroup], scores: dict[str, Tensor],
              unit_macs: dict[str, float]) -> dict[str, Tensor]:
    """Scores rescaled so that each group's mean equals the MACs one of its units costs."""
    out = {}
    for g in groups:
        s = scores[g.name].double().clamp(min=0)
        mean = float(s.mean()) if g.count else 0.0
        out[g.name] = s / mean * unit_macs[g.name] if mean > 0 else torch.full_like(s, unit_macs[g.name])
    return out


def pareto(table: Table) -> Table:
    """Drop options that cost at least as much as another and lose at least as much."""
    order = np.lexsort((table.loss, table.cost))
    keep, best = [], np.inf
    for i in order:
        if table.loss[i] < best:
            keep.append(i)
            best = table.loss[i]
    return Table(table.family, [table.options[i] for i in keep], table.cost[keep], table.loss[keep])


def knapsack(weights: list[np.ndarray], losses: list[np.ndarray], capacity: int,
             fits: Callable[[list[int]], bool] = lambda picks: True) -> list[int]:
    """One option per family, minimising the summed loss with summed weight <= capacity.

    Every family needs an option of weight 0. Dynamic programming over integer weights; if the
    best picks fail ``fits`` (the exact costs behind rounded weights), smaller capacities are tried.
    """
    best = np.zeros(capacity + 1)
    picks = []
    for w, loss in zip(weights, losses):
        new = np.full(capacity + 1, np.inf)
        pick = np.full(capacity + 1, -1, dtype=np.int64)
        for o in np.flatnonzero(w <= capacity):
            cand = best[:capacity + 1 - w[o]] + loss[o]
            better = cand < new[w[o]:]
            new[w[o]:][better] = cand[better]
            pick[w[o]:][better] = o
        best = new
        picks.append(pick)
    for top in range(capacity, -1, -1):
        chosen, room = [], top
        for pick, w in zip(reversed(picks), reversed(weights)):
            chosen.append(int(pick[room]))
            room -= int(w[chosen[-1]])
        if fits(chosen[::-1]):
            return chosen[::-1]
    raise BudgetError("no choice of options fits the budget")


@dataclass
class Candidate:
    """One knapsack solution: its family weights, predicted loss, exact MACs and measurement.

    ``alpha`` is the head weight it started from; ``weights`` are the per-family coefficients
    of the losses (the head weight on head families, moved by the local search). ``proposed``
    are the knapsack's masks, ``masks`` those the measurement returned (the same unless the
    measurement chooses units within modules anew).
    """

    alpha: float
    masks: dict[str, Tensor]
    loss: float
    macs: int
    weights: list[float]
    distortion: float | None = None
    proposed: dict[str, Tensor] | None = None

    def summary(self) -> dict:
        return {"alpha": self.alpha, "loss": self.loss, "macs": self.macs,
                "distortion": self.distortion, "weights": self.weights}


Measure = Callable[[dict[str, Tensor]], "float | tuple[float, dict[str, Tensor]]"]


class Selector:
    """Knapsack candidates of one model's families under budgets (costs computed once).

    ``curves`` (optional, per head or neuron group: ``err`` per kept count and ``keep``, the
    units kept at each count, :mod:`.obs`) replace the summed unit scores of those families.
    """

    def __init__(self, groups: list[UnitGroup], scores: dict[str, Tensor],
                 macs: Callable[[dict[str, int]], int], min_keep: int = 0,
                 distortion_scores: bool = True,
                 curves: dict[str, dict[str, Tensor]] | None = None):
        if min_keep < 0:
            raise ValueError(f"min_keep must be >= 0, got {min_keep}")
        missing = sorted({g.name for g in groups} - set(scores))
        if missing:
            raise ValueError(f"no scores for groups {missing[:3]}{' ...' if len(missing) > 3 else ''}")
        self.groups, self.scores = groups, scores
        self.costs = Costs(families(groups), macs, min_keep)
        if not distortion_scores:
            unit_macs = {k: v for f in self.costs.families for k, v in self.costs.unit(f).items()}
            self.scores = normalize(groups, scores, unit_macs)
        self.tables = []
        for fam in self.costs.families:
            curve = (curves or {}).get(fam.group.name)
            ranked = _Ranked(fam, self.scores) if curve is None else _Curved(fam, self.scores, curve)
            options = fam.options(min_keep)
            table = Table(fam, options, self.costs.of(fam, options),
                          np.array([ranked.loss(o) for o in options]))
            if (table.cost < 0).any():
                raise BudgetError(f"{fam.group.name}: the adapter's MAC count is lower with more "
                                  f"units kept than with the fewest; it cannot be budgeted")
            self.tables.append((ranked, pareto(table)))

    @property
    def total(self) -> int:
        return self.costs.total

    @property
    def floor(self) -> int:
        return self.costs.floor

    def head_weights(self, alpha: float) -> np.ndarray:
        """Family coefficients: ``alpha`` on head families, 1 on the others."""
        return np.array([alpha if t.family.group.kind == "head" else 1.0 for _, t in self.tables])

    def candidate(self, budget: float, alpha: float = 1.0,
                  weights: np.ndarray | None = None) -> Candidate:
        """The knapsack solution with each family's losses times its weight (default: head
        families' times ``alpha``)."""
        weights = self.head_weights(alpha) if weights is None else np.asarray(weights, float)
        room = budget * self.total - self.floor
        if room < 0:
            raise BudgetError(
                f"mac_constraint {budget} is below the floor of {self.floor / self.total:.4f}: the "
                f"parts no mask removes (convolutions, embedding, upsampler"
                f"{', and min_keep units per group' if self.costs.min_keep else ''}) cost "
                f"{self.floor:,} of {self.total:,} MACs")
        step = self.total / RESOLUTION
        costs = [np.round(t.cost / step).astype(np.int64) for _, t in self.tables]
        losses = [t.loss * w for (_, t), w in zip(self.tables, weights)]
        fits = lambda picks: sum(int(t.cost[o]) for (_, t), o in zip(self.tables, picks)) <= room  # noqa: E731
        picks = knapsack(costs, losses, int(room / step) + len(self.tables), fits)
        masks, kept, loss = {}, {}, 0.0
        for (ranked, table), o in zip(self.tables, picks):
            option = table.options[o]
            masks.update(ranked.masks(option, self.scores))
            kept.update(table.family.kept(option))
            loss += float(table.loss[o])
        macs = self.costs.macs(kept)
        if macs > budget * self.total:
            raise BudgetError(f"the chosen masks cost {macs:,} MACs, over the budget of "
                              f"{budget * self.total:,.0f}: the adapter's MAC count is not a sum "
                              f"over modules, which this selection requires")
        return Candidate(alpha, masks, loss, macs, [float(w) for w in weights])

    def select(self, budget: float, selection: str = "measured", measure: Measure | None = None,
               steps: int = 0, seed: int = 0) -> tuple[Candidate, list[Candidate]]:
        """(chosen candidate, every distinct candidate considered).

        The measured selections measure the knapsack solutions of the head-weight sweep
        (:meth:`_sweep`), then make ``steps`` local moves from the best so far (:meth:`_moves`).
        """
        check_budget(budget)
        if selection not in SELECTIONS:
            raise ValueError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        if steps < 0:
            raise ValueError(f"steps must be >= 0, got {steps}")
        if selection == "knapsack":
            chosen = self.candidate(budget, 1.0)
            return chosen, [chosen]
        if measure is None:
            raise ValueError(f"the {selection} selection needs a measure(masks) callback")
        tried: list[Candidate] = []
        self._sweep(budget, tried, measure)
        self._moves(budget, tried, measure, steps, seed)
        return best_of(tried), tried

    def _sweep(self, budget: float, tried: list[Candidate], measure: Measure) -> None:
        """Head weights 2^k, coarse to fine: ``SWEEP``, extended past a best end, then the best
        k's neighbours at distance 2 and 1 (each distinct knapsack answer measured once)."""
        seen: dict[int, float] = {}

        def at(k: int) -> None:
            if k not in seen and abs(k) <= SWEEP_LIMIT:
                seen[k] = self._try(self.candidate(budget, 2.0 ** k), tried, measure).distortion

        def best() -> int:
            return min(seen, key=lambda k: (seen[k], abs(k)))

        for k in SWEEP:
            at(k)
        for end, step in ((min, -4), (max, 4)):
            while best() == end(seen) and abs(best()) < SWEEP_LIMIT:
                at(best() + step)
        for step in (2, 1):
            k = best()
            at(k - step)
            at(k + step)

    def _try(self, cand: Candidate, tried: list[Candidate], measure: Measure) -> Candidate:
        """Measure ``cand`` unless its masks were tried already; the measured candidate (an
        earlier one with the same masks, or ``cand``), new if it is ``cand``."""
        for earlier in tried:
            if same_masks(cand.masks, earlier.proposed):
                return earlier
        result = measure(cand.masks)
        distortion, masks = result if isinstance(result, tuple) else (result, cand.masks)
        cand.proposed, cand.masks, cand.distortion = cand.masks, masks, float(distortion)
        tried.append(cand)
        return cand

    def _moves(self, budget: float, tried: list[Candidate], measure: Measure, steps: int,
               seed: int) -> None:
        """Local search over per-family weights (as SPDY and ZipLM do): from the best weights so
        far, scale a random quarter of the families' by factors log-normal with sigma 1 and
        measure the new knapsack answer; ``steps`` new answers at most (four times as many
        draws)."""
        rng = np.random.default_rng(seed)
        count = len(self.tables)
        draws, done = 0, 0
        while done < steps and draws < 4 * steps:
            draws += 1
            best = best_of(tried)
            moved = rng.random(count) < 0.25
            moved[rng.integers(count)] = True
            logs = np.log(best.weights) + moved * rng.normal(0.0, 1.0, count)
            cand = self.candidate(budget, best.alpha, np.exp(logs))
            done += self._try(cand, tried, measure) is cand


def best_of(tried: list[Candidate]) -> Candidate:
    """The least distorting candidate; ties go to the head weight nearest 1, then the first."""
    return min(tried, key=lambda c: (c.distortion, abs(np.log2(c.alpha))))


def check_budget(budget: float) -> None:
    if not 0 < budget <= 1:
        raise ValueError(f"mac_constraint must lie in (0, 1], got {budget}")


def same_masks(a: dict[str, Tensor], b: dict[str, Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
