"""Fine-tuning with masks held fixed, exact resume, and the rebuild of the result."""
from __future__ import annotations

import pytest
import torch

import srprune
import srprune.finetune
from srprune.checkpoint import CheckpointError
from srprune.cli import main
from srprune.complexity import count_params
from srprune.finetune import finetune
from srprune.pruning.artifacts import masks_of
from srprune.pruning.rebuild import rebuild
from srprune.pruning.adapter import UNIT_KINDS_DEFAULT, groups_of_kinds, kept_counts
from srprune.train import WorkdirError
from srprune.pruning.catanet import CATANetAdapter
from test_train import Interrupt, dies_at

ADAPTER = CATANetAdapter()
TINY = dict(dim=8, block_num=2, qk_dim=8, mlp_dim=12, heads=2, patch_size=[8, 6],
            num_tokens=[4, 8], group_size=[16, 8], n_iters=[2, 2], upscale=2)


@pytest.fixture()
def setup(tmp_path, make_images):
    torch.manual_seed(0)
    teacher = srprune.create_model("catanet", **TINY)
    for tab, _ in teacher.blocks:
        tab.initted.fill_(True)
    srprune.save_model(teacher, tmp_path / "teacher.pth")
    gen = torch.Generator().manual_seed(1)
    masks = {g.name: (torch.rand(g.count, generator=gen) < 0.5).float()
             for g in groups_of_kinds(ADAPTER.groups(teacher), UNIT_KINDS_DEFAULT)}
    masks["blocks.1.0.iasa_attn"] = torch.zeros(2)          # a whole attention removed
    masks["blocks.0.0.iasa_attn"] = masks["blocks.0.1.layer.0.fn"] = torch.ones(2)
    masks["blocks.0.0.iasa_attn.qk"] = torch.tensor([1., 1, 0, 0, 0, 1, 1, 0])  # channels
    masks["blocks.0.1.layer.0.fn.v"] = torch.tensor([1., 0, 1, 0, 0, 1, 0, 1])
    student = srprune.load_model(tmp_path / "teacher.pth")
    ADAPTER.zero_units(student, masks)
    srprune.save_model(student, tmp_path / "pruned.pth", {"masks": masks})
    make_images(tmp_path / "train", 2, (40, 40))
    make_images(tmp_path / "val", 1, (24, 24), seed=1)
    config = {"device": "cpu",
              "train": {"iters": 6, "batch_size": 2, "crop_size": 12, "lr": 1e-2, "val_every": 3,
                        "save_every": 2},
              "data": {"train": {"hr": str(tmp_path / "train")}, "val": {"hr": str(tmp_path / "val")}}}
    return tmp_path, masks, config


def test_masked_units_stay_exactly_zero_and_others_learn(setup):
    root, masks, config = setup
    finetune(root / "teacher.pth", root / "pruned.pth", config, root / "ft.pth", root / "work",
             progress=False)
    tuned, before = srprune.load_model(root / "ft.pth"), srprune.load_model(root / "pruned.pth")
    assert tuned.checkpoint_meta["stage"] == "finetuned"
    changed = 0
    for group in (g for g in ADAPTER.groups(tuned) if g.name in masks):
        removed = (masks[group.name] == 0).nonzero().flatten()
        for name, axis, width in ADAPTER.slices(tuned, group):
            weight = tuned.get_parameter(name).detach()
            index = (removed[:, None] * width + torch.arange(width)).flatten()
            assert weight.index_select(axis, index).abs().max().item() == 0 if len(index) else True
            changed += int(not torch.equal(weight, before.get_parameter(name)))
    assert changed > 0
    assert torch.equal(masks_of(tuned, root / "ft.pth")["blocks.1.0.iasa_attn"], torch.zeros(2))


def test_killed_finetune_resumes_to_the_same_weights(setup, monkeypatch):
    root, masks, config = setup
    finetune(root / "teacher.pth", root / "pruned.pth", config, root / "a.pth", root / "wa",
             progress=False)
    original = srprune.finetune.feature_kd_loss
    monkeypatch.setattr(srprune.finetune, "feature_kd_loss",
                        lambda *args: dies_at(5, original(*args)))  # killed inside step 5
    with pytest.raises(Interrupt):
        finetune(root / "teacher.pth", root / "pruned.pth", config, root / "b.pth", root / "wb",
                 progress=False)
    monkeypatch.setattr(srprune.finetune, "feature_kd_loss", original)
    assert not (root / "b.pth").exists()
    finetune(root / "teacher.pth", root / "pruned.pth", config, root / "b.pth", root / "wb",
             progress=False)
    a, b = srprune.load_model(root / "a.pth"), srprune.load_model(root / "b.pth")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_cli_finetune_then_rebuild(setup, capsys):
    root, masks, config = setup
    settings = str(config).replace("'", '"')
    assert main(["finetune", "--teacher", str(root / "teacher.pth"), "--student",
                 str(root / "pruned.pth"), "--settings", settings, "--out", str(root / "ft.pth"),
                 "--quiet"]) == 0
    assert main(["rebuild", "--model", str(root / "ft.pth"), "--out", str(root / "rb.pth")]) == 0
    tuned, small = srprune.load_model(root / "ft.pth"), srprune.load_model(root / "rb.pth")
    assert small.checkpoint_meta["stage"] == "rebuilt"
    assert count_params(small)["total"] == ADAPTER.params(tuned, kept_counts(masks))
    assert small.cfg.tab_heads[1] == 0
    assert (small.cfg.tab_qk[0], small.cfg.lrsa_v[0]) == (2, 2)
    x = torch.rand(2, 3, 13, 17)
    with torch.no_grad():
        assert (small(x) - tuned(x)).abs().max().item() <= 1e-5


