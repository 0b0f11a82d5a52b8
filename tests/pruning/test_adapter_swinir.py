"""SwinIR adapter against the spec: masking equals the removal the spec describes (written out
by hand in tiny_swinir.py), the released model's unit costs, exact recovery of a duplicated
unit, and the pruning stages end to end. What every adapter must do is
test_adapter_conformance.py."""
from __future__ import annotations

import copy

import pytest
import torch

import srprune
from srprune.complexity import macs_full, reference_lr_size
from srprune.pruning.rebuild import rebuild as rebuild_checkpoint
from srprune.models import create_model
from srprune.pruning.adapter import full_kept, masked
from srprune.pruning.calibration import Calibration
from srprune.pruning.compensate import CompensationSettings, compensate_checkpoint, compensate_model
from srprune.pruning.importance import OptinSettings
from srprune.pruning.registry import adapter_for
from srprune.pruning.search import export_zeroed, save_artifact, score_units, search_masks
from srprune.pruning.swinir import SwinIRAdapter
from tiny_swinir import layer_names, narrowed, random_masks, tiny_swinir

ADAPTER = SwinIRAdapter()
A0, M0 = "layers.0.residual_group.blocks.0.attn", "layers.0.residual_group.blocks.0.mlp"
A3, M3 = "layers.1.residual_group.blocks.1.attn", "layers.1.residual_group.blocks.1.mlp"


@pytest.fixture(scope="module")
def model():
    return tiny_swinir()


@pytest.fixture(scope="module")
def x():
    return torch.rand(2, 3, 10, 13, generator=torch.Generator().manual_seed(0))


def masked_output(model, masks, x):
    with torch.no_grad(), masked(ADAPTER, model, masks):
        return model(x)


CASES = {
    "random": dict(seed=0),
    "heads_all_removed": dict(seed=1, empty=(A0, A3)),
    "neurons_all_removed": dict(seed=2, empty=(M0, M3)),
    "everything_empty": dict(seed=3, empty=tuple(f"{n}.{m}" for n in
                                                 ["layers.0.residual_group.blocks.1"]
                                                 for m in ("attn", "mlp"))),
}


def case_masks(model, case):
    spec = CASES[case]
    return random_masks(ADAPTER.groups(model), spec["seed"], spec.get("empty", ()))


def test_groups_follow_the_config():
    model = tiny_swinir(layer_heads=[2, 1, 0, 2], layer_mlp=[16, 3, 16, 0])
    groups = ADAPTER.groups(model)
    assert adapter_for(model).__class__ is SwinIRAdapter
    assert [g.name for g in groups] == [f"{n}.{m}" for n in layer_names(model)
                                        for m in ("attn", "mlp")]
    assert [(g.kind, g.count, g.block, g.layer) for g in groups] == [
        ("head", 2, 0, 0), ("neuron", 16, 0, 0), ("head", 1, 0, 1), ("neuron", 3, 0, 1),
        ("head", 0, 1, 2), ("neuron", 16, 1, 2), ("head", 2, 1, 3), ("neuron", 0, 1, 3)]
    assert ADAPTER.reference_lr_size(model) == reference_lr_size(2)
    feats, _ = ADAPTER.trajectory(model, torch.rand(1, 3, 8, 8))
    assert len(feats) == 4 and feats[0].shape == (1, 64, 8)


@pytest.mark.parametrize("case", CASES)
def test_mask_equals_removal_equals_rebuild(model, x, case):
    masks = case_masks(model, case)
    out = masked_output(model, masks, x)
    with torch.no_grad():
        by_hand, rebuilt, full = narrowed(model, masks)(x), ADAPTER.rebuild(model, masks)(x), model(x)
    assert (out - by_hand).abs().max().item() <= 1e-5
    assert (out - rebuilt).abs().max().item() <= 1e-5
    assert (out - full).abs().max().item() > 1e-3  # the masks change the output
    small = ADAPTER.rebuild(model, masks)
    for key, value in narrowed(model, masks).state_dict().items():
        assert torch.equal(small.state_dict()[key], value), key
    assert all(m.unit_mask is None for m in model.modules() if hasattr(m, "unit_mask"))


@pytest.mark.parametrize("case", CASES)
def test_zeroed_model_equals_masked_model(model, x, case):
    masks = case_masks(model, case)
    zeroed = copy.deepcopy(model)
    ADAPTER.zero_units(zeroed, masks)
    with torch.no_grad():
        assert (zeroed(x) - masked_output(model, masks, x)).abs().max().item() <= 1e-5
    # head 1 of A0 removed -> its q, k and v rows, bias entries, table column and proj columns
    if not masks[A0][1]:
        sd, d = zeroed.state_dict(), 4
        rows = [p * 8 + 4 + j for p in range(3) for j in range(d)]
        assert sd[f"{A0}.qkv.weight"][rows].abs().sum() == 0 == sd[f"{A0}.qkv.bias"][rows].abs().sum()
        assert sd[f"{A0}.relative_position_bias_table"][:, 1].abs().sum() == 0
        assert sd[f"{A0}.proj.weight"][:, 4:].abs().sum() == 0
        if masks[A0][0]:
            assert sd[f"{A0}.qkv.weight"][[0, 8, 16]].abs().min() > 0  # head 0 untouched


