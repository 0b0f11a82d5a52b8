"""CATANet: parity with the authors' outputs, documented answers on awkward sizes, widths."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from srprune.models import create_model
from srprune.models.catanet import (CATANet, CATANetConfig, add_rows, infer_config, put_rows,
                                    reflect_index, take_rows, tokens_to_map)

TINY = dict(dim=8, block_num=2, qk_dim=8, mlp_dim=12, heads=2, patch_size=[8, 6],
            num_tokens=[4, 8], group_size=[16, 8], n_iters=[2, 2])


def initted(model: CATANet, seed: int = 0) -> CATANet:
    """Give every TAB trained-looking centres (``initted`` True) and non-trivial weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
        for tab, _ in model.blocks:
            tab.means.copy_(torch.randn(tab.means.shape, generator=gen))
            tab.initted.fill_(True)
    return model.eval()


@pytest.fixture(scope="module")
def official(shared_dir):
    """The x2 parity fixture's weights in our model."""
    fixture = torch.load(shared_dir / "fixtures/catanet_official_x2.pt", weights_only=True)
    model = CATANet(upscale=2)
    model.load_state_dict(fixture["params"], strict=True)
    return model.eval()


# ------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_parity_with_authors_output(shared_dir, scale):
    fixture = torch.load(shared_dir / f"fixtures/catanet_official_x{scale}.pt", weights_only=True)
    model = CATANet(upscale=fixture["upscale"])
    model.load_state_dict(fixture["params"], strict=True)
    model.eval()
    for impl in ("fast", "reference"):
        model.set_attention_impl(impl)
        with torch.no_grad():
            out = model(fixture["input"])
        assert out.shape == fixture["output"].shape
        assert (out - fixture["output"]).abs().max().item() <= 1e-5, impl


def test_fast_and_reference_formulations_agree(official):
    x = torch.rand(1, 3, 48, 44, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        official.set_attention_impl("reference")
        ref = official(x)
        official.set_attention_impl("fast")
        fast = official(x)
    assert (fast - ref).abs().max().item() <= 1e-5


# ------------------------------------------------------------------------------ sizes
def naive_attention(q, k, v, scale):
    return torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1) @ v


def naive_mha(attn, x):
    """Multi-head attention of an LRSA ``Attention`` written out with plain matmuls."""
    h, dq, dv = attn.kept, attn.dqk, attn.dv
    q = attn.to_q(x).unflatten(-1, (h, dq)).transpose(1, 2)
    k = attn.to_k(x).unflatten(-1, (h, dq)).transpose(1, 2)
    v = attn.to_v(x).unflatten(-1, (h, dv)).transpose(1, 2)
    return attn.proj(naive_attention(q, k, v, dq ** -0.5).transpose(1, 2).flatten(2))


def authors_patch_attention(lrsa, x, p):
    """The authors' patch cutting and overlap rule, literally, for sides of at least p."""
    b, c, h, w = x.shape
    step = p if h == w == p else p - 2
    pre = lrsa.layer[0]
    out = torch.zeros_like(x)
    for i in range(0, h + step - p, step):
        top = i if i + p <= h else h - p
        for j in range(0, w + step - p, step):
            left = j if j + p <= w else w - p
            tok = x[:, :, top:top + p, left:left + p].flatten(2).transpose(1, 2)
            tok = tok + naive_mha(pre.fn, pre.norm(tok))
            out[:, :, top:top + p, left:left + p] += tok.transpose(1, 2).reshape(b, c, p, p)
    for i in range(step, h + step - p, step):
        top = i if i + p <= h else h - p
        out[:, :, top:i + p - step] /= 2
    for j in range(step, w + step - p, step):
        left = j if j + p <= w else w - p
        out[:, :, :, left:j + p - step] /= 2
    return out


