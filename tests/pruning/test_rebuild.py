"""Physical rebuild: same function as the masked model, with the size the adapter predicted."""
from __future__ import annotations

import pytest
import torch

import srprune
from srprune.complexity import count_params, macs_full
from srprune.evaluate import load_pairs
from srprune.data import to_tensor
from srprune.pruning.adapter import kept_counts, masked
from srprune.pruning.catanet import CATANetAdapter
from tiny_catanet import tiny_catanet

ADAPTER = CATANetAdapter()


def random_masks(model, seed, empty=()):
    gen = torch.Generator().manual_seed(seed)
    masks = {}
    for g in ADAPTER.groups(model):
        mask = (torch.rand(g.count, generator=gen) < 0.6).float()
        masks[g.name] = torch.zeros(g.count) if g.name in empty else mask
    return masks


@pytest.mark.parametrize("empty", [(), ("blocks.0.0.iasa_attn", "blocks.1.1.layer.1.fn"),
                                   ("blocks.1.1.layer.0.fn", "blocks.0.0.mlp.fn")])
@pytest.mark.parametrize("size", [(12, 16), (11, 11), (5, 7)])
def test_rebuilt_equals_masked(empty, size):
    model = tiny_catanet()
    masks = random_masks(model, seed=len(empty) + size[0], empty=empty)
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


def test_rebuilt_size_is_what_the_adapter_predicted():
    model = tiny_catanet(upscale=3)
    masks = random_masks(model, seed=1, empty=("blocks.1.0.iasa_attn",))
    small = ADAPTER.rebuild(model, masks)
    kept = kept_counts(masks)
    assert count_params(small)["total"] == ADAPTER.params(model, kept) < count_params(model)["total"]
    assert small.blocks[1][0].conv1x1 is None  # no heads left: nothing for the 1x1 conv to mix
    for size in ((12, 16), ADAPTER.reference_lr_size(model)):
        assert macs_full(small, size)["total"] == ADAPTER.macs(model, kept, size)


def test_rebuilt_checkpoint_is_self_describing(tmp_path):
    model = tiny_catanet()
    small = ADAPTER.rebuild(model, random_masks(model, seed=2))
    srprune.save_model(small, tmp_path / "rebuilt.pth")
    loaded = srprune.load_model(tmp_path / "rebuilt.pth")
    x = torch.rand(1, 3, 9, 10)
    with torch.no_grad():
        assert torch.equal(loaded(x), small(x))


def test_rebuilt_released_x4_on_set5(shared_dir):
    teacher = srprune.load_model(shared_dir / "weights/catanet_x4_third_party.pth")
    gen = torch.Generator().manual_seed(0)
    masks = {g.name: (torch.rand(g.count, generator=gen) < 0.7).float()
             for g in ADAPTER.groups(teacher)}
    small = ADAPTER.rebuild(teacher, masks)
    pairs = load_pairs(shared_dir / "data/Set5/HR", 4, shared_dir / "data/Set5/LR_bicubic/X4", "{}x4")
    for name, lr, _ in list(pairs)[:3]:
        x = to_tensor(lr)
        with torch.no_grad():
            with masked(ADAPTER, teacher, masks):
                expected = teacher(x)
            assert (small(x) - expected).abs().max().item() <= 1e-5, name
