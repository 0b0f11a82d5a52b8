"""Selection under a MAC budget: budgets hold (linear and exact), min_keep, errors, optimality."""
from __future__ import annotations

import copy
import itertools

import pytest
import torch

from srprune.complexity import macs_full
from srprune.pruning.adapter import UnitGroup, full_kept, kept_counts, masked, unit_costs
from srprune.pruning.catanet import CATANetAdapter
from srprune.pruning.importance import OptinSettings, combine, optin_terms
from srprune.pruning.selection import BudgetError, linear_macs, select
from tiny_catanet import tiny_catanet
from vit_adapter import TinyViT, TinyViTAdapter, ViTConfig

SELECTIONS = ["optin", "greedy"]


@pytest.fixture(scope="module")
def setup():
    """Tiny x1 CATANet (its unprunable floor, about 0.24, lies below every budget tested)."""
    adapter, model = CATANetAdapter(), tiny_catanet(seed=11, upscale=1)
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(4))
    scores, _ = combine(optin_terms(adapter, model, x, OptinSettings(tokens=16, max_batch=32),
                                    progress=False), lam=1.0)
    lr = adapter.reference_lr_size(model)
    groups = adapter.groups(model)
    costs = unit_costs(adapter, model, lr)
    total = adapter.macs(model, full_kept(groups), lr)
    return adapter, model, groups, scores, costs, total, lr


def linear_floor(groups, costs, total, min_keep=0):
    """Fraction of the MACs no mask removes (plus min_keep units of every group)."""
    free = sum(costs[g.name] * (g.count - min(min_keep, g.count)) for g in groups)
    return (total - free) / total


def assert_top_scored(groups, scores, masks):
    """Within every group the kept units are its best-scored ones."""
    for g in groups:
        keep = masks[g.name].bool()
        if keep.any() and (~keep).any():
            assert scores[g.name][keep].min() > scores[g.name][~keep].max(), g.name


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("budget", [0.9, 0.7, 0.5, 0.3])
def test_budget_holds(setup, budget, selection):
    adapter, model, groups, scores, costs, total, lr = setup
    assert linear_floor(groups, costs, total) < 0.3
    masks = select(groups, scores, costs, total, budget, selection)
    assert set(masks) == {g.name for g in groups}
    assert all(set(m.tolist()) <= {0.0, 1.0} and m.shape == (g.count,)
               for g, m in zip(groups, masks.values()))
    predicted = linear_macs(groups, costs, total, masks)
    exact = adapter.macs(model, kept_counts(masks), lr)
    assert predicted <= budget * total
    assert exact <= budget * total
    assert exact <= predicted  # the linear model never under-estimates
    emptied_tab = any(g.name.endswith("iasa_attn") and not masks[g.name].any() for g in groups)
    if not emptied_tab:
        assert exact == predicted
    # nothing that could still be afforded is left out: every removed neuron (and, for the
    # greedy selection, every removed head) costs more than the room left
    left = budget * total - predicted
    for g in groups:
        if (g.kind == "neuron" or selection == "greedy") and not masks[g.name].all():
            assert costs[g.name] > left, g.name
    assert_top_scored(groups, scores, masks)
    assert 0 < sum(int(m.sum()) for m in masks.values()) < sum(g.count for g in groups)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("min_keep", [1, 2])
def test_min_keep(setup, selection, min_keep):
    adapter, model, groups, scores, costs, total, lr = setup
    budget = linear_floor(groups, costs, total, min_keep) + 0.01
    masks = select(groups, scores, costs, total, budget, selection, min_keep=min_keep)
    assert linear_macs(groups, costs, total, masks) <= budget * total
    for g in groups:
        assert int(masks[g.name].sum()) >= min_keep, g.name
        best = torch.argsort(scores[g.name], descending=True)[:min_keep]
        assert masks[g.name][best].all(), g.name
    assert_top_scored(groups, scores, masks)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("min_keep", [0, 1])
def test_budget_below_the_floor(setup, selection, min_keep):
    adapter, model, groups, scores, costs, total, lr = setup
    floor = linear_floor(groups, costs, total, min_keep)
    with pytest.raises(BudgetError, match=f"below the floor of {floor:.4f}"):
        select(groups, scores, costs, total, floor - 0.005, selection, min_keep=min_keep)
    masks = select(groups, scores, costs, total, floor + 1e-6, selection, min_keep=min_keep)
    assert all(int(masks[g.name].sum()) == min_keep for g in groups)


@pytest.mark.parametrize("selection", SELECTIONS)
@pytest.mark.parametrize("min_keep", [0, 3])
def test_full_budget_keeps_everything(setup, selection, min_keep):
    adapter, model, groups, scores, costs, total, lr = setup
    masks = select(groups, scores, costs, total, 1.0, selection, min_keep=min_keep)
    assert all(bool(masks[g.name].all()) for g in groups)
    assert linear_macs(groups, costs, total, masks) == total


