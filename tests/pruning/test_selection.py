"""Selection under a MAC budget: exact knapsack, channel families, measured candidates, errors."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from srprune.complexity import macs_full
from srprune.pruning.adapter import (KINDS, UNIT_KINDS_DEFAULT, UnitGroup, full_kept,
                                     groups_of_kinds, kept_counts)
from srprune.pruning.catanet import CATANetAdapter
from srprune.pruning.importance import OptinSettings, combine, optin_terms
from srprune.pruning.selection import (SWEEP_LIMIT, BudgetError, Candidate, Family, Selector,
                                       families, knapsack, same_masks)
from tiny_catanet import tiny_catanet
from vit_adapter import TinyViT, TinyViTAdapter, ViTConfig


@pytest.fixture(scope="module", params=["heads", "channels"])
def setup(request):
    """Tiny x1 CATANet (its unprunable floor, about 0.24, lies below every budget tested).

    Scored on heads and neurons, or on heads, the channels inside them and neurons.
    """
    adapter, model = CATANetAdapter(), tiny_catanet(seed=11, upscale=1)
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    kinds = UNIT_KINDS_DEFAULT if request.param == "heads" else KINDS
    groups = groups_of_kinds(adapter.groups(model), kinds)
    scores, _ = combine(optin_terms(adapter, model, x, OptinSettings(tokens=16, max_batch=32),
                                    progress=False, groups=groups), lam=1.0)
    lr = adapter.reference_lr_size(model)
    macs = lambda kept: adapter.macs(model, kept, lr)  # noqa: E731
    return adapter, model, groups, scores, macs


def assert_top_scored(groups, scores, masks):
    """Within every group without channel groups the kept units are its best-scored ones."""
    parents = {g.parent for g in groups}
    for g in groups:
        keep = masks[g.name].bool()
        if g.parent is None and g.name not in parents and keep.any() and (~keep).any():
            assert scores[g.name][keep].min() >= scores[g.name][~keep].max(), g.name


@pytest.mark.parametrize("selection", ["knapsack", "measured"])
@pytest.mark.parametrize("budget", [0.9, 0.7, 0.5, 0.3])
def test_budget_holds_exactly(setup, budget, selection):
    adapter, model, groups, scores, macs = setup
    selector = Selector(groups, scores, macs)
    assert selector.floor / selector.total < 0.3
    chosen, candidates = selector.select(budget, selection, measure=lambda m: 0.0)
    masks = chosen.masks
    assert set(masks) == {g.name for g in groups}
    assert all(set(m.tolist()) <= {0.0, 1.0} and m.shape == (g.count,)
               for g, m in zip(groups, masks.values()))
    exact = adapter.macs(model, kept_counts(masks), adapter.reference_lr_size(model))
    assert exact == chosen.macs <= budget * selector.total
    adapter.check_masks(model, masks)  # channel masks: equal widths, none in removed heads
    assert_top_scored(groups, scores, masks)
    assert 0 < sum(int(m.sum()) for m in masks.values()) < sum(g.count for g in groups)


@pytest.mark.parametrize("min_keep", [1, 2])
def test_min_keep(setup, min_keep):
    adapter, model, groups, scores, macs = setup
    selector = Selector(groups, scores, macs, min_keep=min_keep)
    budget = selector.floor / selector.total + 0.01
    chosen, _ = selector.select(budget, "knapsack")
    parents = {g.parent for g in groups}
    for g in (g for g in groups if g.parent is None):  # min_keep counts heads and neurons
        assert int(chosen.masks[g.name].sum()) >= min_keep, g.name
        if g.name not in parents:  # heads with channels are ranked net of dropped channels
            best = torch.argsort(scores[g.name], descending=True)[:min_keep]
            assert chosen.masks[g.name][best].all(), g.name


@pytest.mark.parametrize("min_keep", [0, 1])
def test_budget_below_the_floor(setup, min_keep):
    adapter, model, groups, scores, macs = setup
    selector = Selector(groups, scores, macs, min_keep=min_keep)
    floor = selector.floor / selector.total
    with pytest.raises(BudgetError, match=f"below the floor of {floor:.4f}"):
        selector.select(floor - 0.005, "knapsack")
    chosen, _ = selector.select(floor + 1e-6, "knapsack")
    assert all(int(chosen.masks[g.name].sum()) == min_keep for g in groups if g.parent is None)


def test_full_budget_keeps_everything(setup):
    adapter, model, groups, scores, macs = setup
    chosen, _ = Selector(groups, scores, macs).select(1.0, "knapsack")
    assert all(bool(m.all()) for m in chosen.masks.values())
    assert chosen.macs == macs(full_kept(groups))


@pytest.mark.parametrize("kwargs, message", [
    (dict(budget=0.0), "mac_constraint must lie in"),
    (dict(budget=-0.2), "mac_constraint must lie in"),
    (dict(budget=1.5), "mac_constraint must lie in"),
    (dict(budget=0.5, selection="optin"), "selection must be one of"),
    (dict(budget=0.5, selection="measured"), "needs a measure"),
])
def test_invalid_arguments(setup, kwargs, message):
    adapter, model, groups, scores, macs = setup
    with pytest.raises(ValueError, match=message) as info:
        Selector(groups, scores, macs).select(**kwargs)
    assert not isinstance(info.value, BudgetError)
    with pytest.raises(ValueError, match="min_keep must be"):
        Selector(groups, scores, macs, min_keep=-1)


def test_a_mac_count_that_does_not_add_up_is_an_error(setup):
    """The budget check is an exception (it survives ``python -O``), not an assert."""
    adapter, model, groups, scores, macs = setup
    full = full_kept(groups)

    modules = [g.name for g in groups if g.parent is None]

    def surcharge(kept):  # modules reduced together cost extra: not a sum over modules
        reduced = sum(kept[k] < full[k] for k in modules)
        return macs(kept) + (10 ** 12 if 2 <= reduced < len(modules) else 0)
    with pytest.raises(BudgetError, match="not a sum over modules"):
        Selector(groups, scores, surcharge).select(0.6, "knapsack")


# ----------------------------------------------------------------------- synthetic families
HEAD_COST = {"attn0": 7, "attn1": 13}  # heads of different modules cost differently


def synthetic(seed: int, channels: bool = False):
    """Two attention modules of 2 heads (optionally 2 q/k channels per head) and one FFN of 3."""
    gen = torch.Generator().manual_seed(seed)
    groups = []
    for name in HEAD_COST:
        groups.append(UnitGroup(name, "head", 0, 2))
        if channels:
            groups.append(UnitGroup(f"{name}.qk", "qk_channel", 0, 4, parent=name, per_parent=2))
    groups.append(UnitGroup("ffn", "neuron", 0, 3))
    scores = {g.name: torch.rand(g.count, generator=gen) for g in groups}

    def macs(kept):
        total = 20 + 3 * kept["ffn"]
        for name, cost in HEAD_COST.items():
            heads = kept[name]
            width = kept.get(f"{name}.qk", 2 * heads) // max(heads, 1)
            total += heads * (cost + 2 * width) + (5 if heads else 0)
        return total
    return groups, scores, macs


def brute_force(groups, scores, macs, room):
    """Least summed loss of removed units over every valid mask set within ``room`` MACs."""
    fams = families(groups)
    best = np.inf
    per_family = []
    for fam in fams:
        options = []
        for keep in itertools.product([0, 1], repeat=fam.group.count):
            kept_heads = [u for u in range(fam.group.count) if keep[u]]
            loss = float(sum(scores[fam.group.name][u] for u in range(fam.group.count) if not keep[u]))
            if not fam.channels:
                options.append((loss, {fam.group.name: sum(keep)}))
                continue
            child = fam.channels[0]
            widths = [0] if not kept_heads else range(1, child.per_parent + 1)
            for width in widths:
                ch = scores[child.name].reshape(fam.group.count, -1)
                extra = sum(float(torch.sort(ch[u]).values[:child.per_parent - width].sum())
                            for u in kept_heads)
                options.append((loss + extra, {fam.group.name: len(kept_heads),
                                               child.name: len(kept_heads) * width}))
        per_family.append(options)
    for combo in itertools.product(*per_family):
        kept = {k: v for _, counts in combo for k, v in counts.items()}
        if macs(kept) - macs({k: 0 for k in kept}) <= room:
            best = min(best, sum(loss for loss, _ in combo))
    return best


@pytest.mark.parametrize("channels", [False, True])
@pytest.mark.parametrize("seed", range(3))
def test_knapsack_is_optimal_by_brute_force(seed, channels):
    groups, scores, macs = synthetic(seed, channels)
    selector = Selector(groups, scores, macs)
    total, floor = selector.total, selector.floor
    for room in range(0, total - floor + 1, 3):
        # a room on a knapsack step, so rounding costs up loses nothing
        budget = min(1.0, (floor + room + 1e-7 * total) / total)
        chosen, _ = selector.select(budget, "knapsack")
        assert chosen.macs <= budget * total
        assert chosen.loss == pytest.approx(brute_force(groups, scores, macs, room), abs=1e-6), room


def test_channel_masks_are_valid(setup):
    """A removed head has no channels; the kept heads of a module keep equally many, the best."""
    groups, scores, macs = synthetic(5, channels=True)
    selector = Selector(groups, scores, macs)
    for budget in np.linspace(selector.floor / selector.total + 1e-3, 1.0, 9):
        masks = selector.select(float(budget), "knapsack")[0].masks
        for g in groups:
            if g.parent is None:
                continue
            heads = masks[g.parent].bool()
            channels = masks[g.name].reshape(len(heads), -1)
            assert not channels[~heads].any()
            widths = channels[heads].sum(dim=1)
            assert (widths >= 1).all() and len(set(widths.tolist())) <= 1
            per_head = scores[g.name].reshape(len(heads), -1)
            for head in heads.nonzero().flatten().tolist():
                keep = channels[head].bool()
                if (~keep).any():
                    assert per_head[head][keep].min() >= per_head[head][~keep].max()


def test_family_options_and_kept_counts():
    head = UnitGroup("a", "head", 0, 2)
    qk = UnitGroup("a.qk", "qk_channel", 0, 6, parent="a", per_parent=3)
    v = UnitGroup("a.v", "v_channel", 0, 4, parent="a", per_parent=2)
    fam = families([head, qk, v])[0]
    assert fam == Family(head, (qk, v))
    options = fam.options(min_keep=0)
    assert options[0] == (0, 0, 0) and len(options) == 1 + 2 * 3 * 2
    assert fam.kept((2, 1, 2)) == {"a": 2, "a.qk": 2, "a.v": 4}
    with pytest.raises(ValueError, match="without their head group"):
        families([qk])


def test_knapsack_picks_within_capacity():
    weights = [np.array([0, 3, 5]), np.array([0, 4])]
    losses = [np.array([9.0, 2.0, 0.0]), np.array([5.0, 0.0])]
    assert knapsack(weights, losses, 7) == [1, 1]   # 3 + 4: loss 2
    assert knapsack(weights, losses, 5) == [2, 0]   # 5: loss 5
    assert knapsack(weights, losses, 2) == [0, 0]


def test_measured_keeps_the_least_distorting_candidate(setup):
    adapter, model, groups, scores, macs = setup
    selector = Selector(groups, scores, macs)
    heads = [g.name for g in groups if g.kind == "head"]
    measured = lambda masks: float(sum(masks[n].sum() for n in heads))  # noqa: E731 (fewest heads)
    chosen, candidates = selector.select(0.6, "measured", measure=measured)
    assert len(candidates) >= 2
    assert all(not same_masks(a.masks, b.masks) for a, b in itertools.combinations(candidates, 2))
    assert chosen.distortion == min(c.distortion for c in candidates)
    assert {c.alpha for c in candidates} <= {2.0 ** k for k in range(-SWEEP_LIMIT, SWEEP_LIMIT + 1)}
    # the knapsack's own answer is among the candidates
    alone = selector.select(0.6, "knapsack")[0]
    assert any(same_masks(alone.masks, c.masks) for c in candidates)


def test_baseline_scores_are_rankings_within_their_group(setup):
    """Rescaling one group's magnitude-like scores changes nothing: no kind wins by units."""
    adapter, model, groups, scores, macs = setup
    raw = {k: v.abs() + 0.1 for k, v in scores.items()}
    head = next(g.name for g in groups if g.kind == "head")
    scaled = {**raw, head: raw[head] * 1000}
    first = Selector(groups, raw, macs, distortion_scores=False).select(0.5, "knapsack")[0]
    second = Selector(groups, scaled, macs, distortion_scores=False).select(0.5, "knapsack")[0]
    assert same_masks(first.masks, second.masks)
    # as distortions, the same rescaling does matter: that head group becomes precious
    third = Selector(groups, scaled, macs).select(0.5, "knapsack")[0]
    assert bool(third.masks[head].all())


