"""Tests for image reading, paired data sets, embedded images and the patch sampler."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from srprune.data import (
    DataError,
    PatchSampler,
    SRDataset,
    check_min_side,
    embedded_images,
    export_embedded,
    list_images,
    modcrop,
    read_image,
    to_tensor,
)
from srprune.imresize import imresize


def _random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(path: Path, img: np.ndarray) -> Path:
    Image.fromarray(img).save(path)
    return path


# --- reading -----------------------------------------------------------------------------


def test_read_rgb_png_roundtrip(tmp_path: Path) -> None:
    img = _random_rgb(7, 9)
    out = read_image(_save(tmp_path / "a.png", img))
    assert out.dtype == np.uint8 and np.array_equal(out, img)


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    gray = _random_rgb(6, 5)[:, :, 0]
    out = read_image(_save(tmp_path / "g.png", gray))
    assert out.shape == (6, 5, 3)
    assert all(np.array_equal(out[:, :, c], gray) for c in range(3))


def test_alpha_is_dropped(tmp_path: Path) -> None:
    rgba = np.dstack([_random_rgb(6, 5), np.full((6, 5), 10, np.uint8)])
    assert np.array_equal(read_image(_save(tmp_path / "rgba.png", rgba)), rgba[:, :, :3])
    gray_alpha = rgba[:, :, [0, 3]]
    out = read_image(_save(tmp_path / "la.png", gray_alpha))
    assert np.array_equal(out, np.repeat(rgba[:, :, :1], 3, axis=2))


def test_16_bit_is_scaled_to_8_bit(tmp_path: Path) -> None:
    gray = np.array([[0, 257, 65535], [32896, 1000, 128]], dtype=np.uint16)
    out = read_image(_save(tmp_path / "g16.png", gray))
    assert out[:, :, 0].tolist() == [[0, 1, 255], [128, 4, 0]]


def test_read_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing.png.*does not exist"):
        read_image(tmp_path / "missing.png")
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(DataError, match="notes.png.*cannot be read"):
        read_image(bad)
    with pytest.raises(DataError, match="not a file"):
        read_image(tmp_path)


def test_modcrop_crops_bottom_and_right() -> None:
    img = _random_rgb(11, 14)
    assert np.array_equal(modcrop(img, 4), img[:8, :12])
    assert modcrop(img, 1).shape == img.shape


# --- folders -----------------------------------------------------------------------------


def test_list_images_sorted_and_case_insensitive(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.Tiff", "d.webp", "e.bmp", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.Tiff", "d.webp", "e.bmp"]


def test_list_images_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(DataError, match="file.png.*not a folder"):
        list_images(tmp_path / "file.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty.*no image files"):
        list_images(empty)


# --- paired data set ---------------------------------------------------------------------


def _make_pair_dirs(tmp_path: Path, scale: int = 2) -> tuple[Path, Path, dict[str, np.ndarray]]:
    hr_dir, lr_dir = tmp_path / "hr", tmp_path / "lr"
    hr_dir.mkdir()
    lr_dir.mkdir()
    hrs = {"one": _random_rgb(21, 26, 1), "two": _random_rgb(30, 17, 2)}
    for index, (name, hr) in enumerate(hrs.items()):
        _save(hr_dir / f"{name}.png", hr)
        ext = ".png" if index == 0 else ".bmp"  # any image extension is accepted for LR
        _save(lr_dir / f"{name}x{scale}{ext}", imresize(modcrop(hr, scale), 1 / scale))
    return hr_dir, lr_dir, hrs


def test_dataset_reads_lr_folder_with_template(tmp_path: Path) -> None:
    hr_dir, lr_dir, hrs = _make_pair_dirs(tmp_path)
    dataset = SRDataset(hr_dir, scale=2, lr_dir=lr_dir, filename_tmpl="{}x2")
    assert len(dataset) == 2
    names = []
    for name, lr, hr in dataset:
        names.append(name)
        assert np.array_equal(hr, modcrop(hrs[name], 2))
        assert np.array_equal(lr, imresize(hr, 0.5))
    assert names == ["one", "two"]
    name, lr_t, hr_t = dataset.tensors(0)
    assert lr_t.shape == (1, 3, 10, 13) and hr_t.shape == (1, 3, 20, 26)
    assert lr_t.dtype == torch.float32 and 0 <= lr_t.min() and lr_t.max() <= 1
    assert torch.equal(hr_t, to_tensor(dataset[0][2]))


def test_dataset_makes_lr_on_the_fly(tmp_path: Path) -> None:
    hr_dir, _, hrs = _make_pair_dirs(tmp_path, scale=3)
    name, lr, hr = SRDataset(hr_dir, scale=3)[1]
    assert name == "two" and hr.shape == (30, 15, 3)
    assert np.array_equal(lr, imresize(modcrop(hrs["two"], 3), 1 / 3))


def test_dataset_missing_lr_partner(tmp_path: Path) -> None:
    hr_dir, lr_dir, _ = _make_pair_dirs(tmp_path)
    (lr_dir / "twox2.bmp").unlink()
    with pytest.raises(DataError, match=r"two.png.*no LR partner.*twox2.png"):
        SRDataset(hr_dir, scale=2, lr_dir=lr_dir, filename_tmpl="{}x2")


def test_dataset_lr_size_mismatch_states_both_sizes(tmp_path: Path) -> None:
    hr_dir, lr_dir, _ = _make_pair_dirs(tmp_path)
    _save(lr_dir / "onex2.png", _random_rgb(10, 12))
    dataset = SRDataset(hr_dir, scale=2, lr_dir=lr_dir, filename_tmpl="{}x2")
    with pytest.raises(DataError, match=r"onex2.png.*10x12.*scale 2.*20x26"):
        dataset[0]


def test_dataset_rejects_images_smaller_than_the_scale(tmp_path: Path) -> None:
    _save(tmp_path / "tiny.png", _random_rgb(3, 9))
    with pytest.raises(DataError, match=r"tiny.png.*too small.*0x8"):
        SRDataset(tmp_path, scale=4)[0]


def test_check_min_side_names_every_small_file_before_reading(tmp_path: Path) -> None:
    hr_dir, _, _ = _make_pair_dirs(tmp_path)
    dataset = SRDataset(hr_dir, scale=2)
    assert dataset.hr_sizes() == {str(hr_dir / "one.png"): (20, 26), str(hr_dir / "two.png"): (30, 16)}
    check_min_side(dataset, 16, "scoring")
    with pytest.raises(DataError, match=r"1 of 2 images are too small for scoring, which needs "
                                        r"sides of at least 17 .*two.png \(30x16\)"):
        check_min_side(dataset, 17, "scoring")
    pairs = [("a", _random_rgb(5, 5), _random_rgb(10, 10))]
    with pytest.raises(DataError, match=r"a \(10x10\)"):
        check_min_side(pairs, 11, "SSIM")
    (hr_dir / "broken.png").write_text("not an image")
    with pytest.raises(DataError, match="broken.png: cannot be read as an image"):
        check_min_side(SRDataset(hr_dir, scale=2), 1, "scoring")


def test_dataset_refuses_two_hr_files_of_one_stem(tmp_path: Path) -> None:
    hr_dir, _, _ = _make_pair_dirs(tmp_path)
    _save(hr_dir / "one.bmp", _random_rgb(8, 8))
    with pytest.raises(DataError, match=r"1 stems name several files \(e.g. one.bmp, one.png\)"):
        SRDataset(hr_dir, scale=2)


def test_set5_lr_folder_matches_on_the_fly_lr(shared_dir: Path) -> None:
    set5 = shared_dir / "data" / "Set5"
    from_folder = SRDataset(set5 / "HR", scale=4, lr_dir=set5 / "LR_bicubic" / "X4", filename_tmpl="{}x4")
    on_the_fly = SRDataset(set5 / "HR", scale=4)
    for (name_a, lr_a, hr_a), (name_b, lr_b, hr_b) in zip(from_folder, on_the_fly, strict=True):
        assert name_a == name_b
        assert np.array_equal(hr_a, hr_b) and np.array_equal(lr_a, lr_b)


# --- embedded images ---------------------------------------------------------------------


def test_embedded_splits_are_disjoint_colour_images() -> None:
    val = embedded_images("val")
    train = embedded_images("train")
    assert [name for name, _ in val] == ["astronaut", "coffee"]
    assert not {name for name, _ in val} & {name for name, _ in train}
    assert len(train) == 5
    for _, img in val + train:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    with pytest.raises(ValueError, match="unknown split"):
        embedded_images("test")


def test_export_embedded_writes_readable_pngs(tmp_path: Path) -> None:
    paths = export_embedded("val", tmp_path / "val")
    assert [p.name for p in paths] == ["astronaut.png", "coffee.png"]
    assert list_images(tmp_path / "val") == paths
    for (_, img), path in zip(embedded_images("val"), paths, strict=True):
        assert np.array_equal(read_image(path), img)


# --- patch sampler -----------------------------------------------------------------------


def _dihedral(img: np.ndarray) -> list[np.ndarray]:
    """The eight flips/transpositions of an HxWxC array."""
    variants = []
    for base in (img, img.transpose(1, 0, 2)):
        variants += [base, base[::-1], base[:, ::-1], base[::-1, ::-1]]
    return variants


def _kron_pair(height: int, width: int, scale: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    lr = _random_rgb(height, width, seed)
    return lr, np.kron(lr, np.ones((scale, scale, 1), dtype=np.uint8))


def _to_uint8_hwc(batch: torch.Tensor) -> np.ndarray:
    return np.round(batch.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def test_sampler_crops_stay_aligned_under_augmentation() -> None:
    scale, crop = 3, 5
    pairs = [("a", *_kron_pair(12, 15, scale, 1)), ("b", *_kron_pair(9, 11, scale, 2))]
    sampler = PatchSampler(pairs, scale=scale, crop_size=crop, batch_size=48, seed=0)
    lr_batch, hr_batch = sampler.sample()
    assert lr_batch.shape == (48, 3, crop, crop) and hr_batch.shape == (48, 3, crop * scale, crop * scale)
    assert lr_batch.dtype == torch.float32 and hr_batch.dtype == torch.float32
    seen = set()
    for lr_crop, hr_crop in zip(_to_uint8_hwc(lr_batch), _to_uint8_hwc(hr_batch), strict=True):
        assert np.array_equal(hr_crop, np.kron(lr_crop, np.ones((scale, scale, 1), dtype=np.uint8)))
        matches = [
            k
            for _, lr, _ in pairs
            for y in range(lr.shape[0] - crop + 1)
            for x in range(lr.shape[1] - crop + 1)
            for k, variant in enumerate(_dihedral(lr[y : y + crop, x : x + crop]))
            if np.array_equal(variant, lr_crop)
        ]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))


def test_sampler_is_deterministic_and_resumable() -> None:
    pairs = [_kron_pair(16, 16, 2, 3)]

    def make(seed: int) -> PatchSampler:
        return PatchSampler(pairs, scale=2, crop_size=4, batch_size=6, seed=seed)

    first, second, other = make(7), make(7), make(8)
    batch = first.sample()
    assert all(torch.equal(a, b) for a, b in zip(batch, second.sample(), strict=True))
    assert not torch.equal(batch[0], other.sample()[0])
    state = json.loads(json.dumps(first.state_dict()))  # plain, serialisable types
    expected = first.sample()
    resumed = make(123)
    resumed.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(expected, resumed.sample(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(first.sample(), next(iter(resumed)), strict=True))


def test_sampler_errors_name_the_image() -> None:
    lr, hr = _kron_pair(6, 10, 2, 4)
    with pytest.raises(DataError, match="small.*6x10.*crop size 8"):
        PatchSampler([("small", lr, hr)], scale=2, crop_size=8, batch_size=1, seed=0)
    with pytest.raises(DataError, match="pair 0.*6x10.*scale 3.*12x20"):
        PatchSampler([(lr, hr)], scale=3, crop_size=4, batch_size=1, seed=0)


def test_sampler_skips_images_smaller_than_the_crop(caplog: pytest.LogCaptureFixture) -> None:
    small_lr, small_hr = _kron_pair(6, 10, 2, 4)
    large_lr, large_hr = _kron_pair(12, 12, 2, 5)
    pairs = [("small", small_lr, small_hr), ("large", large_lr, large_hr)]
    with caplog.at_level("WARNING"):
        sampler = PatchSampler(pairs, scale=2, crop_size=8, batch_size=32, seed=0)
    assert "1 of 2 images" in caplog.text and "small" in caplog.text
    lr, _ = sampler.sample()
    crops = {tuple(c.flatten().tolist()) for c in lr}
    large = torch.from_numpy(large_lr.copy()).permute(2, 0, 1).float() / 255
    # every crop comes from the large image (some 8x8 window of it, up to flips)
    windows = [large[:, y:y + 8, x:x + 8] for y in range(5) for x in range(5)]
    variants = {tuple(t.flatten().tolist()) for w in windows
                for t in (w, w.flip(1), w.flip(2), w.transpose(1, 2), w.flip(1).flip(2),
                          w.flip(1).transpose(1, 2), w.flip(2).transpose(1, 2),
                          w.flip(1).flip(2).transpose(1, 2))}
    assert crops <= variants


def test_sampler_accepts_a_dataset(tmp_path: Path) -> None:
    hr_dir, lr_dir, _ = _make_pair_dirs(tmp_path)
    dataset = SRDataset(hr_dir, scale=2, lr_dir=lr_dir, filename_tmpl="{}x2")
    lr_batch, hr_batch = PatchSampler(dataset, scale=2, crop_size=6, batch_size=4, seed=0).sample()
    assert lr_batch.shape == (4, 3, 6, 6) and hr_batch.shape == (4, 3, 12, 12)
