"""Compensation: exact recovery where possible, zeros kept, sequential fits, defined answers."""
from __future__ import annotations

import pytest
import torch

import srprune
from srprune.checkpoint import CheckpointError
from srprune.cli import main
from srprune.models.catanet import LRSA, TAB
from srprune.pruning.adapter import UnitGroup, masked
from srprune.pruning.catanet import CATANetAdapter
from srprune.pruning.compensate import (CompensationSettings, compensate_checkpoint,
                                        compensate_model, consumers)
from srprune.fileio import file_sha256
from srprune.pruning.calibration import Calibration
from tiny_catanet import owned_slices, random_masks, tiny_catanet, unit_index
from vit_adapter import TinyViT, TinyViTAdapter, ViTConfig

ADAPTER = CATANetAdapter()


def inputs(n: int, size: int = 16, seed: int = 5) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def full_masks(model) -> dict[str, torch.Tensor]:
    return {g.name: torch.ones(g.count) for g in ADAPTER.groups(model)}


def duplicate_unit(model, group: str, source: int, copy: int) -> None:
    """Make unit ``copy`` of ``group`` compute exactly what unit ``source`` computes."""
    with torch.no_grad():
        for key, axis, width in owned_slices(model, group):
            if axis == 0:
                p = model.get_parameter(key)
                rows = p.index_select(0, unit_index([source], width))
                p.index_copy_(0, unit_index([copy], width), rows)


def zeroed_student(teacher, masks):
    student = tiny_catanet()
    student.load_state_dict(teacher.state_dict())
    ADAPTER.zero_units(student, masks)
    return student


def masked_output(adapter, model, masks, x):
    with torch.no_grad(), masked(adapter, model, masks):
        return model(x)


@pytest.mark.parametrize("target", ["stream", "output"])
@pytest.mark.parametrize("group", ["blocks.0.0.mlp.fn", "blocks.1.1.layer.1.fn",
                                   "blocks.0.0.iasa_attn", "blocks.1.1.layer.0.fn"])
def test_a_removed_duplicate_unit_is_recovered_exactly(group, target):
    teacher = tiny_catanet()
    duplicate_unit(teacher, group, source=0, copy=1)
    masks = full_masks(teacher)
    masks[group][1] = 0
    student = zeroed_student(teacher, masks)
    x = inputs(4)
    with torch.no_grad():
        zeroed_error = (masked_output(ADAPTER, student, masks, x) - teacher(x)).abs().max()
    compensate_model(ADAPTER, student, teacher, masks, inputs(6, seed=1),
                     CompensationSettings(ridge=0.0, target=target), progress=False)
    with torch.no_grad():
        error = (masked_output(ADAPTER, student, masks, x) - teacher(x)).abs().max()
    assert zeroed_error > 1e-3
    assert error <= 1e-5


def model_masks(model, seed, empty=()):
    """Valid random masks of every group (heads, channels inside them, neurons)."""
    return random_masks(ADAPTER.groups(model), seed, empty)


@pytest.mark.parametrize("empty", [(), ("blocks.0.0.iasa_attn", "blocks.1.1.layer.1.fn")])
def test_zeros_hold_and_the_rebuilt_model_equals_the_compensated_one(empty):
    teacher = tiny_catanet()
    masks = model_masks(teacher, seed=3, empty=empty)
    student = zeroed_student(teacher, masks)
    with torch.no_grad():
        before = masked_output(ADAPTER, student, masks, inputs(2)) - teacher(inputs(2))
    fit = compensate_model(ADAPTER, student, teacher, masks, inputs(8), CompensationSettings(),
                           progress=False)
    assert fit and all(f["after"] <= f["before"] for f in fit.values())
    for name, mask in masks.items():
        removed = [u for u in range(len(mask)) if not mask[u]]
        for key, axis, width in owned_slices(student, name):
            if key in student.state_dict() and removed:
                cut = student.state_dict()[key].index_select(axis, unit_index(removed, width))
                assert not cut.any(), key
    x = inputs(2, size=13, seed=9)
    compensated = masked_output(ADAPTER, student, masks, x)
    with torch.no_grad():
        assert (ADAPTER.rebuild(student, masks)(x) - compensated).abs().max() <= 1e-5
        after = masked_output(ADAPTER, student, masks, inputs(2)) - teacher(inputs(2))
    assert after.pow(2).mean() < before.pow(2).mean()


