"""Tiled inference: exactness where it must hold, shapes, errors; evaluate's tiling options."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import srprune
from srprune.cli import add_evaluate_options, evaluate_options, main, parse_dataset
from srprune.data import read_image, to_tensor
from srprune.evaluate import evaluate_many, evaluate_spec, model_upscaler
from srprune.metrics import psnr_y, to_uint8
from srprune.models import create_model
from srprune.tiling import (BLEND_MODES, check_tile_args, check_tile_fits, model_min_tile,
                            tile_starts, tiled_forward)

TINY = dict(dim=8, block_num=1, qk_dim=8, mlp_dim=12, heads=2, patch_size=[8], num_tokens=[4],
            group_size=[16], n_iters=[1], upscale=2)


class LocalNet(nn.Module):
    """``depth`` zero-padded 3x3 convs then PixelShuffle: output depends on LR pixels within
    ``depth`` (``kernel=1``: purely pointwise)."""

    def __init__(self, scale: int, depth: int = 2, kernel: int = 3, width: int = 6):
        super().__init__()
        chans = [3] + [width] * (depth - 1) + [3 * scale * scale]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel, padding=kernel // 2)
                                   for a, b in zip(chans[:-1], chans[1:]))
        self.shuffle = nn.PixelShuffle(scale)

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < len(self.convs) - 1:
                x = torch.tanh(x)
        return self.shuffle(x)


def local_net(scale, depth=2, kernel=3):
    torch.manual_seed(0)
    return LocalNet(scale, depth, kernel).double().eval()


def image(h, w, batch=1, seed=1):
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)


# --------------------------------------------------------------------------- grid
@pytest.mark.parametrize("length,tile,overlap,starts", [
    (37, 16, 4, [0, 12, 21]), (53, 16, 4, [0, 12, 24, 36, 37]), (16, 16, 4, [0]),
    (10, 16, 4, [0]), (17, 16, 0, [0, 1]), (5, 1, 0, [0, 1, 2, 3, 4]), (48, 16, 0, [0, 16, 32])])
def test_tile_starts_cover_and_stay_inside(length, tile, overlap, starts):
    assert tile_starts(length, tile, overlap) == starts
    side = min(tile, length)
    covered = set()
    for s in starts:
        assert 0 <= s and s + side <= length
        covered.update(range(s, s + side))
    assert covered == set(range(length))


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
@pytest.mark.parametrize("overlap", [4, 5, 7])
def test_crop_blend_reproduces_a_local_model(scale, overlap):
    """Receptive radius r = 2 (two 3x3 convs): exact for overlap >= 2r."""
    net, x = local_net(scale, depth=2), image(37, 53)
    with torch.no_grad():
        full = net(x)
        tiled = tiled_forward(net, x, tile=16, overlap=overlap, scale=scale, blend="crop")
    assert tiled.shape == full.shape
    assert (tiled - full).abs().max().item() < 1e-6


def test_crop_blend_is_not_exact_with_too_little_overlap():
    net, x = local_net(2, depth=3), image(37, 53)  # r = 3 needs overlap >= 6
    with torch.no_grad():
        tiled = tiled_forward(net, x, tile=16, overlap=4, scale=2, blend="crop")
        assert (tiled - net(x)).abs().max().item() > 1e-4


@pytest.mark.parametrize("blend", BLEND_MODES)
def test_every_blend_reproduces_a_pointwise_model(blend):
    net, x = local_net(3, depth=2, kernel=1), image(37, 53, batch=2)
    with torch.no_grad():
        tiled = tiled_forward(net, x, tile=16, overlap=4, scale=3, blend=blend)
        assert (tiled - net(x)).abs().max().item() < 1e-6


def _safe(length, tile, overlap, radius):
    """Per LR position along a side: True when no tile covering it has an interior edge closer
    than ``radius`` (there every tile computes the untiled value)."""
    safe = torch.ones(length, dtype=torch.bool)
    side = min(tile, length)
    for start in tile_starts(length, tile, overlap):
        end = start + side
        for p in range(start, end):
            if (start > 0 and p - start < radius) or (end < length and end - 1 - p < radius):
                safe[p] = False
    return safe


@pytest.mark.parametrize("blend", ["uniform", "ramp"])
def test_averaging_blends_mix_in_tile_edge_outputs(blend):
    """Documented: uniform and ramp are exact only where no tile edge is within the receptive
    radius (r = 2 here), and not exact near tile edges."""
    net, x = local_net(2, depth=2), image(37, 53)
    with torch.no_grad():
        diff = (tiled_forward(net, x, tile=16, overlap=8, scale=2, blend=blend) - net(x)).abs()
    rows = _safe(37, 16, 8, 2).repeat_interleave(2)
    cols = _safe(53, 16, 8, 2).repeat_interleave(2)
    exact = rows[:, None] & cols[None, :]
    assert 0 < exact.sum() < exact.numel()
    assert diff[..., exact].max().item() < 1e-6 < diff[..., ~exact].max().item()


@pytest.mark.parametrize("blend", BLEND_MODES)
@pytest.mark.parametrize("tile", [53, 64, 1000])
def test_one_tile_is_the_plain_forward_exactly(blend, tile):
    net, x = local_net(2, depth=3), image(37, 53)
    calls = []
    with torch.no_grad():
        out = tiled_forward(lambda t: calls.append(t.shape) or net(t), x, tile, 8, 2, blend)
        assert torch.equal(out, net(x))
    assert calls == [x.shape]


def test_catanet_one_tile_is_exact_and_tiles_are_close():
    torch.manual_seed(0)
    net = create_model("catanet", **TINY).eval()
    x = torch.rand(1, 3, 21, 30)
    with torch.no_grad():
        full = net(x)
        assert torch.equal(tiled_forward(net, x, 32, 8, 2), full)
        tiled = tiled_forward(net, x, 12, 4, 2)
    assert tiled.shape == full.shape == (1, 3, 42, 60)
    assert torch.isfinite(tiled).all()


# --------------------------------------------------------------------------- shapes and calls
@pytest.mark.parametrize("blend", BLEND_MODES)
@pytest.mark.parametrize("scale", [1, 2, 3, 4])
def test_output_shape_and_tile_count_for_odd_sizes(blend, scale):
    net, x = local_net(scale), image(37, 53, batch=2)
    shapes = []
    with torch.no_grad():
        out = tiled_forward(lambda t: shapes.append(tuple(t.shape)) or net(t), x, 16, 4, scale, blend)
    assert out.shape == (2, 3, 37 * scale, 53 * scale) and out.dtype == torch.float64
    assert len(shapes) == 3 * 5 and set(shapes) == {(2, 3, 16, 16)}


def test_one_side_smaller_than_the_tile():
    net, x = local_net(2), image(9, 40)
    shapes = []
    with torch.no_grad():
        out = tiled_forward(lambda t: shapes.append(tuple(t.shape[-2:])) or net(t), x, 16, 4, 2, "crop")
        assert (out - net(x)).abs().max().item() < 1e-6
    assert shapes == [(9, 16)] * 3


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(tile=0, overlap=0), ValueError, "tile must be >= 1"),
    (dict(tile=-3, overlap=0), ValueError, "tile must be >= 1"),
    (dict(tile=16, overlap=-1), ValueError, "overlap must be >= 0"),
    (dict(tile=16, overlap=16), ValueError, r"0 <= overlap < tile"),
    (dict(tile=8, overlap=12), ValueError, r"0 <= overlap < tile"),
    (dict(tile=16.0, overlap=4), TypeError, "tile must be an integer"),
    (dict(tile=True, overlap=0), TypeError, "tile must be an integer"),
    (dict(tile=16, overlap=4, scale=0), ValueError, "scale must be >= 1"),
    (dict(tile=16, overlap=4, blend="gauss"), ValueError, "blend must be one of"),
])
def test_bad_arguments_are_refused(kwargs, error, match):
    kwargs = {"scale": 2, **kwargs}
    with pytest.raises(error, match=match):
        check_tile_args(kwargs["tile"], kwargs["overlap"], kwargs["scale"], kwargs.get("blend", "uniform"))
    with pytest.raises(error, match=match):
        tiled_forward(local_net(2), image(20, 20), **kwargs)


def test_bad_input_and_wrong_scale_are_named():
    net = local_net(2)
    with pytest.raises(ValueError, match="B x C x H x W"):
        tiled_forward(net, image(20, 20)[0], 8, 2, 2)
    with pytest.raises(ValueError, match="not x3"):
        tiled_forward(net, image(20, 20), 8, 2, 3)
    with pytest.raises(ValueError, match="not x3"):
        tiled_forward(net, image(6, 6), 8, 2, 3)


# --------------------------------------------------------------------------- evaluate options
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    srprune.save_model(create_model("catanet", **TINY).eval(), path)
    return str(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, make_images):
    root = tmp_path_factory.mktemp("data")
    return {"a": str(make_images(root / "a", 2, (40, 52))),
            "b": str(make_images(root / "b", 1, (36, 30), seed=3))}


def test_evaluate_spec_unchanged_without_the_new_options(checkpoint, folders):
    plain = evaluate_spec(checkpoint, folders["a"], 2, progress=False)
    assert not {"tile", "latency", "latency_ms"} & set(plain)
    assert list(plain)[:7] == ["model", "hr", "lr", "scale", "quantized_uint8", "crop_border", "metric"]
    big = evaluate_spec(checkpoint, folders["a"], 2, progress=False, tile=64)
    assert big.pop("tile") == {"tile": 64, "overlap": 8, "blend": "uniform"}
    assert big == plain  # one tile per image: identical scores


def test_evaluate_spec_tiled_scores_and_records_the_options(checkpoint, folders):
    plain = evaluate_spec(checkpoint, folders["a"], 2, progress=False)
    tiled = evaluate_spec(checkpoint, folders["a"], 2, progress=False, tile=16, tile_overlap=4,
                          tile_blend="ramp")
    assert tiled["tile"] == {"tile": 16, "overlap": 4, "blend": "ramp"}
    assert abs(tiled["psnr"] - plain["psnr"]) < 3 and tiled["params"] == plain["params"]
    with pytest.raises(ValueError, match="overlap < tile"):
        evaluate_spec(checkpoint, folders["a"], 2, progress=False, tile=8)


def test_evaluate_many_loads_once_and_nests_results(checkpoint, folders, monkeypatch):
    import srprune.checkpoint as ckpt

    loads = []
    original = ckpt.load_model
    monkeypatch.setattr(ckpt, "load_model", lambda *a, **k: loads.append(a) or original(*a, **k))
    many = evaluate_many(checkpoint, {"a": {"hr": folders["a"]}, "b": folders["b"]}, 2,
                         progress=False)
    assert len(loads) == 1
    assert list(many["datasets"]) == ["a", "b"]
    single = {name: evaluate_spec(checkpoint, hr, 2, progress=False) for name, hr in folders.items()}
    for name, result in many["datasets"].items():
        assert result["psnr"] == single[name]["psnr"] and result["ssim"] == single[name]["ssim"]
        assert result["per_image"] == single[name]["per_image"]
        assert result["hr"] == folders[name] and result["lr"] is None and result["filename_tmpl"] == "{}"
    for key in ("params", "params_nonzero", "macs_thop", "macs_full", "macs_lr_size", "macs_per_module"):
        assert many[key] == single["a"][key]
    assert not {"latency", "latency_ms"} & set(many)  # evaluation times nothing
    json.dumps(many)


def test_evaluate_many_bicubic_and_errors(folders):
    many = evaluate_many("bicubic", {"a": folders["a"]}, 2, progress=False, tile=16)
    assert many["params"] == 0 and many["macs_full"] is None
    assert many["datasets"]["a"]["psnr"] == evaluate_spec("bicubic", folders["a"], 2, progress=False)["psnr"]
    with pytest.raises(ValueError, match="at least one"):
        evaluate_many("bicubic", {}, 2)
    with pytest.raises(ValueError, match="unknown keys"):
        evaluate_many("bicubic", {"a": {"hr": folders["a"], "gt": "x"}}, 2)
    with pytest.raises(ValueError, match="'hr'"):
        evaluate_many("bicubic", {"a": {"lr": folders["a"]}}, 2)


def test_command_line_options():
    import argparse

    parser = argparse.ArgumentParser()
    add_evaluate_options(parser, datasets=True)
    args = parser.parse_args(["--tile", "48", "--tile-overlap", "16", "--tile-blend", "crop",
                              "--dataset", "Set5=hr,lr,{}x4", "--dataset", "B=hr2"])
    assert evaluate_options(args) == {"tile": 48, "tile_overlap": 16, "tile_blend": "crop"}
    assert dict(args.dataset) == {"Set5": {"hr": "hr", "lr": "lr", "filename_tmpl": "{}x4"},
                                  "B": {"hr": "hr2", "lr": None, "filename_tmpl": "{}"}}
    assert evaluate_options(parser.parse_args([]))["tile"] is None
    assert evaluate_options(argparse.Namespace()) == evaluate_options(parser.parse_args([]))
    for bad in (["--tile", "0"], ["--tile-overlap", "-1"], ["--latency-runs", "5"],
                ["--dataset", "noequals"], ["--tile-blend", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_dataset("=hr")


# --------------------------------------------------------------------------- smallest tile
def test_the_smallest_tile_is_the_models_or_twice_the_overlap_plus_8():
    assert model_min_tile(create_model("catanet")) == 28          # its largest LRSA patch
    assert model_min_tile(create_model("catanet", **TINY)) == 8
    assert model_min_tile(create_model("catanet", **{**TINY, "group_size": [400]})) == 20
    assert model_min_tile(create_model("swinir")) == 8            # one window
    check_tile_fits(28, 10, 28)
    with pytest.raises(ValueError, match=r"tile 27 is too small: the smallest is 28 \(the model's "
                                         r"windows / patches / token groups need 28, and 2 x "
                                         r"overlap 8 \+ 8 = 24\)"):
        check_tile_fits(27, 8, 28)
    with pytest.raises(ValueError, match=r"the smallest is 26 \(2 x overlap 9 \+ 8 = 26\)$"):
        check_tile_fits(25, 9)


def test_too_small_tiles_are_refused_before_scoring(tmp_path, folders, capsys):
    torch.manual_seed(0)
    srprune.save_model(create_model("catanet", **{**TINY, "patch_size": [16]}), tmp_path / "p16.pth")
    with pytest.raises(ValueError, match=r"tile 12 is too small: the smallest is 16 \(the model's "
                                         r"windows / patches / token groups need 16, and 2 x "
                                         r"overlap 0 \+ 8 = 8\)"):
        evaluate_spec(str(tmp_path / "p16.pth"), folders["a"], 2, progress=False, tile=12,
                      tile_overlap=0, save_images=str(tmp_path / "sr"))
    assert not (tmp_path / "sr").exists()
    code = main(["evaluate", "--model", str(tmp_path / "p16.pth"), "--hr", folders["a"],
                 "--scale", "2", "--tile", "3", "--tile-overlap", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines()[-1] == (
        "error: tile 3 is too small: the smallest is 16 (the model's windows / patches / token "
        "groups need 16, and 2 x overlap 1 + 8 = 10)")


# (tile, overlap, blend) that the real x4 CATANet accepts (its smallest tile: 28, its largest
# LRSA patch), the smallest for each of three overlaps among them; and tiles it refuses
ACCEPTED = [(28, 0, "uniform"), (28, 8, "uniform"), (28, 8, "crop"), (28, 10, "ramp"),
            (40, 16, "uniform"), (64, 8, "uniform")]
REFUSED = [(3, 1), (12, 2)]
# CATANet is not local (token centres and groups are computed per tile), so on one image
# every tiling moves PSNR a little, either way: on Set5 bird x4, tiles of 28 to 71 with
# overlap 8 measured -0.16 to +0.07 dB (uniform), -0.04 to +0.07 dB (ramp, crop)
TILED_TOLERANCE_DB = 0.2


def test_accepted_tiles_score_close_to_untiled_on_set5(shared_dir):
    net = srprune.load_model(shared_dir / "weights/catanet_x4_third_party.pth")
    lr = read_image(shared_dir / "data/Set5/LR_bicubic/X4/birdx4.png")
    hr = read_image(shared_dir / "data/Set5/HR/bird.png")
    untiled = psnr_y(model_upscaler(net)(lr), hr, 4)
    for tile, overlap, blend in ACCEPTED:
        tiled = psnr_y(model_upscaler(net, tile=tile, tile_overlap=overlap, tile_blend=blend)(lr),
                       hr, 4)
        assert abs(tiled - untiled) < TILED_TOLERANCE_DB, (tile, overlap, blend, tiled - untiled)
    for tile, overlap in REFUSED:
        with pytest.raises(ValueError, match=f"tile {tile} is too small"):
            model_upscaler(net, tile=tile, tile_overlap=overlap)
    with torch.no_grad():  # what the smallest tile keeps out (tile 3: -2.2 dB)
        sr = tiled_forward(net, to_tensor(lr), 12, 2, 4).clamp(0, 1)
    assert psnr_y(to_uint8(sr), hr, 4) < untiled - 0.5
