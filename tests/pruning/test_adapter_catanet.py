"""CATANetAdapter against the spec: a mask is exactly the removal of the slices the spec names
(written out by hand in tiny_catanet.py), channel groups, zeroing, MACs and magnitudes. What
every adapter must do is test_adapter_conformance.py."""
from __future__ import annotations

import copy

import pytest
import torch

from srprune.complexity import macs_full
from srprune.models.catanet import ConvFFN, HeadProjections
from srprune.pruning.adapter import (UNIT_KINDS_DEFAULT, block_output_layers, check_unit_kinds,
                                     full_kept, groups_of_kinds, kept_counts, masked)
from srprune.pruning.catanet import CATANetAdapter
from srprune.pruning.selection import Costs, families
from tiny_catanet import kept_units, narrowed, owned_slices, tiny_catanet, unit_index

ADAPTER = CATANetAdapter()
T0, F0, L0, G0 = "blocks.0.0.iasa_attn", "blocks.0.0.mlp.fn", "blocks.0.1.layer.0.fn", "blocks.0.1.layer.1.fn"
T1, F1, L1, G1 = "blocks.1.0.iasa_attn", "blocks.1.0.mlp.fn", "blocks.1.1.layer.0.fn", "blocks.1.1.layer.1.fn"


def m(*bits: int) -> torch.Tensor:
    return torch.tensor(bits, dtype=torch.float32)


def neurons(seed: int, zeros: bool = False) -> torch.Tensor:
    """A 12-neuron mask with some kept and some removed (or all removed)."""
    if zeros:
        return torch.zeros(12)
    mask = (torch.rand(12, generator=torch.Generator().manual_seed(seed)) < 0.5).float()
    mask[seed % 12], mask[(seed + 1) % 12] = 1.0, 0.0
    return mask


def channels(heads: int, width: int, keep: dict[int, list[int]]) -> torch.Tensor:
    """A channel mask: ``keep[h]`` lists the channels kept in head h (other heads keep none)."""
    mask = torch.zeros(heads * width)
    for head, kept in keep.items():
        mask[[head * width + c for c in kept]] = 1.0
    return mask


def channel_cases(dq: int) -> dict[str, dict[str, torch.Tensor]]:
    """Channel masks (q/k width ``dq``, v width 4) alone, with heads, and down to one channel."""
    q_one = {0: [dq - 1], 1: [0]}
    return {
        "tab_qk": {f"{T0}.qk": channels(2, dq, {0: [0], 1: [dq - 1]}),
                   f"{T1}.qk": channels(2, dq, {0: list(range(dq - 1)), 1: list(range(1, dq))})},
        "tab_v": {f"{T0}.v": channels(2, 4, {0: [1, 2], 1: [0, 3]}),
                  f"{T1}.v": channels(2, 4, {0: [3], 1: [2]})},
        "lrsa_qk_v": {f"{L0}.qk": channels(2, dq, q_one), f"{L1}.v": channels(2, 4, {0: [0, 1, 2],
                                                                                    1: [1, 2, 3]})},
        "channels_and_heads": {T0: m(0, 1), f"{T0}.qk": channels(2, dq, {1: [0]}),
                               f"{T0}.v": channels(2, 4, {1: [3]}), L1: m(1, 0),
                               f"{L1}.v": channels(2, 4, {0: [1, 2]}), F1: neurons(11)},
        "channels_heads_removed": {T0: m(0, 0), f"{T0}.qk": torch.zeros(2 * dq),
                                   f"{T0}.v": torch.zeros(8), L0: m(0, 1),
                                   f"{L0}.qk": channels(2, dq, {1: [0]}),
                                   T1: m(1, 1), f"{T1}.v": channels(2, 4, {0: [0], 1: [3]})},
    }


CASES = {
    "tab_heads": {T0: m(0, 1), T1: m(1, 0)},
    "tab_heads_all_removed": {T0: m(0, 0), T1: m(0, 1)},
    "lrsa_heads": {L0: m(1, 0), L1: m(0, 1)},
    "lrsa_heads_all_removed": {L0: m(0, 1), L1: m(0, 0)},
    "tab_ffn": {F0: neurons(1), F1: neurons(2)},
    "tab_ffn_all_removed": {F0: neurons(0, zeros=True), F1: neurons(3)},
    "lrsa_ffn": {G0: neurons(4), G1: neurons(5)},
    "lrsa_ffn_all_removed": {G0: neurons(6), G1: neurons(0, zeros=True)},
    "everything": {T0: m(1, 0), F0: neurons(7), L0: m(0, 0), G0: neurons(8),
                   T1: m(0, 0), F1: neurons(0, zeros=True), L1: m(0, 1), G1: neurons(9)},
}