# ----------------------------------------------------------------------- the tiny ViT
def tiny_vit(seed=0) -> TinyViT:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyViT(ViTConfig())
    with torch.no_grad():
        for block in model.blocks:
            block.q.weight.mul_(3.0)
    return model.eval()


def test_whole_search_on_the_vit():
    adapter, model = TinyViTAdapter(), tiny_vit()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(9))
    terms = optin_terms(adapter, model, x, OptinSettings(tokens=16, max_batch=8), progress=False)
    scores, factor = combine(terms, lam=1.0)
    assert factor > 0
    groups, lr = adapter.groups(model), adapter.reference_lr_size(model)
    total = adapter.macs(model, full_kept(groups), lr)
    assert total == macs_full(model, lr)["total"]  # the ViT's analytic count is exact
    chosen, _ = Selector(groups, scores, lambda k: adapter.macs(model, k, lr)).select(0.6, "knapsack")
    assert adapter.macs(model, kept_counts(chosen.masks), lr) <= 0.6 * total


@pytest.mark.parametrize("target", [-13, -5, 0, 3, 7, 20])
def test_the_head_weight_sweep_finds_the_best_weight_coarse_to_fine(setup, target):
    """A distortion unimodal in log2(alpha): the sweep ends on its minimum (or the limit) in
    about half the measurements of every integer -8..8."""
    adapter, model, groups, scores, macs = setup
    selector = Selector(groups, scores, macs)

    def candidate(budget, alpha=1.0, weights=None):   # one distinct answer per head weight
        k = round(math.log2(alpha))
        return Candidate(alpha, {"k": torch.tensor([float(k)])}, 0.0, 0, [alpha])

    selector.candidate = candidate
    measured = []

    def measure(masks):
        k = float(masks["k"])
        measured.append(k)
        return (k - target) ** 2

    chosen, tried = selector.select(0.5, "measured", measure, steps=0)
    assert round(math.log2(chosen.alpha)) == max(-SWEEP_LIMIT, min(SWEEP_LIMIT, target))
    assert len(measured) == len(set(measured)) <= (11 if abs(target) <= 8 else 13)
