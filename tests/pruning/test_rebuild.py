"""Physical rebuild: same function as the masked model, with the size the adapter predicted."""
from __future__ import annotations

import pytest
import torch

import srprune
from srprune.checkpoint import CheckpointError
from srprune.complexity import analytic_macs, count_params, macs_full
from srprune.data import load_pairs
from srprune.data import to_tensor
from srprune.pruning.adapter import UNIT_KINDS_DEFAULT, KINDS, groups_of_kinds, kept_counts, masked
from srprune.pruning.catanet import CATANetAdapter
from tiny_catanet import random_masks as valid_masks, tiny_catanet

ADAPTER = CATANetAdapter()


def random_masks(model, seed, empty=(), kinds=UNIT_KINDS_DEFAULT):
    return valid_masks(groups_of_kinds(ADAPTER.groups(model), kinds), seed, empty)


@pytest.mark.parametrize("kinds", [UNIT_KINDS_DEFAULT, KINDS], ids=["heads", "channels"])
@pytest.mark.parametrize("empty", [(), ("blocks.0.0.iasa_attn", "blocks.1.1.layer.1.fn"),
                                   ("blocks.1.1.layer.0.fn", "blocks.0.0.mlp.fn")])
@pytest.mark.parametrize("size", [(12, 16), (11, 11), (5, 7)])
def test_rebuilt_equals_masked(empty, size, kinds):
    model = tiny_catanet(qk_dim=4 if kinds == KINDS else 8)
    masks = random_masks(model, seed=len(empty) + size[0], empty=empty, kinds=kinds)
    small = ADAPTER.rebuild(model, masks)
    x = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        with masked(ADAPTER, model, masks):
            expected = model(x)
        assert (small(x) - expected).abs().max().item() <= 1e-5
    for name in empty:
        assert getattr(small.cfg, {"0.iasa_attn": "tab_heads", "0.mlp.fn": "tab_mlp",
                                   "1.layer.0.fn": "lrsa_heads",
                                   "1.layer.1.fn": "lrsa_mlp"}[name.split(".", 2)[2]])[
            int(name.split(".")[1])] == 0


@pytest.mark.parametrize("kinds", [UNIT_KINDS_DEFAULT, KINDS], ids=["heads", "channels"])
def test_rebuilt_size_is_what_the_adapter_predicted(kinds):
    model = tiny_catanet(upscale=3)
    masks = random_masks(model, seed=1, empty=("blocks.1.0.iasa_attn",), kinds=kinds)
    small = ADAPTER.rebuild(model, masks)
    kept = kept_counts(masks)
    assert count_params(small)["total"] == ADAPTER.params(model, kept) < count_params(model)["total"]
    assert small.blocks[1][0].conv1x1 is None  # no heads left: nothing for the 1x1 conv to mix
    for size in ((12, 16), ADAPTER.reference_lr_size(model)):
        assert macs_full(small, size)["total"] == ADAPTER.macs(model, kept, size)
        assert analytic_macs(small.cfg, size) == ADAPTER.macs(model, kept, size)
        assert macs_full(small, size, device="cpu")["total"] == ADAPTER.macs(model, kept, size)


def test_one_channel_per_head():
    """Every kept head down to one q/k and one v channel: still equal, still one SDPA call."""
    model = tiny_catanet()
    groups = ADAPTER.groups(model)
    masks = {g.name: torch.zeros(g.count).index_fill_(0, torch.arange(0, g.count, g.per_parent)
                                                      + g.per_parent - 1, 1.0)
             for g in groups if g.parent}
    small = ADAPTER.rebuild(model, masks)
    assert set(small.cfg.tab_qk + small.cfg.tab_v + small.cfg.lrsa_qk + small.cfg.lrsa_v) == {1}
    x = torch.rand(2, 3, 13, 9, generator=torch.Generator().manual_seed(4))
    calls = []
    original = torch.nn.functional.scaled_dot_product_attention
    with torch.no_grad():
        with masked(ADAPTER, model, masks):
            expected = model(x)
        torch.nn.functional.scaled_dot_product_attention = lambda *a, **k: calls.append(1) or \
            original(*a, **k)
        try:
            out = small(x)
        finally:
            torch.nn.functional.scaled_dot_product_attention = original
    assert (out - expected).abs().max().item() <= 1e-5
    assert len(calls) == 3 * model.cfg.block_num  # IASA groups, IASA centres, LRSA per block


@pytest.mark.parametrize("kinds", [UNIT_KINDS_DEFAULT, KINDS], ids=["heads", "channels"])
def test_rebuilt_checkpoint_is_self_describing(tmp_path, kinds):
    model = tiny_catanet()
    small = ADAPTER.rebuild(model, random_masks(model, seed=2, kinds=kinds))
    srprune.save_model(small, tmp_path / "rebuilt.pth")
    loaded = srprune.load_model(tmp_path / "rebuilt.pth")
    assert loaded.cfg == small.cfg
    x = torch.rand(1, 3, 9, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


def test_plain_state_dict_of_a_channel_pruned_model_gives_a_hint(tmp_path):
    model = tiny_catanet()
    masks = {"blocks.0.0.iasa_attn.v": torch.tensor([1., 1, 0, 0, 0, 1, 1, 0])}
    small = ADAPTER.rebuild(model, masks)
    torch.save(small.state_dict(), tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="pruned inside heads"):
        srprune.load_model(tmp_path / "plain.pth", heads=2, patch_size=[8, 6],
                           group_size=[16, 8], n_iters=[2, 2])
    widths = {k: getattr(small.cfg, k) for k in ("qk_dim", "tab_heads", "lrsa_heads", "tab_qk",
                                                 "tab_v", "lrsa_qk", "lrsa_v")}
    loaded = srprune.load_model(tmp_path / "plain.pth", heads=2, patch_size=[8, 6],
                                group_size=[16, 8], n_iters=[2, 2], **widths)
    x = torch.rand(1, 3, 9, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


def test_rebuilt_released_x4_on_set5(shared_dir):
    teacher = srprune.load_model(shared_dir / "weights/catanet_x4_third_party.pth")
    masks = valid_masks(ADAPTER.groups(teacher), 0, keep=0.7)
    small = ADAPTER.rebuild(teacher, masks)
    pairs = load_pairs(shared_dir / "data/Set5/HR", 4, shared_dir / "data/Set5/LR_bicubic/X4", "{}x4")
    for name, lr, _ in list(pairs)[:3]:
        x = to_tensor(lr)
        with torch.no_grad():
            with masked(ADAPTER, teacher, masks):
                expected = teacher(x)
            assert (small(x) - expected).abs().max().item() <= 1e-5, name