def layer_data(student, teacher, masks, x, weight):
    """(student's inputs, teacher's outputs, teacher's inputs) of the layer owning ``weight``,
    by own hooks."""
    name = weight.rsplit(".", 1)[0]
    seen = {}

    def keep(key, value):
        seen.setdefault(key, value)  # returns None: the hook leaves the output as it is

    hooks = [student.get_submodule(name).register_forward_hook(lambda m, a, o: keep("x", a[0])),
             teacher.get_submodule(name).register_forward_hook(lambda m, a, o: keep("y", o)),
             teacher.get_submodule(name).register_forward_hook(lambda m, a, o: keep("t", a[0]))]
    masked_output(ADAPTER, student, masks, x)
    with torch.no_grad():
        teacher(x)
    for hook in hooks:
        hook.remove()
    return tuple(seen[k].reshape(-1, seen[k].shape[-1]) for k in ("x", "y", "t"))


def test_each_layer_is_fitted_on_what_the_compensated_student_feeds_it():
    """Every refit is the ridge solution for the inputs of the *final* (compensated) student."""
    teacher = tiny_catanet()
    masks = model_masks(teacher, seed=4)
    student = zeroed_student(teacher, masks)
    x, ridge = inputs(6), 1e-2
    compensate_model(ADAPTER, student, teacher, masks, x,
                     CompensationSettings(ridge=ridge, target="output", batch_size=4),
                     progress=False)
    found = consumers(ADAPTER, student, masks)
    assert len(found) >= 3
    for consumer in found:
        inp, out, teacher_in = layer_data(student, teacher, masks, x, consumer.weight)
        layer = student.get_submodule(consumer.weight.rsplit(".", 1)[0])
        z = inp[:, consumer.keep].double()
        bias = layer.bias is not None
        if bias:
            z = torch.cat([z, torch.ones(len(z), 1, dtype=torch.float64)], dim=1)
        gram = z.T @ z
        k = int(consumer.keep.sum())
        penalty = torch.zeros(len(gram), dtype=torch.float64)
        penalty[:k] = ridge * teacher_in.double().pow(2).sum(0).mean()  # the teacher's, all columns
        before = teacher.get_submodule(consumer.weight.rsplit(".", 1)[0])  # the zeroed weights
        prior = torch.zeros(len(gram), out.shape[1], dtype=torch.float64)
        prior[:k] = before.weight[:, consumer.keep].T.double()
        theta = torch.linalg.solve(gram + torch.diag(penalty),
                                   z.T @ out.double() + penalty[:, None] * prior)
        assert torch.allclose(layer.weight[:, consumer.keep].double(), theta[:k].T, atol=1e-4)
        if bias:
            assert torch.allclose(layer.bias.double(), theta[k], atol=1e-4)


@pytest.mark.parametrize("target", ["stream", "output"])
def test_few_samples_and_removed_modules_give_finite_answers(target):
    teacher = tiny_catanet()
    masks = model_masks(teacher, seed=1, empty=("blocks.0.1.layer.0.fn", "blocks.0.0.mlp.fn"))
    masks["blocks.1.0.mlp.fn"] = torch.zeros(12)
    student = zeroed_student(teacher, masks)
    few = inputs(1, size=2)  # 4 tokens for up to 12 columns
    fit = compensate_model(ADAPTER, student, teacher, masks, few,
                           CompensationSettings(ridge=0.0, target=target), progress=False)
    assert all(torch.isfinite(p).all() for p in student.parameters())
    assert "blocks.0.1.layer.0.fn.proj.weight" not in fit  # no column, no bias: left as it is
    assert not student.blocks[0][1].layer[0].fn.proj.weight.any()
    # a ConvFFN with no neuron keeps only fc2's bias: the mean of its target
    assert not student.blocks[0][0].mlp.fn.fc2.weight.any()
    assert torch.isfinite(masked_output(ADAPTER, student, masks, inputs(2))).all()


