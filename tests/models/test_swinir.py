"""SwinIR-light: parity with the authors' outputs, strict loading, sizes, config inference."""
from __future__ import annotations

import pytest
import torch

import srprune
from srprune.checkpoint import model_from_state
from srprune.models import create_model
from srprune.models.common import ATTENTION_IMPLS
from srprune.models.swinir import (SwinIR, SwinIRConfig, infer_config,
                                   relative_position_index, shift_mask)

SMALL = dict(embed_dim=12, depths=[2], num_heads=[2], upscale=2)


@pytest.fixture(scope="module")
def fixture(shared_dir):
    path = shared_dir / "fixtures" / "swinir_light_official_x4.pt"
    if not path.is_file():
        pytest.skip(f"SwinIR parity fixture not found at {path}")
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="module")
def official(fixture):
    """The fixture's weights loaded strictly (buffers included) into a model built from shapes."""
    model = create_model("swinir", **infer_config(fixture["params"]))
    model.load_state_dict(fixture["params"], strict=True)
    return model.eval()


def test_config_inferred_from_the_authors_state_dict(fixture, official):
    authors = fixture["config"]
    cfg = official.cfg
    assert (cfg.upscale, cfg.img_size, cfg.window_size, cfg.embed_dim, cfg.depths, cfg.num_heads,
            cfg.mlp_ratio, cfg.img_range) == tuple(authors[k] for k in (
                "upscale", "img_size", "window_size", "embed_dim", "depths", "num_heads",
                "mlp_ratio", "img_range"))
    assert sum(p.numel() for p in official.parameters()) == 929_628  # spec: parameter count
    assert len(fixture["params"]) == len(official.state_dict()) == 366


@pytest.mark.parametrize("impl", ATTENTION_IMPLS)
@pytest.mark.parametrize("inp, out", [("input", "output"),
                                      ("input_48x40", "output_unpadded_48x40")],
                         ids=["reflect-padded 40x36", "unpadded 48x40"])
def test_parity_with_the_authors_outputs(fixture, official, impl, inp, out):
    official.set_attention_impl(impl)
    try:
        with torch.no_grad():
            got = official(fixture[inp])
    finally:
        official.set_attention_impl("fast")
    assert got.shape == fixture[out].shape
    assert (got - fixture[out]).abs().max().item() <= 1e-5


def test_stored_buffers_equal_the_recomputed_ones(fixture):
    params = fixture["params"]
    mask = params["layers.0.residual_group.blocks.1.attn_mask"]
    assert torch.equal(shift_mask(64, 64, 8, 4), mask)
    index = params["layers.2.residual_group.blocks.4.attn.relative_position_index"]
    assert torch.equal(relative_position_index(8), index)
    # a fresh model recomputes exactly what the checkpoint stores
    fresh = SwinIR().state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in params.items() if "attn_mask" in k
               or "relative_position_index" in k)


def test_loads_through_the_checkpoint_reader(fixture, tmp_path):
    model = model_from_state(dict(fixture["params"]), {}, "fixture", arch="swinir")
    with torch.no_grad():
        assert (model(fixture["input"]) - fixture["output"]).abs().max().item() <= 1e-5
    srprune.save_model(model, tmp_path / "m.pth")
    again = srprune.load_model(tmp_path / "m.pth")
    assert isinstance(again, SwinIR) and again.cfg == model.cfg


@pytest.mark.parametrize("side", [1, 2, 3, 4])
def test_sides_that_reflection_cannot_pad_are_refused(side):
    model = create_model("swinir", **SMALL).eval()
    with pytest.raises(ValueError, match=f"side of {side}"):
        model(torch.rand(1, 3, side, 16))


@pytest.mark.parametrize("side", [5, 6, 7, 8, 9])
def test_smallest_sides_run_and_are_cropped(side):
    model = create_model("swinir", **SMALL).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, side, 9)).shape == (1, 3, 2 * side, 18)


def test_a_padded_input_equals_the_model_run_on_its_reflection():
    """Padding is reflection at the bottom/right and the output is the top-left crop."""
    model = create_model("swinir", **SMALL).eval()
    x = torch.rand(1, 3, 13, 10, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (0, 6, 0, 3), mode="reflect")
    with torch.no_grad():
        assert torch.allclose(model(x), model(padded)[..., :26, :20], atol=1e-6)


def test_fast_and_reference_attention_agree_on_a_narrow_model():
    model = create_model("swinir", embed_dim=12, depths=[2, 2], num_heads=[3, 2], window_size=4,
                         img_size=16, layer_heads=[0, 2, 1, 2], layer_mlp=[5, 0, 24, 3]).eval()
    x = torch.rand(2, 3, 12, 9, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        fast = model(x)
        model.set_attention_impl("reference")
        assert (model(x) - fast).abs().max().item() <= 1e-5


def test_small_img_size_disables_the_shift():
    """The authors' construction rule: img_size <= window_size -> window img_size, no shift."""
    model = create_model("swinir", **SMALL, img_size=4)
    assert all(not layer.shift and layer.window == 4
               for layer in model.layers[0].residual_group.blocks)
    assert "layers.0.residual_group.blocks.1.attn_mask" not in model.state_dict()


@pytest.mark.parametrize("bad, message", [
    (dict(depths=[2, 2], num_heads=[2]), "same length"),
    (dict(num_heads=[5]), "divide embed_dim"),
    (dict(layer_heads=[1]), "2 layers"),
    (dict(layer_mlp=[30, 3]), r"lie in \[0"),
    (dict(upscale=5), "upscale"),
    (dict(patch_size=2), "unknown SwinIR config keys"),
])
def test_bad_configs_are_refused(bad, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SwinIRConfig.from_dict({**SMALL, **bad})


def test_a_pruned_state_dict_infers_its_widths():
    model = create_model("swinir", embed_dim=12, depths=[3], num_heads=[3], window_size=4,
                         img_size=8, layer_heads=[3, 0, 1], layer_mlp=[24, 7, 0])
    cfg = infer_config(model.state_dict())
    assert (cfg["layer_heads"], cfg["layer_mlp"], cfg["num_heads"], cfg["img_size"],
            cfg["window_size"], cfg["mlp_ratio"]) == ([3, 0, 1], [24, 7, 0], [3], 8, 4, 2.0)


def test_fast_attention_runs_the_fused_kernel_in_every_layer():
    """A 3-D additive mask would send PyTorch's CPU SDPA to its unfused math path (3x slower)."""
    from torch.profiler import profile
    model = create_model("swinir", **SMALL, img_size=16).eval()
    with torch.no_grad(), profile() as prof:
        model(torch.rand(2, 3, 16, 16))
    calls = {e.key: e.count for e in prof.key_averages()}
    assert calls.get("aten::_scaled_dot_product_flash_attention_for_cpu") == sum(SMALL["depths"])
    assert "aten::_scaled_dot_product_attention_math" not in calls
