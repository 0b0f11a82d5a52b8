"""Parameter and MAC counting (srprune.complexity)."""
from __future__ import annotations

import json

import pytest
import torch

from srprune import complexity as cx
from srprune.models import create_model
from srprune.models.catanet import patch_starts
from srprune.models.catanet_macs import _patch_grid

# dim 8, 2 heads of q/k width 4 and v width 4 (equal widths: CPU SDPA takes the fused kernel)
TINY = dict(dim=8, block_num=1, qk_dim=8, mlp_dim=12, heads=2, patch_size=[8], num_tokens=[4],
            group_size=[16], n_iters=[5], upscale=2)
# Two blocks with pruned widths, including zeros (attention skipped, FFN reduced to fc2's bias).
PRUNED = dict(dim=8, block_num=2, qk_dim=8, mlp_dim=12, heads=2, patch_size=[8, 6],
              num_tokens=[4, 8], group_size=[16, 32], n_iters=2, upscale=3, tab_heads=[0, 1],
              lrsa_heads=[2, 0], tab_mlp=[0, 5], lrsa_mlp=[12, 0])
# q/k width 3 != v width 4, several blocks, patch/group sizes that make small inputs interesting.
ODD = dict(dim=8, block_num=3, qk_dim=6, mlp_dim=10, heads=2, patch_size=[8, 5, 12],
           num_tokens=[4, 8, 16], group_size=[32, 8, 64], n_iters=3, upscale=4, tab_heads=[2, 1, 2],
           lrsa_heads=[1, 2, 0], tab_mlp=[10, 0, 3], lrsa_mlp=[4, 10, 10])

# Hand count of the TINY model on a 12 x 10 input (N = 120 tokens, C = 8), conv/Linear only:
#   first_conv   120 * 3*9 * 8                      = 25_920
#   TAB          irca to_k, to_v: 4 centres * 8 * 8 * 2 =    512
#                iasa to_q/to_k/to_v/proj: 4 * 120*8*8 = 30_720
#                conv1x1: 120 * 8 * 8                  =  7_680
#                FFN: fc1 120*8*12 + dw 120*12*25 + fc2 120*12*8 = 59_040
#   LRSA         patches (p=8, stride 6): rows at 0, 4; cols at 0, 2 -> 4 patches x 64 tokens
#                to_q/to_k/to_v/proj: 4 * 256*8*8      = 65_536
#                FFN                                   = 59_040
#   mid_convs.0  120 * 8*9 * 8                         = 69_120
#   upconv       120 * 8*9 * 32                        = 276_480
#   last_conv    480 * 8*9 * 3                         = 103_680
TINY_HW = (12, 10)
TINY_THOP = 25_920 + 512 + 30_720 + 7_680 + 59_040 + 65_536 + 59_040 + 69_120 + 276_480 + 103_680
# What thop misses:
#   assignment scores  N*K*C = 120*4*8                               =   3_840
#   IASA  gs=16, ng=8: heads*ng*gs*(2gs + K)*(dq+dv) = 2*8*16*36*8    =  73_728
#   LRSA  P*heads*T^2*(dq+dv) = 4*2*64*64*8                           = 262_144
TINY_FULL = TINY_THOP + 3_840 + 73_728 + 262_144
# thop's stock LayerNorm rule: 4 ops per element; norms see N, N, P*T and N tokens of 8 channels.
TINY_NORMS = 4 * 8 * (3 * 120 + 256)


