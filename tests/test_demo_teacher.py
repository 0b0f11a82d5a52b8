"""The committed demo teachers load on their own and beat bicubic on the embedded validation set."""
from __future__ import annotations

from pathlib import Path

import pytest

import srprune
from srprune.data import load_pairs
from srprune.evaluate import bicubic_upscaler, score, score_model

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


@pytest.mark.parametrize("name, arch", [("demo_catanet_x2.pth", "CATANet"),
                                        ("demo_swinir_x2.pth", "SwinIR")])
def test_demo_teacher_beats_bicubic_by_one_db(name, arch):
    model = srprune.load_model(WEIGHTS / name)
    assert type(model).__name__ == arch
    assert model.cfg.upscale == 2 and model.checkpoint_meta["stage"] == "train"
    pairs = load_pairs("embedded:val", 2)
    teacher = score_model(model, pairs, 2, ssim=False)["psnr"]
    bicubic = score(bicubic_upscaler(2), pairs, 2, ssim=False)["psnr"]
    assert teacher - bicubic >= 1.0
