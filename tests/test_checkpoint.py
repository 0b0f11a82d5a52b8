"""Checkpoint formats, strict loading with named errors, safety, atomic writes."""
from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import sys

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


def _bare_pickles(tmp_path, tiny):
    """A state dict as torch's legacy non-zip format (protocol 4) and as pickle.dump files."""
    state = tiny.state_dict()
    torch.save(state, tmp_path / "legacy4.pth", _use_new_zipfile_serialization=False,
               pickle_protocol=4)
    for protocol in (2, 4):
        with open(tmp_path / f"dump{protocol}.pkl", "wb") as handle:
            pickle.dump(state, handle, protocol=protocol)
    return {"legacy4.pth": 4, "dump2.pkl": 2, "dump4.pkl": 4}


def test_bare_pickles_are_named_and_the_fix_given(tmp_path, tiny, capsys):
    for name, protocol in _bare_pickles(tmp_path, tiny).items():
        with pytest.raises(CheckpointError) as err:
            srprune.load_model(tmp_path / name)
        message = str(err.value)
        assert f"a pickle file in the legacy (non-zip) format, pickle protocol {protocol}" in message
        assert "re-save it with torch.save in a current torch" in message
        assert "corrupt" not in message and "weights_only=False" not in message
    assert capsys.readouterr().err == ""  # torch's warning about the protocol is not shown


def test_no_refusal_suggests_unsafe_loading(tmp_path, tiny):
    class Payload:
        def __reduce__(self):
            return (print, ("ran",))

    torch.save({"x": Payload()}, tmp_path / "zip.pth")
    torch.save({"x": Payload()}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    (tmp_path / "junk.pth").write_bytes(b"\x80\x04junk")
    for name in ("zip.pth", "legacy.pth", "junk.pth", *_bare_pickles(tmp_path, tiny)):
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(tmp_path / name)
        assert "weights_only" not in str(err.value).replace("weights_only=True", ""), name
    with pytest.raises(CheckpointError, match="the file pickles print"):
        read_checkpoint(tmp_path / "zip.pth")


def _write_safetensors(path, tensors):
    """The safetensors layout: 8-byte header length, JSON header, raw little-endian data."""
    header, blobs, offset = {}, [], 0
    for name, tensor in tensors.items():
        data = tensor.contiguous().numpy().tobytes()
        header[name] = {"dtype": "F32", "shape": list(tensor.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))
    return path


def test_safetensors_without_the_package_gets_an_install_hint(tmp_path, monkeypatch):
    path = _write_safetensors(tmp_path / "w.safetensors", {"a": torch.ones(2, 3)})
    monkeypatch.setitem(sys.modules, "safetensors", None)
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(CheckpointError) as err:
        read_checkpoint(path)
    assert str(err.value) == (f"{path} is a safetensors file; reading it needs the safetensors "
                              f"package: pip install safetensors")


def test_safetensors_files_load(tmp_path, tiny):
    pytest.importorskip("safetensors", reason="pip install safetensors (in '.[test]')")
    from safetensors.torch import save_file

    save_file(tiny.state_dict(), tmp_path / "tiny.safetensors")
    model = srprune.load_model(tmp_path / "tiny.safetensors", **NOT_INFERABLE)
    assert same_output(model, tiny)
    raw = _write_safetensors(tmp_path / "raw.safetensors", {"a": torch.arange(6.0).view(2, 3)})
    assert torch.equal(read_checkpoint(raw)["a"], torch.arange(6.0).view(2, 3))
    raw.write_bytes(raw.read_bytes()[:-4])
    with pytest.raises(CheckpointError, match="a safetensors file that cannot be read"):
        read_checkpoint(raw)


def test_a_file_without_config_names_the_model_config_keys(tmp_path, tiny):
    torch.save({"params": tiny.state_dict()}, tmp_path / "basicsr.pth")
    with pytest.raises(CheckpointError) as err:
        srprune.load_model(tmp_path / "basicsr.pth")
    message = str(err.value)
    assert "patch_size has 8 entries but block_num is 2" in message
    assert "cannot tell heads, patch_size, group_size, n_iters" in message
    assert "--model-config '{patch_size: ...}'" in message
    assert same_output(srprune.load_model(tmp_path / "basicsr.pth", **NOT_INFERABLE), tiny)
