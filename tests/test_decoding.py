"""The one image reader: every bit depth scaled alike, EXIF orientation applied or refused."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from srprune.data import DataError, read_image

ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2))
PNG_COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # samples per pixel -> PNG colour type
# 255 and 32767 tell rounding (v / 257: 1, 127) from truncation (v >> 8: 0, 127) and 383 too (1)
EDGE_VALUES = (0, 128, 255, 383, 32767, 32896, 65407, 65535)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _paeth(left: np.ndarray, up: np.ndarray, upleft: np.ndarray) -> np.ndarray:
    guess = left + up - upleft
    d_left, d_up, d_upleft = abs(guess - left), abs(guess - up), abs(guess - upleft)
    return np.where((d_left <= d_up) & (d_left <= d_upleft), left,
                    np.where(d_up <= d_upleft, up, upleft))


def _filtered(rows: list[np.ndarray], bpp: int) -> bytes:
    """PNG scanlines, the five filter types in turn (Sub, Average and Paeth depend on ``bpp``)."""
    out, up = [], np.zeros_like(rows[0])
    for i, row in enumerate(rows):
        left = np.concatenate([np.zeros(bpp, row.dtype), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, row.dtype), up[:-bpp]])
        prediction = (0, left, up, (left + up) // 2, _paeth(left, up, upleft))[i % 5]
        out.append(bytes([i % 5]) + ((row - prediction) % 256).astype(np.uint8).tobytes())
        up = row
    return b"".join(out)


def write_png16(path: Path, samples: np.ndarray, interlace: bool = False) -> Path:
    """A 16-bit PNG of HxWxC samples (C = 1..4), filtered and optionally Adam7-interlaced
    (Pillow cannot write 16-bit colour PNG files)."""
    height, width, channels = samples.shape
    data = samples.astype(">u2")
    scanlines = b""
    for x0, y0, dx, dy in ADAM7 if interlace else ((0, 0, 1, 1),):
        part = data[y0::dy, x0::dx]
        if part.size:
            rows = [np.frombuffer(row.tobytes(), np.uint8).astype(np.int32) for row in part]
            scanlines += _filtered(rows, 2 * channels)
    header = struct.pack(">IIBBBBB", width, height, 16, PNG_COLOUR_TYPES[channels], 0, 0,
                         int(interlace))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
                     + _chunk(b"IDAT", zlib.compress(scanlines)) + _chunk(b"IEND", b""))
    return path


def write_tiff16(path: Path, samples: np.ndarray, planar: bool = False) -> Path:
    channels = samples.shape[2]
    colour = "rgb" if channels >= 3 else "minisblack"
    extra = [2] if channels in (2, 4) else []
    if channels == 1:
        data = samples[..., 0]
    else:
        data = np.moveaxis(samples, -1, 0) if planar else samples
    tifffile.imwrite(path, data, photometric=colour, extrasamples=extra,
                     planarconfig="separate" if planar else None)
    return path


def _samples(channels: int, seed: int = 0) -> np.ndarray:
    """9x11xC uint16 samples: random, with the edge values in the first row."""
    samples = np.random.default_rng(seed).integers(0, 65536, (9, 11, channels)).astype(np.uint16)
    samples[0, :len(EDGE_VALUES)] = np.array(EDGE_VALUES)[:, None]
    return samples


def _expected(samples: np.ndarray) -> np.ndarray:
    """round(v / 257) of the colour samples, grey replicated, alpha dropped."""
    colour = samples[..., :3] if samples.shape[2] >= 3 else np.repeat(samples[..., :1], 3, 2)
    return np.round(colour / 257).astype(np.uint8)


WRITERS_16 = {
    "png": lambda path, s: write_png16(path.with_suffix(".png"), s),
    "png-interlaced": lambda path, s: write_png16(path.with_suffix(".png"), s, interlace=True),
    "tiff": lambda path, s: write_tiff16(path.with_suffix(".tif"), s),
    "tiff-planar": lambda path, s: write_tiff16(path.with_suffix(".tif"), s, planar=True),
}


@pytest.mark.parametrize("channels", [1, 2, 3, 4], ids=["grey", "grey-alpha", "rgb", "rgba"])
@pytest.mark.parametrize("writer", sorted(WRITERS_16))
def test_16_bit_samples_are_rounded_not_truncated(tmp_path, writer, channels):
    samples = _samples(channels)
    path = WRITERS_16[writer](tmp_path / "im", samples)
    assert np.array_equal(read_image(path), _expected(samples))


def test_the_png_writer_is_valid_and_pillow_alone_truncates(tmp_path):
    """Pillow reads these files, and keeps only the high byte of their colour samples."""
    samples = _samples(3)
    pillow = np.asarray(Image.open(write_png16(tmp_path / "rgb.png", samples)))
    assert np.array_equal(pillow, (samples >> 8).astype(np.uint8))
    grey = np.asarray(Image.open(write_png16(tmp_path / "g.png", samples[..., :1], True)))
    assert np.array_equal(grey, samples[..., 0])


MODES_8_BIT = {"RGB": 3, "RGBA": 4, "L": 1, "LA": 2, "P": 3, "1": 1}  # Pillow mode -> channels


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("mode", sorted(MODES_8_BIT))
def test_8_bit_and_fewer_bits_are_kept_exactly(tmp_path, mode, suffix):
    array = np.random.default_rng(1).integers(0, 256, (9, 11, MODES_8_BIT[mode]), dtype=np.uint8)
    image = Image.fromarray(array[..., 0] if MODES_8_BIT[mode] == 1 else array)
    path = tmp_path / f"im{suffix}"
    (image.convert(mode) if mode in ("P", "1") else image).save(path)
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(read_image(path), expected)


def test_palette_with_transparency_keeps_the_palette_colours(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    image = Image.fromarray(rgb).convert("P")
    image.save(tmp_path / "p.png", transparency=int(np.asarray(image)[0, 0]))
    expected = np.asarray(image.convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "p.png"), expected)


@pytest.mark.parametrize("writer", sorted(WRITERS_16))
def test_8_and_16_bit_copies_of_one_image_read_the_same(tmp_path, writer):
    rgb = np.random.default_rng(3).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "eight.png")
    sixteen = WRITERS_16[writer](tmp_path / "sixteen", rgb.astype(np.uint16) * 257)
    assert np.array_equal(read_image(sixteen), read_image(tmp_path / "eight.png"))


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_exif_transpose(tmp_path, orientation, suffix):
    rgb = np.random.default_rng(4).integers(0, 256, (5, 8, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"photo{suffix}"
    Image.fromarray(rgb).save(path, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    assert np.array_equal(read_image(path), expected)
    assert read_image(path).shape[:2] == ((8, 5) if orientation >= 5 else (5, 8))


def test_16_bit_tiff_orientation_is_applied(tmp_path):
    samples = _samples(3)
    tifffile.imwrite(tmp_path / "o.tif", samples, photometric="rgb",
                     extratags=[(0x0112, "H", 1, 6, True)])
    assert np.array_equal(read_image(tmp_path / "o.tif"), np.rot90(_expected(samples), -1))


@pytest.mark.parametrize("orientation", [0, 9])
def test_unknown_orientation_is_refused(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.new("RGB", (4, 3)).save(tmp_path / "odd.png", exif=exif)
    with pytest.raises(DataError, match=rf"odd.png: EXIF orientation {orientation} is not one"):
        read_image(tmp_path / "odd.png")


def test_modes_that_need_a_colour_conversion_are_refused(tmp_path):
    Image.new("CMYK", (4, 3)).save(tmp_path / "cmyk.jpg")
    with pytest.raises(DataError, match="cmyk.jpg: pixel mode CMYK is not taken"):
        read_image(tmp_path / "cmyk.jpg")
    Image.new("F", (4, 3)).save(tmp_path / "float.tif")
    with pytest.raises(DataError, match="float.tif: pixel mode F is not taken"):
        read_image(tmp_path / "float.tif")
    tifffile.imwrite(tmp_path / "float3.tif", np.zeros((3, 4, 3), np.float32), photometric="rgb")
    with pytest.raises(DataError, match="float3.tif: 32-bit IEEEFP RGB TIFF samples are not"):
        read_image(tmp_path / "float3.tif")