@pytest.mark.parametrize("size", [(37, 53), (16, 16), (16, 40), (30, 31)])
def test_lrsa_patches_follow_authors_rule(official, size):
    lrsa = official.blocks[0][1]
    x = torch.randn(1, 40, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = lrsa._local_attention(x, 16)
        theirs = authors_patch_attention(lrsa, x, 16)
    assert (ours - theirs).abs().max().item() < 1e-5


@pytest.mark.parametrize("size", [(10, 10), (2, 2), (10, 37)])
def test_lrsa_side_shorter_than_patch_spans_whole_side(official, size):
    """Documented answer for L < p: one patch spanning the side (theirs zeroes rows for p/2<L<p)."""
    lrsa = official.blocks[0][1]
    h, w = size
    x = torch.randn(1, 40, h, w, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = lrsa._local_attention(x, 16)
        if w < 16:  # both sides short: plain attention over the whole map
            tok = x.flatten(2).transpose(1, 2)
            expected = (tok + naive_mha(lrsa.layer[0].fn, lrsa.layer[0].norm(tok)))
            expected = expected.transpose(1, 2).reshape(1, 40, h, w)
        else:  # rows short: patches h x 16 along the columns with the authors' column rule
            expected = authors_patch_attention_rect(lrsa, x, 16)
    assert (ours - expected).abs().max().item() < 1e-5
    assert ours[:, :, 0].abs().sum() > 0  # the first rows are not zeroed


def authors_patch_attention_rect(lrsa, x, p):
    """Patches spanning all rows (h < p) and cut along columns by the authors' rule."""
    b, c, h, w = x.shape
    step, pre = p - 2, lrsa.layer[0]
    out = torch.zeros_like(x)
    for j in range(0, w + step - p, step):
        left = j if j + p <= w else w - p
        tok = x[:, :, :, left:left + p].flatten(2).transpose(1, 2)
        tok = tok + naive_mha(pre.fn, pre.norm(tok))
        out[:, :, :, left:left + p] += tok.transpose(1, 2).reshape(b, c, h, p)
    for j in range(step, w + step - p, step):
        left = j if j + p <= w else w - p
        out[:, :, :, left:j + p - step] /= 2
    return out


def literal_reflection(n, length):
    seq, forward = [], True
    while len(seq) < length:
        seq += list(range(n)) if forward else list(range(n - 1, -1, -1))
        forward = not forward
    return seq[:length]


def test_reflect_index_is_symmetric_extension():
    for n, length in [(5, 5), (5, 8), (5, 14), (36, 96), (1, 4)]:
        assert reflect_index(n, length).tolist() == literal_reflection(n, length)


def naive_iasa(iasa, t, order, k_g, v_g, group_size):
    """IASA with explicit loops over heads and groups, reflection written out."""
    n = t.shape[1]
    gs = min(n, group_size)
    ng = math.ceil(n / gs)
    idx = order[0]
    q, k, v = (f(t)[0, idx] for f in (iasa.to_q, iasa.to_k, iasa.to_v))
    q = q[literal_reflection(n, ng * gs)]
    k = k[literal_reflection(n, (ng + 1) * gs)]
    v = v[literal_reflection(n, (ng + 1) * gs)]
    dq, dv, scale = iasa.dqk, iasa.dv, iasa.dqk ** -0.5
    heads = []
    for h in range(iasa.kept):
        qh, kh, vh = q[:, h * dq:(h + 1) * dq], k[:, h * dq:(h + 1) * dq], v[:, h * dv:(h + 1) * dv]
        groups = []
        for j in range(ng):
            qj = qh[j * gs:(j + 1) * gs]
            groups.append(naive_attention(qj, kh[j * gs:j * gs + 2 * gs], vh[j * gs:j * gs + 2 * gs], scale)
                          + naive_attention(qj, k_g[0, h], v_g[0, h], scale))
        heads.append(torch.cat(groups)[:n])
    out = torch.cat(heads, dim=1)
    unsorted = torch.empty_like(out)
    unsorted[idx] = out
    return iasa.proj(unsorted)[None]


@pytest.mark.parametrize("side", [6, 9, 13, 17, 20, 40])
def test_iasa_groups_with_reflection(official, side):
    """Sizes where the authors' unfold raises (gs < N < 1.5 gs) get the reflected answer."""
    tab = official.blocks[0][0]
    x = torch.randn(1, 40, side, side, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        t = tab.norm(x.flatten(2).transpose(1, 2))
        g = tab.centres(t)
        score = F.normalize(t, dim=-1) @ F.normalize(g, dim=-1).transpose(-1, -2)
        order = torch.argsort(score.argmax(-1), dim=-1)
        k_g = tab.irca_attn.to_k(g).unflatten(-1, (4, 9)).transpose(1, 2)
        v_g = tab.irca_attn.to_v(g).unflatten(-1, (4, 10)).transpose(1, 2)
        for gs in (32, 64, 256):
            ours = tab.iasa_attn(t, order, k_g, v_g, gs)
            expected = naive_iasa(tab.iasa_attn, t, order, k_g, v_g, gs)
            assert (ours - expected).abs().max().item() < 1e-5, gs


@pytest.mark.parametrize("size", [(2, 2), (6, 6), (9, 9), (10, 10), (17, 17), (37, 53), (1, 1), (3, 70)])
def test_any_input_size_gives_finite_output_of_right_shape(official, size):
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = official(x)
    assert out.shape == (1, 3, 2 * size[0], 2 * size[1])
    assert torch.isfinite(out).all()


def test_eval_output_does_not_depend_on_batch(official):
    gen = torch.Generator().manual_seed(6)
    a, b = torch.rand(1, 3, 20, 18, generator=gen), torch.rand(1, 3, 20, 18, generator=gen)
    fresh = create_model("catanet", **TINY).eval()  # initted False: centres from each image
    for model in (official, fresh):
        with torch.no_grad():
            both = model(torch.cat([a, b]))
            assert (both[0] - model(a)[0]).abs().max() < 1e-5
            assert (both[1] - model(b)[0]).abs().max() < 1e-5


def test_uninitialised_centres_with_few_tokens():
    """N < num_tokens/2 raises in the authors' code; ours reflects the tokens."""
    model = create_model("catanet", **{**TINY, "num_tokens": [16, 32]}).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, 3, 2))
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------ widths
def test_per_block_widths_shape_the_layers():
    model = create_model("catanet", **TINY, tab_heads=[1, 2], lrsa_heads=[2, 0], tab_mlp=[5, 12],
                         lrsa_mlp=[0, 3])
    tab0, lrsa0 = model.blocks[0]
    assert tab0.iasa_attn.to_q.weight.shape == (4, 8)      # 1 head of 4 q/k channels
    assert tab0.iasa_attn.to_v.weight.shape == (4, 8)      # 1 head of 4 v channels
    assert tab0.irca_attn.to_k.weight.shape == (4, 8)
    assert tab0.iasa_attn.proj.weight.shape == (8, 4)
    assert tab0.mlp.fn.fc1.weight.shape == (5, 8)
    assert lrsa0.layer[1].fn.fc1.weight.shape == (0, 8)
    assert model.blocks[1][1].layer[0].fn.to_q.weight.shape == (0, 8)
    assert tab0.iasa_attn.scale == 4 ** -0.5                # the head width, not the kept width
    with torch.no_grad():
        assert torch.isfinite(model.eval()(torch.rand(1, 3, 12, 10))).all()


def test_channel_widths_shape_the_layers_and_keep_the_scale():
    model = create_model("catanet", **TINY, tab_heads=[1, 2], tab_qk=[3, 4], tab_v=[2, 1],
                         lrsa_qk=[1, 2], lrsa_v=[4, 3])
    tab0, lrsa0 = model.blocks[0]
    assert tab0.iasa_attn.to_q.weight.shape == tab0.irca_attn.to_k.weight.shape == (3, 8)
    assert tab0.iasa_attn.to_v.weight.shape == tab0.irca_attn.to_v.weight.shape == (2, 8)
    assert tab0.iasa_attn.proj.weight.shape == (8, 2)
    assert model.blocks[1][0].iasa_attn.to_v.weight.shape == (2, 8)  # 2 heads of 1
    attn = lrsa0.layer[0].fn
    assert attn.to_q.weight.shape == (2, 8) and attn.proj.weight.shape == (8, 8)
    assert tab0.iasa_attn.scale == attn.scale == 4 ** -0.5  # the full head width's
    assert model.cfg.to_dict()["lrsa_v"] == [4, 3]
    model = initted(model).eval()
    x = torch.rand(1, 3, 12, 10, generator=torch.Generator().manual_seed(0))
    for impl in ("fast", "reference"):
        model.set_attention_impl(impl)
        with torch.no_grad():
            out = model(x)
        assert torch.isfinite(out).all()
        if impl == "fast":
            fast = out
    # the padded fused path equals the authors' formulation (outputs here are of order 100)
    assert (fast - out).abs().max().item() <= 1e-5 * out.abs().max().item()


def test_empty_ffn_adds_fc2_bias_and_empty_attention_adds_nothing():
    model = initted(create_model("catanet", **TINY, lrsa_heads=[0, 0], lrsa_mlp=[0, 0]))
    lrsa = model.blocks[0][1]
    x = torch.randn(1, 8, 9, 7)
    with torch.no_grad():
        out = lrsa(x, 8)
    expected = x + lrsa.layer[1].fn.fc2.bias.view(1, 8, 1, 1)
    assert torch.allclose(out, expected, atol=1e-6)


def test_config_validation_errors():
    with pytest.raises(ValueError, match="upscale"):
        CATANetConfig(upscale=5)
    with pytest.raises(ValueError, match="divisible"):
        CATANetConfig(dim=41)
    with pytest.raises(ValueError, match="patch_size has 3 entries"):
        CATANetConfig(patch_size=[16, 20, 24])
    with pytest.raises(ValueError, match=r"tab_heads entries must lie in \[0, 4\]"):
        CATANetConfig(tab_heads=[5] * 8)
    with pytest.raises(ValueError, match=r"tab_qk entries must lie in \[1, 9\]"):
        CATANetConfig(tab_qk=[0] * 8)
    with pytest.raises(ValueError, match=r"lrsa_v entries must lie in \[1, 10\]"):
        CATANetConfig(lrsa_v=[11] * 8)
    with pytest.raises(ValueError, match="tab_v has 2 entries"):
        CATANetConfig(tab_v=[1, 2])
    with pytest.raises(ValueError, match="unknown CATANet config keys"):
        CATANetConfig.from_dict({"dims": 3})
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        create_model("catanet", **TINY)(torch.rand(1, 1, 8, 8))


@pytest.mark.parametrize("upscale", [1, 2, 3, 4])
def test_upscale_factors(upscale):
    model = create_model("catanet", **TINY, upscale=upscale).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, 7, 9)).shape == (2, 3, 7 * upscale, 9 * upscale)