@pytest.fixture(scope="module", params=[8, 4], ids=["dq=dv", "dq<dv"])
def model(request):
    """qk_dim 8 gives q/k and v heads of equal width (4); qk_dim 4 gives dq = 2 < dv = 4."""
    return tiny_catanet(seed=request.param, qk_dim=request.param)


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, 12, 16, generator=torch.Generator().manual_seed(0))


def no_mask_left(model) -> bool:
    """No module of ``model`` holds a mask."""
    return all(getattr(module, attr, None) is None for module in model.modules()
               if isinstance(module, (HeadProjections, ConvFFN))
               for attr in ("unit_mask", "qk_mask", "v_mask"))


def masked_output(model, masks, x):
    with torch.no_grad(), masked(ADAPTER, model, masks):
        return model(x)


def test_groups_follow_the_config(model):
    groups = groups_of_kinds(ADAPTER.groups(model), UNIT_KINDS_DEFAULT)
    assert [g.name for g in groups] == [T0, F0, L0, G0, T1, F1, L1, G1]
    assert [(g.kind, g.block, g.count) for g in groups] == \
        [("head", 0, 2), ("neuron", 0, 12)] * 2 + [("head", 1, 2), ("neuron", 1, 12)] * 2
    assert [g.layer for g in groups] == [0, 0, 1, 1, 2, 2, 3, 3]  # TAB output, block output
    assert block_output_layers(groups) == [1, 3]
    # channel groups write where their head group writes
    assert all(g.layer == groups[[h.name for h in groups].index(g.parent)].layer
               for g in ADAPTER.groups(model) if g.parent)
    narrow = tiny_catanet(tab_heads=[1, 2], lrsa_mlp=[12, 5], lrsa_qk=[1, 2], tab_v=[4, 3])
    narrow_groups = ADAPTER.groups(narrow)
    assert [g.count for g in groups_of_kinds(narrow_groups, ["head", "neuron"])] == \
        [1, 12, 2, 12, 2, 12, 2, 5]
    dq = narrow.cfg.head_qk
    channel = [(g.name, g.kind, g.count, g.parent, g.per_parent)
               for g in groups_of_kinds(narrow_groups, "head,qk_channel,v_channel") if g.parent]
    assert channel == [
        (f"{T0}.qk", "qk_channel", dq, T0, dq), (f"{T0}.v", "v_channel", 4, T0, 4),
        (f"{L0}.qk", "qk_channel", 2, L0, 1), (f"{L0}.v", "v_channel", 8, L0, 4),
        (f"{T1}.qk", "qk_channel", 2 * dq, T1, dq), (f"{T1}.v", "v_channel", 6, T1, 3),
        (f"{L1}.qk", "qk_channel", 4, L1, 2), (f"{L1}.v", "v_channel", 8, L1, 4)]
    # every head group is directly followed by its channel groups
    names = [g.name for g in narrow_groups]
    assert names.index(f"{T1}.qk") == names.index(T1) + 1 == names.index(f"{T1}.v") - 1


def test_unit_kinds_are_validated():
    assert check_unit_kinds("head, qk_channel,neuron") == ("head", "qk_channel", "neuron")
    assert check_unit_kinds(["neuron"]) == ("neuron",)
    for bad in (["head", "channel"], [], ["head", "head"]):
        with pytest.raises(ValueError, match="units must be"):
            check_unit_kinds(bad)
    with pytest.raises(ValueError, match="need 'head'"):
        check_unit_kinds(["v_channel", "neuron"])


ALL_CASES = [*CASES, *channel_cases(2)]


def case_masks(model, case):
    return CASES[case] if case in CASES else channel_cases(model.cfg.head_qk)[case]


@pytest.mark.parametrize("case", ALL_CASES)
def test_mask_equals_removal(model, x, case):
    masks = case_masks(model, case)
    ADAPTER.check_masks(model, masks)
    out = masked_output(model, masks, x)
    with torch.no_grad():
        small = narrowed(model, masks)
        expected = small(x)
        full = model(x)
    assert (out - expected).abs().max().item() <= 1e-5
    assert (out - full).abs().max().item() > 1e-3  # the masks do change the output
    # the context manager leaves no mask behind
    assert no_mask_left(model)


