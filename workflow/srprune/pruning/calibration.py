"""Calibration crops: seeded LR crops of training images, for scoring, selection, compensation."""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..data import PatchSampler, load_pairs


# OPTIN scoring costs one masked forward per unit and crop, so it samples fewer, smaller crops
# than selection and compensation (``prune.optin.num_crops`` / ``crop_size``); chosen by the
# split-half rank stability of exact scores (README, "Mask search";
# ``benchmarks/bench_mask_search.py --stability``).
SCORE_CROPS = 4
SCORE_CROP_SIZE = 32


@dataclass
class Calibration:
    """LR calibration crops taken from training images, seeded."""

    hr: str = "embedded:train"
    lr: str | None = None
    filename_tmpl: str = "{}"
    num_crops: int = 32
    crop_size: int = 48
    seed: int = 0

    def crops(self, scale: int) -> Tensor:
        pairs = load_pairs(self.hr, scale, self.lr, self.filename_tmpl)
        sampler = PatchSampler(pairs, scale=scale, crop_size=self.crop_size,
                               batch_size=self.num_crops, seed=self.seed)
        return sampler.sample()[0]