def test_released_size_costs_match_the_spec():
    """Per head: 2,655 parameters and 3,680 MACs per token; per neuron 121 and 120."""
    with torch.device("meta"):
        model = create_model("swinir")
    n = 64 * 64
    full = full_kept(ADAPTER.groups(model))
    one_head = {**full, A0: 5}
    one_neuron = {**full, M0: 119}
    assert ADAPTER.macs(model, full, (64, 64)) - ADAPTER.macs(model, one_head, (64, 64)) == 3680 * n
    assert ADAPTER.macs(model, full, (64, 64)) - ADAPTER.macs(model, one_neuron, (64, 64)) == 120 * n
    assert ADAPTER.params(model, full) - ADAPTER.params(model, one_head) == 2655
    assert ADAPTER.params(model, full) - ADAPTER.params(model, one_neuron) == 121
    assert ADAPTER.params(model, full) == 929_628
    # padded size: 180 rows run as 184
    assert ADAPTER.macs(model, full, (180, 320)) == macs_full(model, (180, 320))["total"]
    assert ADAPTER.macs(model, full, (180, 320)) == ADAPTER.macs(model, full, (184, 320))


def test_unit_magnitude_sums_the_head_in_every_qkv_part(model):
    group = next(g for g in ADAPTER.groups(model) if g.name == A3)
    sd = model.state_dict()
    rows = [p * 8 + j for p in range(3) for j in range(4)]  # head 0
    expected = (sd[f"{A3}.qkv.weight"][rows].abs().sum() + sd[f"{A3}.qkv.bias"][rows].abs().sum()
                + sd[f"{A3}.relative_position_bias_table"][:, 0].abs().sum()
                + sd[f"{A3}.proj.weight"][:, :4].abs().sum())
    assert torch.allclose(ADAPTER.unit_magnitude(model, group)[0], expected, rtol=1e-6)


@pytest.mark.parametrize("target", ["stream", "output"])
@pytest.mark.parametrize("group", [A0, M0])
def test_a_removed_duplicate_unit_is_recovered_exactly(group, target):
    teacher = tiny_swinir()
    with torch.no_grad():  # unit 1 computes what unit 0 computes
        for name, axis, width in ADAPTER.slices(teacher, ADAPTER.groups(teacher)[0 if group == A0 else 1]):
            p = teacher.get_parameter(name)
            if axis == 0:
                view = p.view(-1 if name.endswith("qkv.weight") or name.endswith("qkv.bias")
                              else 1, 2 if group == A0 else 16, width, *p.shape[1:])
                view[:, 1] = view[:, 0]
            elif name.endswith("bias_table"):
                p[:, 1] = p[:, 0]
    masks = {g.name: torch.ones(g.count) for g in ADAPTER.groups(teacher)}
    masks[group][1] = 0
    student = copy.deepcopy(teacher)
    ADAPTER.zero_units(student, masks)
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    compensate_model(ADAPTER, student, teacher, masks, x, CompensationSettings(target=target, ridge=0.0),
                     progress=False)
    with torch.no_grad():
        assert (masked_output(student, masks, x) - teacher(x)).abs().max().item() <= 1e-4


def test_pruning_stages_end_to_end(tmp_path, make_images):
    """Scores, masks, zeroed export, compensation and rebuild through the library functions."""
    teacher = tmp_path / "teacher.pth"
    srprune.save_model(tiny_swinir(), teacher)
    calibration = Calibration(hr=str(make_images(tmp_path / "train", 2, (26, 28))),
                              num_crops=3, crop_size=10)
    scores = score_units(teacher, "optin", calibration, OptinSettings(tokens=16), progress=False)
    assert scores["arch"] == "swinir" and set(scores["scores"]) == {g.name for g in
                                                                   ADAPTER.groups(tiny_swinir())}
    save_artifact(scores, tmp_path / "scores.pth")
    artifact = search_masks(teacher, tmp_path / "scores.pth", 0.7, calibration=calibration)
    assert artifact["achieved_mac_ratio"] <= 0.7
    save_artifact(artifact, tmp_path / "masks.pth")
    zeroed = export_zeroed(teacher, tmp_path / "masks.pth", tmp_path / "zeroed.pth")
    compensate_checkpoint(teacher, tmp_path / "zeroed.pth", tmp_path / "compensated.pth",
                          calibration, CompensationSettings(), progress=False)
    small = rebuild_checkpoint(tmp_path / "compensated.pth", tmp_path / "rebuilt.pth")
    model, compensated = srprune.load_model(teacher), srprune.load_model(tmp_path / "compensated.pth")
    x = calibration.crops(2)
    with torch.no_grad():
        reference = model(x)
        errors = [(m(x) - reference).pow(2).mean().item() for m in (zeroed, compensated)]
        assert (small(x) - compensated(x)).abs().max().item() <= 1e-5
    assert errors[1] < errors[0]
    assert ADAPTER.macs(model, artifact["kept"], tuple(artifact["macs_lr_size"])) == \
        macs_full(srprune.load_model(tmp_path / "rebuilt.pth"), tuple(artifact["macs_lr_size"]))["total"]