@pytest.mark.parametrize("kwargs, message", [
    (dict(budget=0.0), "mac_constraint must lie in"),
    (dict(budget=-0.2), "mac_constraint must lie in"),
    (dict(budget=1.5), "mac_constraint must lie in"),
    (dict(budget=0.5, selection="knapsack"), "selection must be one of"),
    (dict(budget=0.5, min_keep=-1), "min_keep must be"),
])
def test_invalid_arguments(setup, kwargs, message):
    adapter, model, groups, scores, costs, total, lr = setup
    with pytest.raises(ValueError, match=message) as info:
        select(groups, scores, costs, total, **kwargs)
    assert not isinstance(info.value, BudgetError)


# ----------------------------------------------------------------------- synthetic examples
def synthetic(head_scores, neuron_scores, head_cost, neuron_cost, base):
    groups = [UnitGroup("attn", "head", 0, len(head_scores), 0),
              UnitGroup("ffn", "neuron", 0, len(neuron_scores), 0)]
    scores = {"attn": torch.tensor(head_scores), "ffn": torch.tensor(neuron_scores)}
    costs = {"attn": head_cost, "ffn": neuron_cost}
    total = base + head_cost * len(head_scores) + neuron_cost * len(neuron_scores)
    return groups, scores, costs, total


def importance(scores, masks):
    return sum(float((scores[n] * m).sum()) for n, m in masks.items())


def test_optin_beats_greedy_where_the_ratio_rule_wastes_room():
    """One head (cost 10, score 10) against neurons (cost 3, score 3.3, better per MAC).

    With room for 10.5 MACs the greedy rule takes 3 neurons (9.9) and cannot fit the head; the
    OPTIN search tries h = 1 and keeps the head (10).
    """
    groups, scores, costs, total = synthetic([10.0], [3.3] * 4, 10, 3, base=78)
    budget = (78 + 10.5) / total
    optin = select(groups, scores, costs, total, budget, "optin")
    greedy = select(groups, scores, costs, total, budget, "greedy")
    assert optin["attn"].tolist() == [1.0] and optin["ffn"].sum() == 0
    assert greedy["attn"].tolist() == [0.0] and greedy["ffn"].sum() == 3
    assert importance(scores, optin) == pytest.approx(10.0)
    assert importance(scores, greedy) == pytest.approx(9.9)
    for masks in (optin, greedy):
        assert linear_macs(groups, costs, total, masks) <= budget * total


@pytest.mark.parametrize("seed", range(6))
def test_optin_is_optimal_by_brute_force(seed):
    """3 heads and 4 neurons, one cost each: the search over h is the optimum over all 2^7 sets."""
    gen = torch.Generator().manual_seed(seed)
    head_scores = torch.rand(3, generator=gen).tolist()
    neuron_scores = (torch.rand(4, generator=gen) * 0.6).tolist()
    groups, scores, costs, total = synthetic(head_scores, neuron_scores, 7, 3, base=20)
    for room in range(0, 34):
        avail = min(room + 0.5, 33)  # MACs left for units; 33 = all of them
        budget = (20 + avail) / total
        chosen = select(groups, scores, costs, total, budget, "optin")
        best = max(sum(head_scores[i] for i in hs) + sum(neuron_scores[j] for j in ns)
                   for k in range(4) for hs in itertools.combinations(range(3), k)
                   for n in range(5) for ns in itertools.combinations(range(4), n)
                   if 7 * k + 3 * n <= avail)
        assert importance(scores, chosen) == pytest.approx(best, abs=1e-6), room
        assert linear_macs(groups, costs, total, chosen) <= budget * total
        greedy = select(groups, scores, costs, total, budget, "greedy")
        assert importance(scores, greedy) <= best + 1e-6


# ----------------------------------------------------------------------- the tiny ViT
def tiny_vit(seed=0) -> TinyViT:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyViT(ViTConfig())
    with torch.no_grad():
        for block in model.blocks:
            block.q.weight.mul_(3.0)
    return model.eval()


@pytest.mark.parametrize("selection", SELECTIONS)
def test_whole_search_on_the_vit(selection):
    adapter, model = TinyViTAdapter(), tiny_vit()
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(9))
    terms = optin_terms(adapter, model, x, OptinSettings(tokens=16, max_batch=8), progress=False)
    scores, factor = combine(terms, lam=1.0)
    assert factor > 0
    groups, lr = adapter.groups(model), adapter.reference_lr_size(model)
    costs = unit_costs(adapter, model, lr)
    total = adapter.macs(model, full_kept(groups), lr)
    assert total == macs_full(model, lr)["total"]  # the ViT's analytic count is exact
    masks = select(groups, scores, costs, total, 0.6, selection)
    assert adapter.macs(model, kept_counts(masks), lr) <= 0.6 * total
    assert 0 < sum(int(m.sum()) for m in masks.values()) < sum(g.count for g in groups)
    assert_top_scored(groups, scores, masks)

    zeroed = copy.deepcopy(model)
    adapter.zero_units(zeroed, masks)
    with torch.no_grad():
        with masked(adapter, model, masks):
            expected = model(x)
        out = zeroed(x)
        small = adapter.rebuild(model, masks)
        compact = small(x)
        full = model(x)
    assert (out - expected).abs().max().item() <= 1e-5
    assert (compact - expected).abs().max().item() <= 1e-5
    assert (full - expected).abs().max().item() > 1e-3
    assert adapter.macs(model, kept_counts(masks), lr) == macs_full(small, lr)["total"]
