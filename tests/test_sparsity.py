"""``srprune inspect``: zero counts per tensor and per unit, masks checked, file layouts, JSON."""
from __future__ import annotations

import json

import pytest
import torch

import srprune
from srprune.checkpoint import CheckpointError
from srprune.pruning.adapter import UNIT_KINDS_DEFAULT, groups_of_kinds
from srprune.pruning.catanet import CATANetAdapter
from srprune.sparsity import format_table, inspect_checkpoint, inspect_paths, zero_rows_cols

TINY = dict(dim=8, block_num=2, qk_dim=8, mlp_dim=12, heads=2, patch_size=[8, 6],
            num_tokens=[4, 8], group_size=[16, 8], n_iters=[2, 2])
NOT_INFERABLE = {k: TINY[k] for k in ("heads", "patch_size", "group_size", "n_iters")}
ADAPTER = CATANetAdapter()
MASKED = {  # group -> units removed; groups not named keep every unit
    "blocks.0.0.iasa_attn": [1],
    "blocks.0.0.mlp.fn": [2, 5, 7],
    "blocks.1.1.layer.0.fn": [0, 1],
    "blocks.1.1.layer.1.fn": [0, 11],
}


def make_masks(model, removed=MASKED):
    masks = {}
    for g in groups_of_kinds(ADAPTER.groups(model), UNIT_KINDS_DEFAULT):
        mask = torch.ones(g.count)
        mask[removed.get(g.name, [])] = 0
        masks[g.name] = mask
    return masks


@pytest.fixture()
def model():
    """The tiny CATANet with every parameter and buffer nonzero (LayerNorm biases start at 0)."""
    torch.manual_seed(0)
    net = srprune.create_model("catanet", **TINY)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
    return net


@pytest.fixture()
def zeroed(model, tmp_path):
    masks = make_masks(model)
    ADAPTER.zero_units(model, masks)
    path = tmp_path / "zeroed.pth"
    srprune.save_model(model, path, {"masks": masks, "stage": "zeroed"})
    return model, masks, path


def zero_units_of(group, removed=MASKED):
    """Units expected fully zero: the removed ones; for a channel group, those of removed heads."""
    if group.parent is None:
        return removed.get(group.name, [])
    return [h * group.per_parent + c for h in removed.get(group.parent, [])
            for c in range(group.per_parent)]


def expected_zeros(model, removed=MASKED):
    """Zeros of each parameter: removed units x width x entries of one slice along the axis."""
    by_name = {g.name: g for g in ADAPTER.groups(model)}
    counts = {}
    for name, units in removed.items():
        for param, axis, width in ADAPTER.slices(model, by_name[name]):
            shape = model.get_parameter(param).shape
            per_channel = model.get_parameter(param).numel() // shape[axis]
            counts[param] = counts.get(param, 0) + len(units) * width * per_channel
    return counts


def test_zero_counts_per_tensor_and_totals(zeroed):
    model, _, path = zeroed
    report = inspect_checkpoint(path)
    assert report["format"] == "srprune" and report["meta"]["stage"] == "zeroed"
    rows = {r["name"]: r for r in report["tensors"]}
    assert list(rows) == list(model.state_dict())
    expected = expected_zeros(model)
    for name, row in rows.items():
        if name.endswith("initted"):  # bool flag, False: one "zero", not a parameter
            assert row["zeros"] == 1 and not row["param"] and row["dtype"] == "bool"
            continue
        assert row["zeros"] == expected.get(name, 0), name
        assert row["numel"] == model.state_dict()[name].numel()
        assert row["zero_fraction"] == pytest.approx(row["zeros"] / row["numel"])
        assert row["param"] == (not name.endswith(".means"))
    # A few by hand: head widths q/k 4, v 4 (dim 8, qk_dim 8, 2 heads); FFN hidden 12.
    assert rows["blocks.0.0.iasa_attn.to_q.weight"]["zeros"] == 1 * 4 * 8
    assert rows["blocks.0.0.irca_attn.to_v.weight"]["zeros"] == 1 * 4 * 8
    assert rows["blocks.0.0.iasa_attn.proj.weight"]["zeros"] == 8 * 1 * 4
    assert rows["blocks.0.0.mlp.fn.fc1.weight"]["zeros"] == 3 * 8
    assert rows["blocks.0.0.mlp.fn.fc1.bias"]["zeros"] == 3
    assert rows["blocks.0.0.mlp.fn.fc2.weight"]["zeros"] == 8 * 3
    assert rows["blocks.0.0.mlp.fn.dwconv.depthwise_conv.0.weight"]["zeros"] == 3 * 25
    assert rows["blocks.1.1.layer.0.fn.to_v.weight"]["zeros"] == 64  # both heads removed
    totals = report["totals"]
    params = sum(p.numel() for p in model.parameters())
    assert totals["params"] == params
    assert totals["zeros"] == sum(expected.values())
    assert totals["zero_fraction"] == pytest.approx(sum(expected.values()) / params)
    assert sorted(totals["excluded"]) == sorted(
        f"blocks.{i}.0.{b}" for i in range(2) for b in ("means", "initted"))


