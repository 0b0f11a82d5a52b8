"""Latency measurement: structure, run counts, timer accuracy, size dependence; evaluate's option."""
from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import srprune
from srprune.evaluate import evaluate_spec
from srprune.latency import measure_latency, summarize, time_callable
from srprune.models import create_model


class TinySR(nn.Module):
    """Two convs and a PixelShuffle; ``cfg.upscale`` like CATANet."""

    def __init__(self, scale: int = 4, width: int = 16):
        super().__init__()
        self.cfg = SimpleNamespace(upscale=scale)
        self.body = nn.Conv2d(3, width, 3, padding=1)
        self.tail = nn.Conv2d(width, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        assert not self.training and not torch.is_grad_enabled()
        return self.shuffle(self.tail(torch.relu(self.body(x))))


def test_time_callable_counts_runs_and_warmup():
    calls, syncs = [], []
    timing = time_callable(lambda: calls.append(1), warmup=3, runs=7, synchronize=lambda: syncs.append(1))
    assert len(calls) == 10 and len(syncs) == 8  # once after warm-up, once per timed run
    assert timing["runs"] == 7 and timing["warmup"] == 3 and len(timing["times_ms"]) == 7
    assert timing["min_ms"] <= timing["median_ms"] <= timing["max_ms"]
    assert timing["min_ms"] <= timing["mean_ms"] <= timing["max_ms"]


def test_sleep_is_measured_within_tolerance():
    timing = time_callable(lambda: time.sleep(0.02), warmup=1, runs=5)
    assert 19.5 <= timing["min_ms"] <= timing["median_ms"] < 20 + 30  # oversleep on a busy host


def test_summarize():
    assert summarize([3, 1, 2, 10]) == {"median_ms": 2.5, "min_ms": 1.0, "max_ms": 10.0,
                                         "mean_ms": 4.0, "times_ms": [3.0, 1.0, 2.0, 10.0]}


def test_measure_latency_structure_and_defaults():
    model = TinySR(scale=4).train()
    result = measure_latency(model, runs=3, warmup=1)
    assert model.training, "mode restored"
    assert model.calls == 4 and len(result["times_ms"]) == 3 and result["runs"] == 3
    assert result["lr_size"] == [180, 320] == result["reference_lr_size"]
    assert result["is_reference_size"] is True and result["scale"] == 4 and result["batch"] == 1
    assert result["threads"] == torch.get_num_threads() and result["torch"] == torch.__version__
    assert result["device"] == "cpu" and result["device_name"] and result["dtype"] == "float32"
    assert result["tile"] is None
    assert 0 < result["min_ms"] <= result["median_ms"] <= result["max_ms"]
    json.dumps(result)
    small = measure_latency(model, (16, 24), runs=2, warmup=0)
    assert small["lr_size"] == [16, 24] and small["is_reference_size"] is False
    assert small["reference_lr_size"] == [180, 320]


def test_bigger_input_takes_longer():
    model = TinySR(scale=2)
    small = measure_latency(model, (8, 8), runs=5, warmup=1)
    big = measure_latency(model, (256, 256), runs=3, warmup=1)  # 1024x the pixels
    assert big["min_ms"] > 4 * small["median_ms"]


def test_tiled_latency_and_fixed_input():
    model = TinySR(scale=2)
    result = measure_latency(model, (40, 40), runs=1, warmup=0, tile=16, tile_overlap=4)
    assert result["tile"] == {"tile": 16, "overlap": 4, "blend": "uniform"}
    assert model.calls == 9  # 3 x 3 tiles
    seen = []
    hook = model.register_forward_hook(lambda m, inp, out: seen.append(inp[0].clone()))
    measure_latency(model, (5, 6), runs=1, warmup=0)
    measure_latency(model, (5, 6), runs=1, warmup=0)
    hook.remove()
    assert torch.equal(seen[0], seen[1]) and 0 <= seen[0].min() and seen[0].max() < 1


def test_errors_are_clear():
    model = TinySR()
    with pytest.raises(ValueError, match="runs must be"):
        measure_latency(model, (8, 8), runs=0)
    with pytest.raises(ValueError, match="warmup must be"):
        time_callable(lambda: None, warmup=-1)
    with pytest.raises(ValueError, match="lr_size"):
        measure_latency(model, (0, 8))
    with pytest.raises(ValueError, match="lr_size"):
        measure_latency(model, "big")
    bare = nn.Conv2d(3, 3, 1)
    with pytest.raises(ValueError, match="give lr_size or scale"):
        measure_latency(bare)
    assert measure_latency(bare, (4, 4), runs=1)["reference_lr_size"] is None
    assert measure_latency(bare, scale=4, runs=1, warmup=0)["lr_size"] == [180, 320]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_latency():
    model = TinySR(scale=2)
    result = measure_latency(model, (64, 64), device="cuda", runs=3, warmup=1)
    assert result["device"].startswith("cuda") and result["device_name"] == torch.cuda.get_device_name(0)
    assert next(model.parameters()).is_cuda


def test_evaluate_spec_reports_latency(tmp_path, make_images):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    srprune.save_model(create_model("catanet", dim=8, block_num=1, qk_dim=8, mlp_dim=12, heads=2,
                                    patch_size=[8], num_tokens=[4], group_size=[16], n_iters=[1],
                                    upscale=2).eval(), path)
    hr = make_images(tmp_path / "hr", 1, (24, 20))
    result = evaluate_spec(str(path), str(hr), 2, progress=False, latency_runs=2, latency_warmup=0,
                           latency_lr_size=(12, 10))
    assert result["latency_ms"] == result["latency"]["median_ms"] > 0
    assert result["latency"]["lr_size"] == [12, 10] and result["latency"]["runs"] == 2
    assert result["latency"]["reference_lr_size"] == [360, 640]
    assert result["macs_lr_size"] == [360, 640] and "psnr" in result
    with pytest.raises(ValueError, match="latency_runs"):
        evaluate_spec(str(path), str(hr), 2, progress=False, latency_runs=-1)