def test_every_unit_removed_everywhere():
    teacher = tiny_catanet()
    masks = {g.name: torch.zeros(g.count) for g in ADAPTER.groups(teacher)}
    student = zeroed_student(teacher, masks)
    compensate_model(ADAPTER, student, teacher, masks, inputs(2), CompensationSettings(),
                     progress=False)
    assert torch.isfinite(masked_output(ADAPTER, student, masks, inputs(2))).all()
    with torch.no_grad():
        small = ADAPTER.rebuild(student, masks)
        expected = masked_output(ADAPTER, student, masks, inputs(1))
        assert (small(inputs(1)) - expected).abs().max() <= 1e-5


def test_consumers_combine_the_groups_that_share_a_layer():
    """Columns of a layer are kept only where every group owning them keeps them."""
    model = tiny_catanet()

    class TwoOwners(CATANetAdapter):
        """Adds a second group owning the v channels of block 0's IASA heads (width 1)."""

        def groups(self, model):
            base = super().groups(model)
            extra = UnitGroup("blocks.0.0.iasa_attn.v", "head", 0, 8)
            return [*base[:1], extra, *base[1:]]

        def slices(self, model, group):
            if group.name.endswith(".v"):
                return [("blocks.0.0.iasa_attn.proj.weight", 1, 1)]
            return super().slices(model, group)

    masks = {"blocks.0.0.iasa_attn": torch.tensor([1.0, 0.0]),
             "blocks.0.0.iasa_attn.v": torch.tensor([0.0, 1, 1, 1, 1, 1, 1, 1])}
    found = consumers(TwoOwners(), model, masks)
    assert [c.weight for c in found] == ["blocks.0.0.iasa_attn.proj.weight"]
    assert found[0].keep.tolist() == [False, True, True, True, False, False, False, False]
    with pytest.raises(ValueError, match="does not have"):
        consumers(ADAPTER, model, {"blocks.9.0.mlp.fn": torch.ones(3)})
    with pytest.raises(ValueError, match="shape"):
        consumers(ADAPTER, model, {"blocks.0.0.mlp.fn": torch.ones(3)})


def test_the_tiny_vit_adapter_is_compensated_too():
    torch.manual_seed(0)
    teacher = TinyViT(ViTConfig()).eval()
    adapter = TinyViTAdapter()
    with torch.no_grad():  # neuron 3 of block 0 computes what neuron 1 computes
        teacher.blocks[0].fc1.weight[3] = teacher.blocks[0].fc1.weight[1]
        teacher.blocks[0].fc1.bias[3] = teacher.blocks[0].fc1.bias[1]
    masks = {"blocks.0.mlp": torch.ones(16)}
    masks["blocks.0.mlp"][3] = 0
    student = TinyViT(ViTConfig()).eval()
    student.load_state_dict(teacher.state_dict())
    adapter.zero_units(student, masks)
    x = torch.rand(2, 3, 8, 8)
    compensate_model(adapter, student, teacher, masks, torch.rand(8, 3, 8, 8),
                     CompensationSettings(ridge=0.0), progress=False)
    with torch.no_grad():
        assert (masked_output(adapter, student, masks, x) - teacher(x)).abs().max() <= 1e-5


def test_settings_are_checked():
    with pytest.raises(ValueError, match="target"):
        CompensationSettings(target="both")
    with pytest.raises(ValueError, match="ridge"):
        CompensationSettings(ridge=-1.0)


@pytest.fixture()
def files(tmp_path):
    teacher = tiny_catanet()
    srprune.save_model(teacher, tmp_path / "teacher.pth")
    masks = model_masks(teacher, seed=2)
    student = zeroed_student(teacher, masks)
    meta = {"stage": "zeroed", "masks": masks, "method": "magnitude", "mac_constraint": 0.7,
            "teacher_sha256": file_sha256(tmp_path / "teacher.pth")}
    srprune.save_model(student, tmp_path / "zeroed.pth", meta)
    return tmp_path, masks