def test_infer_config_reads_shapes():
    model = create_model("catanet", **TINY, upscale=3, tab_heads=[1, 2], lrsa_mlp=[0, 7])
    inferred = infer_config(model.state_dict(), heads=2)
    assert inferred == {"dim": 8, "block_num": 2, "num_tokens": [4, 8], "upscale": 3, "mlp_dim": 12,
                        "qk_dim": 8, "tab_heads": [1, 2], "lrsa_heads": [2, 2], "tab_mlp": [12, 12],
                        "lrsa_mlp": [0, 7]}


# ------------------------------------------------------------------------------ fast formulation
def test_fused_qkv_equals_separate_projections_and_is_zero_padded():
    model = initted(create_model("catanet", **TINY, tab_qk=[3, 4], tab_v=[2, 4]))
    attn = model.blocks[0][0].iasa_attn                  # 2 heads, q/k width 3, v width 2
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(7))
    for mask in (None, torch.tensor([1.0, 0, 1, 1, 0, 1]), torch.rand(2, 6)):
        attn.qk_mask = mask
        with torch.no_grad():
            q, k, v = attn.qkv(x).unbind(-3)
            assert q.shape == (2, 5, 2, 16)
            assert torch.allclose(q[..., :3].flatten(-2), attn.query(x), atol=1e-6)
            assert torch.allclose(k[..., :3].flatten(-2), attn.to_k(x), atol=1e-6)
            assert torch.allclose(v[..., :2].flatten(-2), attn.to_v(x), atol=1e-6)
        assert not q[..., 3:].any() and not k[..., 3:].any() and not v[..., 2:].any()


