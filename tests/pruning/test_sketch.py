"""The sketch scorer: it estimates the second-order values of OPTIN's terms and ranks like exact."""
from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

from srprune.pruning.adapter import masked
from srprune.pruning.catanet import CATANetAdapter
from srprune.pruning.importance import (OptinSettings, distortion, optin_terms,
                                        teacher_reference)
from srprune.pruning.sketch import hybrid_terms, sketch_terms
from test_importance import tiny_vit
from tiny_catanet import tiny_catanet
from vit_adapter import TinyViTAdapter

THREE_BLOCKS = dict(block_num=3, patch_size=[8, 6, 8], num_tokens=[4, 8, 4],
                    group_size=[16, 8, 16], n_iters=[2, 2, 2])


def models():
    return {"catanet": (CATANetAdapter(), tiny_catanet(seed=5, **THREE_BLOCKS)),
            "vit": (TinyViTAdapter(), tiny_vit())}


@pytest.fixture(scope="module")
def x():
    return torch.rand(3, 3, 12, 12, generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def second_order(adapter, model, x, settings, eps=1e-4):
    """||J e_u||^2 of both terms by finite differences: distortion at mask 1 - eps e_u, / eps^2."""
    ref = teacher_reference(adapter, model, x, settings)
    values = {}
    for group in adapter.groups(model):
        md, out = torch.zeros(group.count, dtype=x.dtype), torch.zeros(group.count, dtype=x.dtype)
        for unit in range(group.count):
            mask = torch.ones(group.count, dtype=x.dtype)
            mask[unit] -= eps
            with masked(adapter, model, {group.name: mask}):
                feats, output = adapter.trajectory(model, x)
            md[unit], out[unit] = (t.mean() for t in distortion(ref, group, feats[group.layer:],
                                                                output, 1))
        values[group.name] = {"md": md / eps ** 2, "out": out / eps ** 2}
    return values


def relative_errors(estimate, exact, key):
    a = torch.cat([estimate[name][key] for name in exact])
    b = torch.cat([exact[name][key] for name in exact]).to(a)
    return (a - b).abs() / b.abs()


@pytest.mark.parametrize("arch", ["catanet", "vit"])
def test_many_probes_converge_to_the_second_order_values(arch, x):
    """Later layers only (the own layer is removed exactly), mean over images and pixels."""
    adapter, model = models()[arch]
    model, x = model.double(), x.double()
    exact = second_order(adapter, model, x, OptinSettings(tokens=16))
    few = sketch_terms(adapter, model, x, OptinSettings(tokens=16, probes=4), progress=False)
    many = sketch_terms(adapter, model, x, OptinSettings(tokens=16, probes=256), progress=False)
    for key in ("md", "out"):
        err_few, err_many = relative_errors(few, exact, key), relative_errors(many, exact, key)
        assert err_many.median() < 0.08 and err_many.max() < 0.3, key
        assert err_many.median() < 0.5 * err_few.median(), key


def test_sketch_ranks_like_the_exact_scorer(x):
    adapter, model = models()["catanet"]
    settings = OptinSettings(tokens=16, probes=8)
    exact = optin_terms(adapter, model, x, settings, progress=False)
    sketch = sketch_terms(adapter, model, x, settings, progress=False)
    for key in ("md", "out"):
        a = torch.cat([exact[name][key] for name in exact])
        b = torch.cat([sketch[name][key] for name in exact])
        assert spearmanr(a, b)[0] >= 0.9, key


def test_chunks_seeds_and_group_subsets(x):
    """Chunked images give the same expectation; a subset of groups gets exactly its values."""
    adapter, model = models()["catanet"]
    settings = OptinSettings(tokens=16, probes=4, max_batch=2)
    whole = sketch_terms(adapter, model, x, settings, progress=False)
    again = sketch_terms(adapter, model, x, settings, progress=False)
    other = sketch_terms(adapter, model, x, OptinSettings(tokens=16, probes=4, max_batch=2, seed=1),
                         progress=False)
    groups = adapter.groups(model)
    subset = sketch_terms(adapter, model, x, settings, progress=False, groups=groups[2:5])
    assert list(subset) == [g.name for g in groups[2:5]]
    for name, terms in whole.items():
        for key in ("md", "out"):
            assert torch.equal(terms[key], again[name][key])
            assert not torch.equal(terms[key], other[name][key])
            assert (terms[key] > 0).all()
            if name in subset:
                assert torch.allclose(subset[name][key], terms[key], rtol=1e-5)
    assert all(p.requires_grad for p in model.parameters())  # left as found


def test_hybrid_is_exact_for_heads_and_sketched_for_neurons(x):
    adapter, model = models()["catanet"]
    settings = OptinSettings(tokens=16, probes=4, max_batch=6)
    hybrid = hybrid_terms(adapter, model, x, settings, progress=False)
    exact = optin_terms(adapter, model, x, settings, progress=False)
    sketch = sketch_terms(adapter, model, x, settings, progress=False)
    groups = adapter.groups(model)
    assert list(hybrid) == [g.name for g in groups]
    for g in groups:
        expected = exact if g.kind == "head" else sketch
        for key in ("md", "out"):
            assert torch.allclose(hybrid[g.name][key], expected[g.name][key], rtol=1e-5), g.name
