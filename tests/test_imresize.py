"""Tests for the MATLAB-compatible bicubic imresize."""

from pathlib import Path

import numpy as np
import pytest

from srprune.data import read_image
from srprune.imresize import imresize


def _set5_hr(shared_dir: Path) -> list[Path]:
    return sorted((shared_dir / "data" / "Set5" / "HR").glob("*.png"))


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_set5_downscaling_is_bit_exact(shared_dir: Path, scale: int) -> None:
    hr_paths = _set5_hr(shared_dir)
    assert len(hr_paths) == 5
    for hr_path in hr_paths:
        hr = read_image(hr_path)
        hr = hr[: hr.shape[0] - hr.shape[0] % scale, : hr.shape[1] - hr.shape[1] % scale]
        expected = read_image(
            shared_dir / "data" / "Set5" / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}.png"
        )
        lr = imresize(hr, 1 / scale)
        assert lr.dtype == np.uint8
        assert lr.shape == expected.shape, hr_path.name
        assert np.array_equal(lr, expected), f"{hr_path.name} x{scale}: {np.count_nonzero(lr != expected)} pixels differ"


@pytest.mark.parametrize(
    ("shape", "scale", "expected"),
    [((10, 7), 0.5, (5, 4)), ((255, 228), 1 / 3, (85, 76)), ((86, 57), 4, (344, 228)), ((5, 3), 1.5, (8, 5))],
)
def test_output_size_is_matlab_ceil(shape: tuple[int, int], scale: float, expected: tuple[int, int]) -> None:
    assert imresize(np.zeros(shape, dtype=np.uint8), scale).shape == expected


def test_upscaling_reproduces_a_linear_ramp_away_from_borders() -> None:
    width, scale = 20, 3
    ramp = np.tile(np.arange(width, dtype=np.float64), (6, 1))
    out = imresize(ramp, scale)
    # MATLAB maps output pixel x (0-based) to input coordinate (x + 0.5) / scale - 0.5.
    expected = (np.arange(width * scale) + 0.5) / scale - 0.5
    interior = slice(2 * scale, (width - 2) * scale)
    np.testing.assert_allclose(out[3, interior], expected[interior], atol=1e-12)


@pytest.mark.parametrize("scale", [0.25, 1 / 3, 2, 3])
def test_constant_image_stays_constant(scale: float) -> None:
    img = np.full((24, 18, 3), 77, dtype=np.uint8)
    assert np.all(imresize(img, scale) == 77)
    np.testing.assert_allclose(imresize(img.astype(np.float64) / 255, scale), 77 / 255, atol=1e-12)


def test_float_input_is_not_rounded_and_keeps_its_dtype() -> None:
    rng = np.random.default_rng(0)
    img = rng.random((16, 12, 3)).astype(np.float32)
    out = imresize(img, 0.5)
    assert out.dtype == np.float32
    assert not np.allclose(out * 255, np.round(out * 255))
    assert imresize(img.astype(np.float64), 2).dtype == np.float64


def test_grayscale_matches_each_colour_channel() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (21, 17, 3), dtype=np.uint8)
    out = imresize(img, 1 / 3)
    for channel in range(3):
        assert np.array_equal(imresize(img[:, :, channel], 1 / 3), out[:, :, channel])


def test_uint8_output_is_clipped() -> None:
    img = np.zeros((12, 12), dtype=np.uint8)
    img[:, 6:] = 255  # a step overshoots with the cubic kernel when upscaling
    out = imresize(img, 2)
    assert out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert np.any(imresize(img.astype(np.float64), 2) > 255)


@pytest.mark.parametrize(
    ("img", "scale", "error"),
    [
        (np.zeros((4,), dtype=np.uint8), 2, ValueError),
        (np.zeros((4, 4), dtype=np.uint8), 0, ValueError),
        (np.zeros((4, 4), dtype=np.int32), 2, TypeError),
    ],
)
def test_invalid_input_raises(img: np.ndarray, scale: float, error: type[Exception]) -> None:
    with pytest.raises(error):
        imresize(img, scale)
