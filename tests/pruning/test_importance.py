"""Importance: the batched, cached OPTIN scorer against the naive one and a hand computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from srprune.pruning.adapter import masked
from srprune.pruning.catanet import CATANetAdapter
from srprune.pruning.importance import (OptinSettings, combine, magnitude_scores,
                                        naive_optin_terms, optin_terms, random_scores,
                                        teacher_reference)
from tiny_catanet import tiny_catanet
from vit_adapter import TinyViT, TinyViTAdapter, ViTConfig

SETTINGS = OptinSettings(tokens=16, max_batch=6)  # 3 variants of a 2-image batch per forward


def tiny_vit(seed: int = 0) -> TinyViT:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyViT(ViTConfig())
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q.weight", "k.weight")):
                p.mul_(2.0 + torch.rand(p.shape, generator=gen))  # far-from-uniform attention
    return model.eval()


@pytest.fixture(scope="module")
def catanet():
    return CATANetAdapter(), tiny_catanet(seed=3)


@pytest.fixture(scope="module")
def vit():
    return TinyViTAdapter(), tiny_vit()


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def catanet_terms(catanet, x):
    adapter, model = catanet
    return optin_terms(adapter, model, x, SETTINGS, progress=False)


def assert_terms_close(got, expected, rtol=1e-4):
    """Every term agrees to ``rtol`` relative (the atol only guards values that are ~0)."""
    assert list(got) == list(expected)
    for name in expected:
        for key in ("md", "out"):
            a, b = got[name][key], expected[name][key]
            assert a.shape == b.shape
            assert torch.allclose(a, b, rtol=rtol, atol=1e-6 * b.abs().max().item()), (name, key)


@pytest.mark.parametrize("arch", ["catanet", "vit"])
def test_batched_terms_equal_naive_terms(request, arch, x):
    adapter, model = request.getfixturevalue(arch)
    groups = adapter.groups(model)
    per_forward = SETTINGS.max_batch // x.shape[0]
    assert max(g.count for g in groups) > 2 * per_forward  # several chunks per group
    fast = optin_terms(adapter, model, x, SETTINGS, progress=False)
    slow = naive_optin_terms(adapter, model, x, SETTINGS)
    assert_terms_close(fast, slow)
    for name, terms in slow.items():
        assert (terms["md"] > 0).all() and (terms["out"] > 0).all(), name


def test_per_image_terms_are_each_images_own_terms(catanet, x):
    """Each image's output term equals a run on that image alone; the means are the terms.

    (A run on one image draws other token positions, so its MD differs; only ``out`` compares.)"""
    adapter, model = catanet
    both = optin_terms(adapter, model, x, SETTINGS, progress=False, per_image=True)
    for i in range(x.shape[0]):
        alone = optin_terms(adapter, model, x[i:i + 1], SETTINGS, progress=False)
        for name, terms in both.items():
            assert torch.allclose(terms["md_images"].mean(1), terms["md"])
            assert torch.allclose(terms["out_images"][:, i], alone[name]["out"], rtol=1e-4)


def test_scores_are_deterministic_and_seeded(catanet, x, catanet_terms):
    adapter, model = catanet
    again = optin_terms(adapter, model, x, SETTINGS, progress=False)
    other = optin_terms(adapter, model, x, OptinSettings(tokens=16, max_batch=6, seed=1),
                        progress=False)
    for name, terms in catanet_terms.items():
        assert torch.equal(terms["md"], again[name]["md"])
        assert torch.equal(terms["out"], again[name]["out"])
        assert not torch.allclose(terms["md"], other[name]["md"]), name   # other token positions
        assert torch.allclose(terms["out"], other[name]["out"])           # the output is not sampled


def gram_md(teacher: torch.Tensor, student: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean over images of ||G_teacher - G_student||_F^2, tokens L2-normalised over channels."""
    total = torch.zeros(())
    for b in range(teacher.shape[0]):
        t = F.normalize(teacher[b, positions[b]], dim=-1)
        s = F.normalize(student[b, positions[b]], dim=-1)
        total += ((t @ t.T - s @ s.T) ** 2).sum()
    return total / teacher.shape[0]


def one_off(group, unit):
    mask = torch.ones(group.count)
    mask[unit] = 0
    return mask


def test_terms_by_hand_vit(vit, x):
    """ViT (one layer per block): a block-0 unit is scored on block 1, a block-1 unit on itself."""
    adapter, model = vit
    terms = optin_terms(adapter, model, x, SETTINGS, progress=False)
    ref = teacher_reference(adapter, model, x, SETTINGS)
    assert all(p.shape == (2, 16) for p in ref.positions)
    with torch.no_grad():
        teacher_feats, teacher_out = adapter.trajectory(model, x)
        for group in adapter.groups(model):
            unit = group.count - 1
            with masked(adapter, model, {group.name: one_off(group, unit)}):
                feats, out = adapter.trajectory(model, x)
            per_block = [gram_md(t, s, p) for t, s, p in zip(teacher_feats, feats, ref.positions)]
            assert torch.allclose(terms[group.name]["md"][unit], per_block[1], rtol=1e-4), group
            if group.block == 0:
                assert per_block[0] > 0  # block 0's own distortion exists but is not counted
            mse = ((out - teacher_out) ** 2).mean()
            assert torch.allclose(terms[group.name]["out"][unit], mse, rtol=1e-4), group