def test_fully_masked_modules(model):
    """All heads removed: the attention adds nothing; all neurons: the FFN adds fc2's bias."""
    with torch.no_grad():
        lrsa = model.blocks[0][1]
        y = torch.randn(2, 8, 12, 16, generator=torch.Generator().manual_seed(3))
        ffn = lrsa.layer[1].fn
        tokens = y.flatten(2).transpose(1, 2)
        ffn.unit_mask = torch.zeros(12)
        try:
            out = ffn(tokens, 12, 16)
        finally:
            ffn.unit_mask = None
        assert torch.allclose(out, ffn.fc2.bias.expand_as(out), atol=1e-6)
        attn = lrsa.layer[0].fn
        attn.unit_mask = torch.zeros(2)
        try:
            assert attn(tokens).abs().max().item() == 0
        finally:
            attn.unit_mask = None


def test_all_lrsa_heads_removed_at_triple_overlap_size(model):
    """Removing every LRSA head keeps the put-back's 3/4 scaling of rows covered three times."""
    x = torch.rand(1, 3, 11, 11, generator=torch.Generator().manual_seed(5))
    masks = {L1: m(0, 0)}  # block 1 has patch 6, stride 4: rows 5 is covered three times at 11
    out = masked_output(model, masks, x)
    with torch.no_grad():
        expected = narrowed(model, masks)(x)
    assert (out - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("case", ["everything", "channels_and_heads", "channels_heads_removed"])
def test_zeroed_model_equals_masked_model(model, x, case):
    masks = case_masks(model, case)
    zeroed = copy.deepcopy(model)
    ADAPTER.zero_units(zeroed, masks)
    with torch.no_grad():
        out = zeroed(x)
    assert (out - masked_output(model, masks, x)).abs().max().item() <= 1e-5

    # exactly the spec's slices are zero, everything else is untouched
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for name, mask in masks.items():
        removed = [u for u in range(mask.numel()) if u not in kept_units(mask)]
        for key, axis, width in owned_slices(model, name):
            expected[key].index_fill_(axis, unit_index(removed, width), 0.0)
    got = zeroed.state_dict()
    assert set(got) == set(expected)
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    # the zeroed slices were not already zero
    assert not torch.equal(got[f"{T0}.to_q.weight"], model.state_dict()[f"{T0}.to_q.weight"])
    assert no_mask_left(zeroed)


@pytest.mark.parametrize("case", ["everything", "tab_heads", "lrsa_ffn_all_removed", "tab_qk",
                                  "lrsa_qk_v", "channels_and_heads", "channels_heads_removed"])
def test_macs_equal_measured_macs_of_the_narrowed_model(model, case):
    masks = case_masks(model, case)
    small = narrowed(model, masks)
    kept = {**full_kept(ADAPTER.groups(model)), **kept_counts(masks)}
    for size in [(12, 16), (11, 11), ADAPTER.reference_lr_size(model)]:
        assert ADAPTER.macs(model, kept, size) == macs_full(small, size)["total"], size
        assert ADAPTER.macs(model, kept_counts(masks), size) == macs_full(small, size)["total"]
    full = full_kept(ADAPTER.groups(model))
    assert ADAPTER.macs(model, full, (12, 16)) == macs_full(model, (12, 16))["total"]


def test_unit_magnitude_is_the_l1_norm_of_its_slices(model):
    groups = {g.name: g for g in ADAPTER.groups(model)}
    sd = model.state_dict()
    dq, dv = model.cfg.head_qk, model.cfg.head_v
    q, v = slice(dq, 2 * dq), slice(dv, 2 * dv)  # head 1
    tab_head = (sd[f"{T0}.to_q.weight"][q].abs().sum() + sd[f"{T0}.to_k.weight"][q].abs().sum()
                + sd[f"{T0}.to_v.weight"][v].abs().sum() + sd[f"{T0}.proj.weight"][:, v].abs().sum()
                + sd["blocks.0.0.irca_attn.to_k.weight"][q].abs().sum()
                + sd["blocks.0.0.irca_attn.to_v.weight"][v].abs().sum())
    lrsa_head = sum(sd[f"{L1}.{n}.weight"][:dq].abs().sum() for n in ("to_q", "to_k")) \
        + sd[f"{L1}.to_v.weight"][:dv].abs().sum() + sd[f"{L1}.proj.weight"][:, :dv].abs().sum()
    j = 5
    neuron = (sd[f"{G1}.fc1.weight"][j].abs().sum() + sd[f"{G1}.fc1.bias"][j].abs()
              + sd[f"{G1}.dwconv.depthwise_conv.0.weight"][j].abs().sum()
              + sd[f"{G1}.dwconv.depthwise_conv.0.bias"][j].abs()
              + sd[f"{G1}.fc2.weight"][:, j].abs().sum())
    mags = {n: ADAPTER.unit_magnitude(model, groups[n]) for n in (T0, L1, G1)}
    assert mags[T0].shape == (2,) and mags[G1].shape == (12,)
    assert torch.allclose(mags[T0][1], tab_head, rtol=1e-6)
    assert torch.allclose(mags[L1][0], lrsa_head, rtol=1e-6)
    assert torch.allclose(mags[G1][j], neuron, rtol=1e-6)


def test_unit_magnitude_of_channels(model):
    groups = {g.name: g for g in ADAPTER.groups(model)}
    sd = model.state_dict()
    dq = model.cfg.head_qk
    c = dq + 1  # head 1, channel 1
    q = sum(sd[key][c].abs().sum() for key in (f"{T0}.to_q.weight", f"{T0}.to_k.weight",
                                                "blocks.0.0.irca_attn.to_k.weight"))
    v = (sd[f"{L0}.to_v.weight"][6].abs().sum() + sd[f"{L0}.proj.weight"][:, 6].abs().sum())
    assert torch.allclose(ADAPTER.unit_magnitude(model, groups[f"{T0}.qk"])[c], q, rtol=1e-6)
    assert torch.allclose(ADAPTER.unit_magnitude(model, groups[f"{L0}.v"])[6], v, rtol=1e-6)
    # a head's magnitude is the sum of its channels'
    heads = ADAPTER.unit_magnitude(model, groups[T0])
    parts = sum(ADAPTER.unit_magnitude(model, groups[f"{T0}{end}"]).view(2, -1).sum(dim=1)
                for end in (".qk", ".v"))
    assert torch.allclose(heads, parts, rtol=1e-5)


def test_merged_slicing_cuts_each_parameter_once(model):
    """A head and its channel groups slice the same weights: one keep vector per parameter."""
    dq = model.cfg.head_qk
    masks = {T0: m(0, 1), f"{T0}.qk": channels(2, dq, {1: [0]}),
             f"{T0}.v": channels(2, 4, {1: [1, 3]})}
    state = ADAPTER.sliced_state(model, masks)
    full = model.state_dict()
    assert torch.equal(state[f"{T0}.to_q.weight"], full[f"{T0}.to_q.weight"][[dq]])
    assert torch.equal(state["blocks.0.0.irca_attn.to_v.weight"],
                       full["blocks.0.0.irca_attn.to_v.weight"][[5, 7]])
    assert torch.equal(state[f"{T0}.proj.weight"], full[f"{T0}.proj.weight"][:, [5, 7]])
    small = ADAPTER.rebuild(model, masks)
    assert (small.cfg.tab_heads[0], small.cfg.tab_qk[0], small.cfg.tab_v[0]) == (1, 1, 2)
    restored = copy.deepcopy(model)
    ADAPTER.write_back(restored, small, masks)
    zeroed = copy.deepcopy(model)
    ADAPTER.zero_units(zeroed, masks)
    for key, value in zeroed.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


@pytest.mark.parametrize("masks, message", [
    ({"blocks.0.0.nope": m(1, 1)}, "unknown group"),
    ({T0: m(1, 0, 1)}, "must have shape"),
    ({f"{T0}.v": channels(2, 4, {0: [0, 1], 1: [2]})}, "same number"),
    ({f"{L1}.v": channels(2, 4, {0: [0]})}, "same number, at least 1"),
    ({T0: m(1, 0), f"{T0}.v": channels(2, 4, {0: [0], 1: [1]})}, "head 1, which"),
])
def test_check_masks_names_the_violation(model, masks, message):
    with pytest.raises(ValueError, match=message):
        ADAPTER.check_masks(model, masks)
    with pytest.raises(ValueError, match=message):
        ADAPTER.rebuild(model, masks)


def test_channel_unit_costs_are_exact(model):
    """A channel costs 1/heads of narrowing each head by one; heads and channels add up."""
    lr = (12, 16)
    fams = families(ADAPTER.groups(model))
    costs = Costs(fams, lambda kept: ADAPTER.macs(model, kept, lr), min_keep=0)
    unit = {k: v for f in fams for k, v in costs.unit(f).items()}
    total = ADAPTER.macs(model, {}, lr)
    dq = model.cfg.head_qk
    one_less = ADAPTER.macs(model, {f"{L1}.qk": 2 * (dq - 1)}, lr)
    assert unit[f"{L1}.qk"] * 2 == total - one_less > 0
    # a head (one of two) costs exactly its channels
    for name in (T0, L0, T1, L1):
        assert unit[name] == dq * unit[f"{name}.qk"] + 4 * unit[f"{name}.v"]