def test_row_helpers_take_put_back_and_sum():
    x = torch.randn(2, 5, 3)
    perm = torch.stack([torch.randperm(5), torch.randperm(5)])
    taken = take_rows(x, perm)
    assert torch.equal(taken[1, 2], x[1, perm[1, 2]])
    assert torch.equal(put_rows(taken, perm), x)
    summed = add_rows(torch.ones(2, 3, 3), torch.tensor([[0, 0, 4], [1, 2, 1]]), 5)
    assert summed[0, :, 0].tolist() == [2, 0, 0, 0, 1]
    assert summed[1, :, 0].tolist() == [0, 2, 1, 0, 0]


def test_token_maps_are_channels_last_for_convolutions():
    """A one-image map of token rows must be seen as channels-last (else convs copy it, 9x slower)."""
    conv = torch.nn.Conv2d(5, 5, 3, padding=1, groups=5)
    with torch.no_grad():
        out = conv(tokens_to_map(torch.rand(1, 12, 5), 3, 4))
    assert out.is_contiguous(memory_format=torch.channels_last)
    model = initted(create_model("catanet", **TINY))
    with torch.no_grad():
        assert model(torch.rand(1, 3, 9, 7)).is_contiguous()  # the output in the usual layout


def test_masked_fast_forward_and_gradients_match_reference():
    """Per-image head, channel and neuron masks (scoring, fine-tuning): fast == reference."""
    model = initted(create_model("catanet", **TINY, tab_qk=[3, 4], lrsa_v=[3, 2]))
    gen = torch.Generator().manual_seed(8)
    masks = [("blocks.0.0.iasa_attn", "unit_mask", 2), ("blocks.0.0.iasa_attn", "qk_mask", 6),
             ("blocks.1.1.layer.0.fn", "unit_mask", 2), ("blocks.0.1.layer.0.fn", "v_mask", 6),
             ("blocks.1.0.mlp.fn", "unit_mask", 12)]
    for name, attribute, units in masks:
        mask = (torch.rand(2, units, generator=gen) > 0.4).float()
        setattr(model.get_submodule(name), attribute, mask)
    x = torch.rand(2, 3, 14, 11, generator=gen)
    results = {}
    for impl in ("fast", "reference"):
        model.set_attention_impl(impl)
        out = model(x)
        grads = torch.autograd.grad(out.square().mean(), list(model.parameters()), allow_unused=True)
        results[impl] = (out.detach(), grads)
    (fast, fast_grads), (ref, ref_grads) = results["fast"], results["reference"]
    assert (fast - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    for a, b in zip(fast_grads, ref_grads):
        assert (a is None) == (b is None)
        if a is not None:
            assert (a - b).abs().max().item() <= 1e-4 * (b.abs().max().item() + 1e-6)


# ------------------------------------------------------------------------------ training mode
def test_training_mode_learns_centres_and_backpropagates():
    model = create_model("catanet", **TINY).train()
    x = torch.rand(2, 3, 12, 12)
    out = model(x)
    out.mean().backward()
    tab = model.blocks[0][0]
    assert bool(tab.initted)
    assert tab.iasa_attn.to_q.weight.grad.abs().sum() > 0
    before = tab.means.clone()
    model(x)
    assert not torch.equal(before, tab.means)      # EMA update
    model.eval()
    with torch.no_grad():
        kept = tab.means.clone()
        model(x)
    assert torch.equal(kept, tab.means)            # eval changes no buffer