def test_fully_zero_units_and_rows_cols(zeroed):
    model, masks, path = zeroed
    report = inspect_checkpoint(path)
    assert "structured_error" not in report
    groups = {g["name"]: g for g in report["structured"]["groups"]}
    assert list(groups) == [g.name for g in ADAPTER.groups(model)]
    for g in ADAPTER.groups(model):
        entry = groups[g.name]
        assert entry["units"] == g.count and entry["kind"] == g.kind and entry["block"] == g.block
        assert entry["zero_unit_indices"] == zero_units_of(g)
        assert entry["zero_units"] == len(zero_units_of(g))
    assert report["masks"] == {k: [int(v) for v in m.tolist()] for k, m in masks.items()}
    assert report["masks_consistent"] is True and report["masks_mismatch"] == []
    layers = {layer["name"]: layer for layer in report["structured"]["layers"]}
    fc1, fc2 = (layers[f"blocks.0.0.mlp.fn.{n}.weight"] for n in ("fc1", "fc2"))
    assert (fc1["rows"], fc1["zero_rows"], fc1["cols"], fc1["zero_cols"]) == (12, 3, 8, 0)
    assert (fc2["rows"], fc2["zero_rows"], fc2["cols"], fc2["zero_cols"]) == (8, 0, 12, 3)
    lrsa = {n: layers[f"blocks.1.1.layer.1.fn.{n}.weight"] for n in ("fc1", "fc2")}
    assert lrsa["fc1"]["zero_rows"] == 2 and lrsa["fc2"]["zero_cols"] == 2
    q, proj = layers["blocks.0.0.iasa_attn.to_q.weight"], layers["blocks.0.0.iasa_attn.proj.weight"]
    assert (q["zero_rows"], q["zero_cols"], proj["zero_rows"], proj["zero_cols"]) == (4, 0, 0, 4)
    dw = layers["blocks.0.0.mlp.fn.dwconv.depthwise_conv.0.weight"]
    assert dw["type"] == "Conv2d" and dw["groups"] == 12 and dw["zero_rows"] == 3
    assert layers["first_conv.weight"]["zero_rows"] == layers["first_conv.weight"]["zero_cols"] == 0


def test_unrecorded_or_unzeroed_units_break_consistency(zeroed, tmp_path):
    model, masks, _ = zeroed
    extra = make_masks(model, {"blocks.0.1.layer.1.fn": [4]})
    ADAPTER.zero_units(model, extra)  # zeroed by hand, not recorded in the masks
    srprune.save_model(model, tmp_path / "extra.pth", {"masks": masks})
    report = inspect_checkpoint(tmp_path / "extra.pth")
    assert report["masks_consistent"] is False
    assert report["masks_mismatch"] == [{"group": "blocks.0.1.layer.1.fn", "masked": [],
                                         "zero": [4]}]
    assert "INCONSISTENT" in format_table(report)

    recorded = {**masks, "blocks.1.0.mlp.fn": make_masks(model, {"blocks.1.0.mlp.fn": [3]})[
        "blocks.1.0.mlp.fn"]}  # recorded as removed, weights left nonzero
    srprune.save_model(model, tmp_path / "claimed.pth", {"masks": recorded})
    report = inspect_checkpoint(tmp_path / "claimed.pth")
    assert report["masks_consistent"] is False
    assert {m["group"] for m in report["masks_mismatch"]} == {"blocks.0.1.layer.1.fn",
                                                              "blocks.1.0.mlp.fn"}