def catanet_layers_by_hand(model, x):
    """TAB output and block output of every block (tokens), and the SR output, step by step."""
    layers, f = [], model.first_conv(x)
    y = f
    for i, (tab, lrsa) in enumerate(model.blocks):
        t = tab(y)
        y = y + model.mid_convs[i](lrsa(t, model.cfg.patch_size[i]))
        layers += [t.flatten(2).transpose(1, 2), y.flatten(2).transpose(1, 2)]
    return layers, model(x)


def scored_layers(name, blocks):
    """Layers a unit is scored on, read off its module: a TAB unit from its own block's LRSA
    output on, an LRSA unit from the next block's TAB output on, the last block's LRSA: itself."""
    _, block, module = name.split(".")[:3]
    first = 2 * int(block) + (1 if module == "0" else 2)
    return list(range(first, 2 * blocks)) or [2 * blocks - 1]


def test_catanet_sums_every_later_layer_of_three_blocks(x):
    """Three blocks: every unit's md is the sum over all later layers (TAB and block outputs)."""
    adapter = CATANetAdapter()
    model = tiny_catanet(seed=5, block_num=3, patch_size=[8, 6, 8], num_tokens=[4, 8, 4],
                         group_size=[16, 8, 16], n_iters=[2, 2, 2])
    settings = OptinSettings(tokens=16, max_batch=8)
    terms = optin_terms(adapter, model, x, settings, progress=False)
    positions = teacher_reference(adapter, model, x, settings).positions
    assert len(positions) == 6
    with torch.no_grad():
        teacher_layers, teacher_out = catanet_layers_by_hand(model, x)
        for group in adapter.groups(model):
            for unit in (0, group.count - 1):
                with masked(adapter, model, {group.name: one_off(group, unit)}):
                    layers, out = catanet_layers_by_hand(model, x)
                per_layer = [gram_md(t, s, p) for t, s, p in zip(teacher_layers, layers, positions)]
                expected = sum(per_layer[j] for j in scored_layers(group.name, 3))
                assert torch.allclose(terms[group.name]["md"][unit], expected, rtol=1e-4), group
                mse = ((out - teacher_out) ** 2).mean()
                assert torch.allclose(terms[group.name]["out"][unit], mse, rtol=1e-4), group
                if group.name.endswith("0.iasa_attn"):  # its own block's LRSA output counts
                    assert per_layer[group.layer + 1] > 0 and per_layer[group.layer] > 0


def test_combine():
    terms = {"a": {"md": torch.tensor([1.0, 2.0, 3.0]), "out": torch.tensor([0.1, 0.0, 0.3])},
             "b": {"md": torch.tensor([4.0]), "out": torch.tensor([0.6])}}
    scores, factor = combine(terms, 0.0)
    assert factor == pytest.approx(10.0 / 1.0)  # sum(md) / sum(out)
    assert torch.equal(scores["a"], terms["a"]["md"]) and torch.equal(scores["b"], terms["b"]["md"])
    scores, factor = combine(terms, 0.5)
    assert factor == pytest.approx(10.0)
    assert torch.allclose(scores["a"], torch.tensor([1.5, 2.0, 4.5]))
    assert torch.allclose(scores["b"], torch.tensor([7.0]))
    # with lam = 1 the output term as a whole weighs as much as the trajectory term
    scores, factor = combine(terms, 1.0)
    assert sum(float(s.sum()) for s in scores.values()) == pytest.approx(2 * 10.0)
    no_output = {"a": {"md": torch.tensor([1.0]), "out": torch.tensor([0.0])}}
    scores, factor = combine(no_output, 1.0)
    assert factor == 0.0 and torch.equal(scores["a"], torch.tensor([1.0]))


def test_combine_on_real_terms(catanet_terms):
    scores, factor = combine(catanet_terms, 0.0)
    md = sum(float(t["md"].sum()) for t in catanet_terms.values())
    out = sum(float(t["out"].sum()) for t in catanet_terms.values())
    assert factor == pytest.approx(md / out)
    for name, t in catanet_terms.items():
        assert torch.equal(scores[name], t["md"])


@pytest.mark.parametrize("arch", ["catanet", "vit"])
def test_random_scores(request, arch):
    adapter, model = request.getfixturevalue(arch)
    a, b, c = (random_scores(adapter, model, seed) for seed in (0, 0, 1))
    assert list(a) == [g.name for g in adapter.groups(model)]
    for g in adapter.groups(model):
        assert a[g.name].shape == (g.count,)
        assert torch.equal(a[g.name], b[g.name])
        assert not torch.equal(a[g.name], c[g.name])
        assert ((a[g.name] >= 0) & (a[g.name] < 1)).all()


@pytest.mark.parametrize("arch", ["catanet", "vit"])
def test_magnitude_scores(request, arch):
    adapter, model = request.getfixturevalue(arch)
    scores = magnitude_scores(adapter, model)
    assert list(scores) == [g.name for g in adapter.groups(model)]
    for g in adapter.groups(model):
        assert scores[g.name].shape == (g.count,)
        assert torch.equal(scores[g.name], adapter.unit_magnitude(model, g))
        assert (scores[g.name] > 0).all()