def test_student_without_masks_is_refused(setup):
    root, _, config = setup
    with pytest.raises(CheckpointError, match="records no masks"):
        finetune(root / "teacher.pth", root / "teacher.pth", config, root / "x.pth", root / "w",
                 progress=False)
    with pytest.raises(ValueError, match="unknown fine-tune loss keys"):
        finetune(root / "teacher.pth", root / "pruned.pth", {**config, "loss": {"kd": 1}},
                 root / "x.pth", root / "w", progress=False)


def test_rerun_with_another_loss_or_student_never_returns_the_old_weights(setup):
    """A stale work folder used to be resumed: the old run's weights came back, exit 0."""
    root, masks, config = setup
    args = (root / "teacher.pth", root / "pruned.pth")
    finetune(*args, config, root / "a.pth", root / "work", progress=False)
    other = {**config, "loss": {"feat": 0.5}}
    with pytest.raises(WorkdirError, match="another loss weights"):
        finetune(*args, other, root / "b.pth", root / "work", progress=False)
    finetune(*args, other, root / "b.pth", root / "work", progress=False, fresh_on_change=True)
    finetune(*args, other, root / "c.pth", root / "clean", progress=False)
    b, c = srprune.load_model(root / "b.pth"), srprune.load_model(root / "c.pth")
    assert b.checkpoint_meta["loss_weights"]["feat"] == 0.5
    for (name, x), y in zip(b.state_dict().items(), c.state_dict().values()):
        assert torch.equal(x, y), name

    swapped = {name: mask.flip(0) for name, mask in masks.items()}   # the same kept counts
    student = srprune.load_model(root / "teacher.pth")
    ADAPTER.zero_units(student, swapped)
    srprune.save_model(student, root / "swapped.pth", {"masks": swapped})
    with pytest.raises(WorkdirError, match="another student"):
        finetune(root / "teacher.pth", root / "swapped.pth", other, root / "d.pth",
                 root / "work", progress=False)


def test_masks_of_another_model_are_refused(setup):
    root, masks, config = setup
    wrong = {**masks, "blocks.0.0.iasa_attn": torch.ones(4)}
    student = srprune.load_model(root / "pruned.pth")
    srprune.save_model(student, root / "wrong.pth", {"masks": wrong})
    with pytest.raises(CheckpointError, match="4 units in group 'blocks.0.0.iasa_attn', this "
                                              "model 2"):
        rebuild(root / "wrong.pth", root / "rb.pth")
    with pytest.raises(CheckpointError, match="made for another model"):
        finetune(root / "teacher.pth", root / "wrong.pth", config, root / "x.pth", root / "w",
                 progress=False)


def test_feature_term_compares_block_outputs_only():
    """The trajectory has two layers per block; the feature term uses each block's output."""
    def tiny(seed):
        torch.manual_seed(seed)
        return srprune.create_model("catanet", dim=8, block_num=2, qk_dim=8, mlp_dim=8, heads=2,
                                    patch_size=[8, 6], num_tokens=[4, 8], group_size=[16, 8],
                                    n_iters=[2, 2]).eval()

    teacher, student = tiny(1), tiny(2)
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    loss = srprune.finetune.feature_kd_loss(CATANetAdapter(), teacher,
                                            srprune.finetune.KDWeights(pix=0.0, out=0.0, feat=1.0))
    total, _ = loss(student, x, torch.zeros(2, 3, 24, 24))
    expected, t, s = 0.0, teacher.first_conv(x), student.first_conv(x)
    with torch.no_grad():
        for i in range(teacher.cfg.block_num):
            t, s = teacher.block(i, t), student.block(i, s)
            expected += (s - t).abs().mean() / t.abs().mean()
    assert torch.allclose(total.detach(), torch.as_tensor(expected), rtol=1e-5)