def test_no_masks_recorded(model, tmp_path):
    srprune.save_model(model, tmp_path / "dense.pth")
    report = inspect_checkpoint(tmp_path / "dense.pth")
    assert "masks" not in report and "masks_consistent" not in report
    assert report["totals"]["zeros"] == 0
    assert all(g["zero_units"] == 0 for g in report["structured"]["groups"])


@pytest.mark.parametrize("layout", ["basicsr", "basicsr_ema", "plain"])
def test_basicsr_and_plain_state_dicts(zeroed, tmp_path, layout):
    model, _, _ = zeroed
    state = model.state_dict()
    obj = {"basicsr": {"params": state}, "basicsr_ema": {"params_ema": state},
           "plain": state}[layout]
    path = tmp_path / f"{layout}.pth"
    torch.save(obj, path)
    # Without heads/patch_size/...: the per-tensor view still works, the structured one says why.
    bare = inspect_checkpoint(path)
    assert bare["structured"] is None and "patch_size" in bare["structured_error"]
    assert bare["totals"]["zeros"] == sum(expected_zeros(model).values())
    assert "structured view unavailable" in format_table(bare)
    report = inspect_checkpoint(path, model_config=NOT_INFERABLE)
    assert report["format"] == ("plain state dict" if layout == "plain" else "basicsr")
    assert report["state_key"] == {"basicsr": "params", "basicsr_ema": "params_ema",
                                   "plain": None}[layout]
    groups = {g["name"]: g["zero_unit_indices"] for g in report["structured"]["groups"]}
    assert groups == {g.name: zero_units_of(g) for g in ADAPTER.groups(model)}
    assert "masks" not in report  # a BasicSR file has no meta


def test_rebuilt_model_with_an_empty_group(zeroed, tmp_path):
    model, masks, _ = zeroed
    small = ADAPTER.rebuild(model, masks)
    srprune.save_model(small, tmp_path / "rebuilt.pth", {"stage": "rebuilt"})
    report = inspect_checkpoint(tmp_path / "rebuilt.pth")
    groups = {g["name"]: g for g in report["structured"]["groups"]}
    assert groups["blocks.1.1.layer.0.fn"]["units"] == 0
    assert groups["blocks.0.0.mlp.fn"]["units"] == 9
    assert all(g["zero_units"] == 0 for g in groups.values())
    assert report["totals"]["zeros"] == 0
    layers = {layer["name"]: layer for layer in report["structured"]["layers"]}
    assert layers["blocks.1.1.layer.0.fn.to_q.weight"]["shape"] == [0, 8]
    assert zero_rows_cols(torch.zeros(0, 8)) == (0, 0)


def test_table_lists_only_parameter_tensors_with_zeros(zeroed):
    _, _, path = zeroed
    table = format_table(inspect_checkpoint(path))
    assert "blocks.0.0.mlp.fn.fc1.weight" in table and "3/12" in table
    assert "first_conv.weight" not in table and "initted" not in table
    assert "masks recorded: the fully-zero units are exactly the masked ones" in table
    n_with_zeros = len(expected_zeros(srprune.load_model(path)))
    assert f"parameter tensors with zeros: {n_with_zeros} of" in table
    short = format_table(inspect_checkpoint(path), max_tensors=2)
    assert f"... {n_with_zeros - 2} more tensors with zeros" in short


def test_unreadable_files_raise_checkpoint_error(tmp_path, zeroed):
    text = tmp_path / "notes.txt"
    text.write_text("this is not a checkpoint\n")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        inspect_checkpoint(text)
    _, _, path = zeroed
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        inspect_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        inspect_checkpoint(tmp_path / "missing.pth")