def _model(cfg: dict, initted: bool = True, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = create_model("catanet", **cfg)
    for block in model.blocks:
        block[0].initted.fill_(initted)
    return model


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_count_params_total_and_nonzero():
    model = _model(TINY)
    counts = cx.count_params(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["total"] < sum(v.numel() for v in model.state_dict().values())  # no buffers
    weight = model.first_conv.weight
    assert int(torch.count_nonzero(weight[:2])) == 2 * 27
    with torch.no_grad():
        weight[:2] = 0
    after = cx.count_params(model)
    assert after["total"] == counts["total"]
    assert after["nonzero"] == counts["nonzero"] - 54


def test_reference_lr_size():
    assert cx.reference_lr_size(1) == (720, 1280)
    assert cx.reference_lr_size(2) == (360, 640)
    assert cx.reference_lr_size(3) == (240, 426)
    assert cx.reference_lr_size(4) == (180, 320)


def test_patch_grid_matches_model():
    for patch in (3, 5, 8, 16, 28):
        for length in range(1, 70):
            starts, side = patch_starts(length, patch)
            assert _patch_grid(length, patch) == (len(starts), side)


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_thop_tiny_by_hand_and_state_untouched(device):
    model = _model(TINY).train()
    before = _snapshot(model)
    assert cx.macs_thop(model, TINY_HW, device=device) == TINY_THOP
    assert cx.macs_thop(model, TINY_HW, count_norms=True, device=device) == TINY_THOP + TINY_NORMS
    after = model.state_dict()
    assert list(after) == list(before)  # no total_ops / total_params buffers left behind
    assert all(torch.equal(after[k], before[k]) and after[k].device == before[k].device for k in before)
    assert model.training
    assert all(not hasattr(m, "total_ops") for m in model.modules())


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_full_tiny_by_hand(device):
    model = _model(TINY)
    before = _snapshot(model)
    full = cx.macs_full(model, TINY_HW, device=device)
    assert full["total"] == TINY_FULL
    assert full["per_layer"]["blocks.0.0"] == 3_840
    assert full["per_layer"]["blocks.0.0.iasa_attn"] == 73_728
    assert full["per_layer"]["blocks.0.1.layer.0.fn"] == 262_144
    assert cx.analytic_macs(model.cfg, TINY_HW) == TINY_FULL
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.blocks[0][0].iasa_attn.impl == "fast"  # counted on a copy


# (config, LR size, devices to count on). The released-size models are counted on CPU once
# (6x6: IASA's reflection with group size 32 and 36 tokens; patches larger than the map).
BOTH, META = ("meta", "cpu"), ("meta",)
CASES = [
    (TINY, (12, 10), BOTH), (TINY, (5, 7), BOTH), (TINY, (6, 6), BOTH), (TINY, (1, 9), BOTH),
    (TINY, (23, 17), BOTH),
    (PRUNED, (12, 10), BOTH), (PRUNED, (4, 5), BOTH), (PRUNED, (6, 6), BOTH), (PRUNED, (20, 3), BOTH),
    (ODD, (6, 6), BOTH), (ODD, (13, 11), BOTH), (ODD, (7, 30), BOTH),
    ({"upscale": 1}, (6, 6), BOTH), ({"upscale": 2}, (9, 9), META), ({"upscale": 3}, (13, 11), META),
    ({"upscale": 4}, (17, 12), META), ({"upscale": 2}, (64, 80), META),
    ({"upscale": 4, "tab_heads": [4, 0, 1, 2, 3, 0, 4, 2], "lrsa_heads": [0, 1, 2, 3, 4, 1, 0, 2],
      "tab_mlp": [96, 0, 1, 50, 7, 0, 96, 3], "lrsa_mlp": [0, 96, 2, 0, 40, 12, 96, 1]}, (10, 13),
     BOTH),
    # channels inside heads: q/k narrower or wider than v, one channel, all heads removed
    ({**PRUNED, "tab_heads": [2, 1], "tab_qk": [1, 3], "tab_v": [4, 1], "lrsa_qk": [4, 2],
      "lrsa_v": [2, 3]}, (12, 10), BOTH),
    ({"upscale": 4, "tab_qk": [9, 1, 5, 2, 9, 3, 4, 7], "tab_v": [10, 2, 1, 9, 4, 10, 3, 6],
      "lrsa_qk": [1, 9, 2, 8, 3, 7, 4, 6], "lrsa_v": [5, 5, 10, 1, 2, 3, 8, 10],
      "tab_heads": [4, 1, 2, 3, 0, 4, 2, 1]}, (10, 13), BOTH),
]


@pytest.mark.parametrize("cfg,hw,devices", CASES)
def test_measured_equals_analytic(cfg, hw, devices):
    model = _model(cfg, initted=hw[0] != 6)  # also count with centres computed from the input
    analytic = cx.analytic_breakdown(model.cfg, hw)
    for device in devices:
        measured = cx.macs_full(model, hw, device=device)
        assert abs(measured["total"] - cx.analytic_macs(model.cfg, hw)) <= 0.01 * analytic["total"]
        assert measured == analytic  # in fact exact, layer by layer
    assert sum(measured["per_module"].values()) == measured["total"]
    assert sum(measured["per_layer"].values()) == measured["total"]
    thop = cx.thop_profile(model, hw)
    assert measured["total"] > thop["total"]
    assert sum(thop["per_module"].values()) == thop["total"]
    assert set(thop["per_module"]) == set(measured["per_module"])
    assert all(thop["per_module"][k] <= v for k, v in measured["per_module"].items())


def test_per_module_units():
    full = cx.macs_full(_model({"upscale": 4}), (16, 16))
    expected = {"first_conv", "upconv1", "upconv2", "last_conv"}
    for i in range(8):
        expected |= {f"blocks.{i}.0", f"blocks.{i}.1", f"mid_convs.{i}"}
    assert set(full["per_module"]) == expected
    assert all(v > 0 for v in full["per_module"].values())
    # A TAB whose heads are all pruned keeps only its FFN; a fully pruned LRSA costs nothing.
    pruned = cx.macs_full(_model(PRUNED), (12, 10))
    assert not any(k.startswith("blocks.0.0.") and "mlp" not in k for k in pruned["per_layer"])
    assert "blocks.0.0" not in pruned["per_layer"]
    assert pruned["per_module"]["blocks.1.1"] == 0


def test_released_x4_reference_size_fast_and_consistent():
    model = _model({"upscale": 4})
    hw = cx.reference_lr_size(4)
    full = cx.macs_full(model, hw)
    assert full == cx.analytic_breakdown(model.cfg, hw)
    thop = cx.macs_thop(model, hw)
    assert 0 < thop < full["total"] < 200e9


def test_complexity_report_is_plain_json():
    model = _model(PRUNED)
    report = cx.complexity_report(model, lr_size=(12, 10))
    assert json.loads(json.dumps(report)) == report
    assert report["lr_size"] == [12, 10] and report["output_size"] == [36, 30]
    assert report["params_total"] == cx.count_params(model)["total"]
    assert report["macs_full"] == cx.analytic_macs(model.cfg, (12, 10))
    assert report["macs_thop"] < report["macs_thop_stock"]
    assert sum(report["per_module"].values()) == report["macs_full"]
    assert sum(report["per_module_thop"].values()) == report["macs_thop"]
    default = cx.complexity_report(_model(TINY))
    assert default["lr_size"] == [360, 640] and default["output_size"] == [720, 1280]
