"""Checkpoint formats, strict loading with named errors, safety, atomic writes."""
from __future__ import annotations

import logging
import os

import pytest
import torch

import srprune
from srprune.checkpoint import CheckpointError, read_checkpoint
from srprune.fileio import atomic_path, save_torch
from srprune.models import create_model

TINY = dict(dim=8, block_num=2, qk_dim=8, mlp_dim=12, heads=2, patch_size=[8, 6],
            num_tokens=[4, 8], group_size=[16, 8], n_iters=[2, 2], upscale=3)
NOT_INFERABLE = {k: TINY[k] for k in ("heads", "patch_size", "group_size", "n_iters")}


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    return create_model("catanet", **TINY).eval()


def same_output(a, b):
    x = torch.rand(1, 3, 11, 9)
    with torch.no_grad():
        return torch.equal(a(x), b(x))


def test_released_basicsr_checkpoint_loads_and_infers_config(shared_dir, caplog):
    with caplog.at_level(logging.INFO, logger="srprune"):
        model = srprune.load_model(shared_dir / "weights/catanet_x4_third_party.pth")
    assert model.cfg.upscale == 4 and model.cfg.dim == 40 and model.cfg.block_num == 8
    assert sum(p.numel() for p in model.parameters()) == 535_195
    assert "inferred from tensor shapes" in caplog.text and "upscale=4" in caplog.text
    assert not model.training


@pytest.mark.parametrize("layout", ["params", "params_ema", "plain", "module_prefix"])
def test_known_layouts(tmp_path, tiny, layout, caplog):
    state = tiny.state_dict()
    obj = {"params": state, "params_ema": state, "plain": state,
           "module_prefix": {f"module.{k}": v for k, v in state.items()}}[layout]
    if layout in ("params", "params_ema"):
        obj = {layout: state}
    torch.save(obj, tmp_path / "m.pth")
    with caplog.at_level(logging.INFO, logger="srprune"):
        loaded = srprune.load_model(tmp_path / "m.pth", **NOT_INFERABLE)
    assert loaded.cfg.to_dict() == tiny.cfg.to_dict()
    assert same_output(tiny, loaded)
    assert "qk_dim=8" in caplog.text


def test_own_checkpoint_is_self_describing(tmp_path, tiny):
    path = tmp_path / "ours.pth"
    srprune.save_model(tiny, path, {"stage": "test"})
    raw = torch.load(path, weights_only=True)
    assert set(raw) == {"params", "arch", "config", "meta"}
    assert raw["arch"] == "catanet" and raw["meta"]["stage"] == "test"
    loaded = srprune.load_model(path)
    assert loaded.cfg == tiny.cfg and same_output(tiny, loaded)


def test_overrides_win_and_mismatches_are_named(tmp_path, tiny):
    path = tmp_path / "ours.pth"
    srprune.save_model(tiny, path)
    with pytest.raises(CheckpointError) as err:
        srprune.load_model(path, upscale=2)
    assert "missing keys: upconv.bias" not in str(err.value)
    assert "shape mismatches: upconv.weight: checkpoint (72, 8, 3, 3) vs model (32, 8, 3, 3)" \
        in str(err.value)


def test_missing_and_unexpected_keys_are_named(tmp_path, tiny):
    state = dict(tiny.state_dict())
    del state["blocks.1.0.conv1x1.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save({"params": state}, tmp_path / "m.pth")
    with pytest.raises(CheckpointError) as err:
        srprune.load_model(tmp_path / "m.pth", **NOT_INFERABLE)
    message = str(err.value)
    assert "missing keys: blocks.1.0.conv1x1.weight" in message
    assert "unexpected keys: extra.weight" in message


def test_pickled_objects_are_refused_without_running(tmp_path):
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"params": {"w": torch.zeros(1)}, "evil": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="refused to load"):
        srprune.load_model(tmp_path / "evil.pth")
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_corrupt_files_get_a_clear_error(tmp_path, tiny, content):
    path = tmp_path / "bad.pth"
    if content == "truncated":
        srprune.save_model(tiny, tmp_path / "good.pth")
        content = (tmp_path / "good.pth").read_bytes()[:3000]
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(path)


def test_missing_file_and_non_state_dicts(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        srprune.load_model(tmp_path / "nope.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict"):
        srprune.load_model(tmp_path / "list.pth")
    torch.save({"params": {"a": 1}}, tmp_path / "ints.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        srprune.load_model(tmp_path / "ints.pth")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="cannot infer a CATANet config"):
        srprune.load_model(tmp_path / "other.pth")


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path):
    target = tmp_path / "out.pth"
    save_torch({"a": torch.ones(2)}, target)
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("killed")
    assert torch.load(target, weights_only=True)["a"].tolist() == [1.0, 1.0]  # old file intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pth"]         # no temp file left