def test_command_writes_a_self_describing_compensated_model(files, capsys):
    tmp, masks = files
    out = tmp / "catanet_compensated.pth"
    assert main(["compensate", "--teacher", str(tmp / "teacher.pth"), "--model",
                 str(tmp / "zeroed.pth"), "--out", str(out), "--num-crops", "4",
                 "--crop-size", "16", "--ridge", "0.01", "--quiet"]) == 0
    assert "compensated" in capsys.readouterr().out
    model = srprune.load_model(out)
    meta = model.checkpoint_meta
    assert meta["stage"] == "compensated" and meta["method"] == "magnitude"
    assert all(torch.equal(meta["masks"][k], masks[k]) for k in masks)
    assert meta["compensation"]["settings"]["ridge"] == 0.01
    assert meta["compensation"]["calibration"]["num_crops"] == 4
    fittable = {c.weight for c in consumers(ADAPTER, model, masks)
                if c.keep.any() or c.weight.endswith("fc2.weight")}  # proj has no bias
    assert set(meta["compensation"]["fit"]) == fittable


def test_mismatches_are_refused(files):
    tmp, _ = files
    calibration = Calibration(num_crops=2, crop_size=8)
    srprune.save_model(tiny_catanet(seed=1), tmp / "other.pth")
    with pytest.raises(CheckpointError, match="not chosen for"):
        compensate_checkpoint(tmp / "other.pth", tmp / "zeroed.pth", tmp / "o.pth", calibration,
                              CompensationSettings(), progress=False)
    with pytest.raises(CheckpointError, match="records no masks"):
        compensate_checkpoint(tmp / "teacher.pth", tmp / "teacher.pth", tmp / "o.pth",
                              calibration, CompensationSettings(), progress=False)
    with pytest.raises(SystemExit) as exit_:  # refused by the parser, before any work
        main(["compensate", "--teacher", str(tmp / "teacher.pth"), "--model",
              str(tmp / "zeroed.pth"), "--out", str(tmp / "o.pth"), "--ridge", "-1"])
    assert exit_.value.code == 2
    assert not (tmp / "o.pth").exists()


def test_a_large_ridge_gives_back_the_zeroed_weights():
    """The ridge shrinks towards the zeroed model's weights, not towards zero."""
    teacher = tiny_catanet()
    masks = model_masks(teacher, seed=4)
    student = zeroed_student(teacher, masks)
    compensate_model(ADAPTER, student, teacher, masks, inputs(4),
                     CompensationSettings(ridge=1e9, target="output", batch_size=4),
                     progress=False)
    for consumer in consumers(ADAPTER, student, masks):
        name = consumer.weight
        got, zeroed = student.get_parameter(name), teacher.get_parameter(name)
        assert torch.allclose(got[:, consumer.keep], zeroed[:, consumer.keep], atol=1e-5), name
        assert not got[:, ~consumer.keep].any()


@pytest.mark.parametrize("target", ["stream", "output"])
def test_a_shared_memo_runs_the_teacher_once_and_changes_nothing(target):
    """Candidates compensated with one memo get the weights they get alone."""
    teacher = tiny_catanet()
    x, settings = inputs(6), CompensationSettings(target=target, batch_size=4)
    calls = []
    hooks = [m.register_forward_pre_hook(lambda *_: calls.append(1))
             for m in teacher.modules() if isinstance(m, (TAB, LRSA))]
    memo, runs = {}, []
    for seed in (4, 5):
        masks = model_masks(teacher, seed=seed)
        alone, shared = zeroed_student(teacher, masks), zeroed_student(teacher, masks)
        compensate_model(ADAPTER, alone, teacher, masks, x, settings, progress=False)
        calls.clear()
        compensate_model(ADAPTER, shared, teacher, masks, x, settings, progress=False, memo=memo)
        runs.append(len(calls))
        for (name, a), b in zip(alone.named_parameters(), shared.parameters()):
            assert torch.equal(a, b), name
    for hook in hooks:
        hook.remove()
    assert runs[0] > 0 and runs[1] < runs[0]