def test_inspect_paths_prints_and_writes_json(zeroed, tmp_path, capsys):
    model, _, path = zeroed
    plain = tmp_path / "plain.pth"
    torch.save(model.state_dict(), plain)
    out = tmp_path / "reports" / "sparsity.json"
    reports = inspect_paths([path, plain], json_out=out, model_config=NOT_INFERABLE)
    printed = capsys.readouterr().out
    assert str(path) in printed and str(plain) in printed
    data = json.loads(out.read_text())
    assert list(data) == [str(path), str(plain)]
    assert data[str(path)] == reports[0]
    assert data[str(path)]["masks_consistent"] is True
    groups = {g["name"]: g for g in data[str(plain)]["structured"]["groups"]}
    assert groups["blocks.0.0.mlp.fn"]["zero_unit_indices"] == [2, 5, 7]
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left nothing behind


def test_a_bad_path_among_several_writes_no_json(zeroed, tmp_path):
    _, _, path = zeroed
    bad = tmp_path / "bad.pth"
    bad.write_text("nope")
    with pytest.raises(CheckpointError):
        inspect_paths([path, bad], json_out=tmp_path / "out.json", print_tables=False)
    assert not (tmp_path / "out.json").exists()


def test_zero_channels_per_head_and_mask_checks(model, tmp_path):
    """Channel masks: zero channels per head, masks consistent, invalid masks named."""
    masks = {"blocks.0.0.iasa_attn": torch.tensor([1., 0]),
             "blocks.0.0.iasa_attn.qk": torch.tensor([0., 1, 1, 0, 0, 0, 0, 0]),
             "blocks.1.1.layer.0.fn.v": torch.tensor([1., 0, 0, 1, 0, 1, 1, 0])}
    ADAPTER.zero_units(model, masks)
    path = tmp_path / "channels.pth"
    srprune.save_model(model, path, {"masks": masks, "stage": "zeroed"})
    report = inspect_checkpoint(path)
    groups = {g["name"]: g for g in report["structured"]["groups"]}
    qk, v = groups["blocks.0.0.iasa_attn.qk"], groups["blocks.1.1.layer.0.fn.v"]
    assert qk["zero_unit_indices"] == [0, 3, 4, 5, 6, 7] and qk["zero_per_head"] == [2, 4]
    assert groups["blocks.0.0.iasa_attn.v"]["zero_per_head"] == [0, 4]  # the removed head's
    assert v["zero_per_head"] == [2, 2] and v["parent"] == "blocks.1.1.layer.0.fn"
    assert report["masks_consistent"] is True and report["masks_invalid"] is None
    assert "per head [2, 4] of 4" in format_table(report)

    uneven = {**masks, "blocks.1.1.layer.0.fn.v": torch.tensor([1., 0, 0, 1, 0, 1, 0, 0])}
    model.get_parameter("blocks.1.1.layer.0.fn.to_v.weight").data[6] = 0.0
    model.get_parameter("blocks.1.1.layer.0.fn.proj.weight").data[:, 6] = 0.0
    srprune.save_model(model, path, {"masks": uneven, "stage": "zeroed"})
    report = inspect_checkpoint(path)
    assert report["masks_consistent"] is True
    assert "same number" in report["masks_invalid"]
    assert "INVALID" in format_table(report)


def test_swinir_stored_attention_masks_are_not_counted_as_parameters(tmp_path):
    """SwinIR keeps float ``attn_mask`` buffers in its checkpoints: not weights."""
    model = srprune.create_model("swinir", embed_dim=12, depths=[2], num_heads=[2], upscale=2,
                                 img_size=16)
    path = tmp_path / "swinir.pth"
    srprune.save_model(model, path)
    report = inspect_checkpoint(path)
    assert report["totals"]["params"] == sum(p.numel() for p in model.parameters())
    assert "layers.0.residual_group.blocks.1.attn_mask" in report["totals"]["excluded"]
