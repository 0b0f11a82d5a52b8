"""Tests for the BasicSR-convention Y-channel metrics."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from srprune.data import read_image
from srprune.imresize import imresize
from srprune.metrics import psnr_y, rgb_to_y, ssim_y, to_uint8

# Set5 bicubic baseline measured with an independent evaluator (see ../shared/README.md).
BICUBIC_SET5 = {2: (33.673, 0.9303), 3: (30.403, 0.8689), 4: (28.429, 0.8111)}


@pytest.mark.parametrize("scale", sorted(BICUBIC_SET5))
def test_set5_bicubic_baseline(shared_dir: Path, scale: int) -> None:
    set5 = shared_dir / "data" / "Set5"
    psnrs, ssims = [], []
    for hr_path in sorted((set5 / "HR").glob("*.png")):
        hr = read_image(hr_path)
        hr = hr[: hr.shape[0] - hr.shape[0] % scale, : hr.shape[1] - hr.shape[1] % scale]
        lr = read_image(set5 / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png")
        sr = imresize(lr, scale)
        psnrs.append(psnr_y(sr, hr, crop_border=scale))
        ssims.append(ssim_y(sr, hr, crop_border=scale))
    assert len(psnrs) == 5
    expected_psnr, expected_ssim = BICUBIC_SET5[scale]
    assert np.mean(psnrs) == pytest.approx(expected_psnr, abs=0.005)
    assert np.mean(ssims) == pytest.approx(expected_ssim, abs=0.0005)


def test_rgb_to_y_bt601_range_and_grayscale() -> None:
    rgb = np.array([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]])
    np.testing.assert_allclose(rgb_to_y(rgb), [[16.0, 235.0, 16.0 + 65.481]])
    gray = np.random.default_rng(0).random((5, 4))
    np.testing.assert_allclose(rgb_to_y(gray), rgb_to_y(np.repeat(gray[:, :, None], 3, axis=2)))
    assert rgb_to_y(gray).dtype == np.float64


def test_psnr_of_a_uniform_offset() -> None:
    hr = np.full((20, 20, 3), 100, dtype=np.uint8)
    sr = hr + 1  # Y differs by 219 / 255 everywhere
    assert psnr_y(sr, hr, crop_border=2) == pytest.approx(20 * math.log10(255 / (219 / 255)))
    assert psnr_y(hr, hr, crop_border=0) == math.inf


def test_float_input_equals_uint8_input() -> None:
    rng = np.random.default_rng(1)
    hr = rng.integers(0, 256, (32, 30, 3), dtype=np.uint8)
    sr = rng.integers(0, 256, (32, 30, 3), dtype=np.uint8)
    assert psnr_y(sr / 255.0, hr / 255.0, 3) == pytest.approx(psnr_y(sr, hr, 3), abs=1e-9)
    assert ssim_y(sr / 255.0, hr / 255.0, 3) == pytest.approx(ssim_y(sr, hr, 3), abs=1e-12)


def test_ssim_matches_scikit_image_gaussian_ssim() -> None:
    rng = np.random.default_rng(2)
    hr = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    noise = rng.integers(-20, 21, hr.shape)
    sr = np.clip(hr.astype(int) + noise, 0, 255).astype(np.uint8)
    y_sr, y_hr = rgb_to_y(sr / 255.0)[4:-4, 4:-4], rgb_to_y(hr / 255.0)[4:-4, 4:-4]
    reference = structural_similarity(
        y_sr, y_hr, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim_y(sr, hr, crop_border=4) == pytest.approx(reference, abs=1e-10)
    assert ssim_y(hr, hr, crop_border=4) == pytest.approx(1.0)


def test_to_uint8_clamps_scales_and_rounds() -> None:
    values = torch.tensor([-0.1, 0.5, 1.2, 0.2]).reshape(1, 1, 2, 2).repeat(1, 3, 1, 1)
    out = to_uint8(values)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[:, :, 0].tolist() == [[0, 128], [255, 51]]
    assert np.array_equal(to_uint8(values[0].permute(1, 2, 0).numpy()), out)
    assert np.array_equal(to_uint8(values[0]), out)


def test_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(20, 20, 3\).*\(20, 21, 3\)"):
        psnr_y(np.zeros((20, 20, 3), np.uint8), np.zeros((20, 21, 3), np.uint8), 2)
    with pytest.raises(ValueError, match=r"\(20, 20, 3\).*\(20, 21, 3\)"):
        ssim_y(np.zeros((20, 20, 3), np.uint8), np.zeros((20, 21, 3), np.uint8), 2)


def test_ssim_rejects_too_small_images() -> None:
    img = np.zeros((18, 40, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="too small.*at least 19"):
        ssim_y(img, img, crop_border=4)
    assert ssim_y(img[:, :19], img[:, :19], crop_border=0) == pytest.approx(1.0)
