"""Image files to pixel arrays at their full bit depth, upright: the decoder behind
:func:`srprune.data.read_image`.

Pillow decodes every format, except the samples it would cut to their high byte: 16-bit PNG
files (grey, grey + alpha, RGB, RGBA) go through Pillow's own PNG decoder asked for both bytes of
every sample, and TIFF files with more than one 16-bit sample per pixel through tifffile. Every
other Pillow mode is kept as stored, or expanded where it is an encoding of colours (bilevel to
0/255, palette to its RGBA entries); modes that need a colour conversion (CMYK, YCbCr, LAB...)
and 32-bit or float pixels are refused.

EXIF orientation (tag 274, which Pillow also reads from XMP; a TIFF's own tag for 16-bit
colour files) is applied exactly as ``PIL.ImageOps.exif_transpose`` applies it; a value outside
1..8 is refused, never ignored.
"""
from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION = 0x0112
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIFF_SIGNATURES = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF

# EXIF orientation -> the flips/rotations that make the image upright (exif_transpose's table)
_UPRIGHT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a),
}
# Pillow modes read as stored, and those that are expanded first
_KEPT_MODES = ("L", "LA", "RGB", "RGBA", "RGBX", "I;16", "I;16L", "I;16B")
_EXPANDED_MODES = {"1": "L", "P": "RGBA", "PA": "RGBA"}


class UnsupportedImage(ValueError):
    """A readable image file whose pixels srprune does not take (the message says why)."""


def read_pixels(path: str | Path) -> np.ndarray:
    """The upright pixels of an image file: HxW or HxWxC, uint8 or uint16 as stored."""
    pixels, orientation = _decode(Path(path))
    return upright(pixels, orientation)


def stored_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file as stored (before orientation), from its header."""
    path = Path(path)
    if _is_tiff(path):
        import tifffile

        with tifffile.TiffFile(path) as tiff:
            return tiff.pages.first.imagelength, tiff.pages.first.imagewidth
    with Image.open(path) as image:
        return image.height, image.width


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """``pixels`` turned as ``ImageOps.exif_transpose`` turns an image of this orientation."""
    if orientation not in _UPRIGHT:
        raise UnsupportedImage(f"EXIF orientation {orientation!r} is not one of 1..8, so the "
                               f"upright image is unknown; save an upright copy without the tag")
    return np.ascontiguousarray(_UPRIGHT[orientation](pixels))


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """(pixels as stored, EXIF orientation) of one file."""
    deep = _tiff16(path) if _is_tiff(path) else None
    if deep is not None:
        return deep
    with Image.open(path) as image:
        pixels = _png16(path) if image.format == "PNG" else None
        if pixels is None:
            pixels = _pillow_pixels(image)
        return pixels, image.getexif().get(ORIENTATION, 1)


def _pillow_pixels(image: Image.Image) -> np.ndarray:
    """Pixels of a Pillow image in one of the modes taken (see the module docstring)."""
    if image.mode in _EXPANDED_MODES:
        image = image.convert(_EXPANDED_MODES[image.mode])
    elif image.mode not in _KEPT_MODES:
        raise UnsupportedImage(f"pixel mode {image.mode} is not taken (8- or 16-bit grey, RGB "
                               f"or RGBA, or a palette); convert the file to RGB")
    pixels = np.asarray(image)
    return pixels.astype(pixels.dtype.newbyteorder("="), copy=False)


def _is_tiff(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(4) in TIFF_SIGNATURES


def _png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """(type, body) of every chunk of a PNG file's bytes."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        yield kind, data[pos + 8:pos + 8 + length]
        pos += 12 + length


def _png16(path: Path) -> np.ndarray | None:
    """HxWxC uint16 samples of a 16-bit PNG file; None for other bit depths.

    Pillow keeps only the high byte of 16-bit colour samples. Its PNG decoder (inflate and
    unfilter) is asked for the same data twice, once with a raw mode that keeps the high byte
    of every sample and once with one that keeps the low byte; grey (+ alpha) pixels, 2 or 4
    bytes, are decoded byte for byte as LA (RGBA) pixels and split.
    """
    chunks = list(_png_chunks(path.read_bytes()))
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if depth != 16:
        return None
    data = b"".join(body for kind, body in chunks if kind == b"IDAT")

    def inflate(mode: str, rawmode: str) -> np.ndarray:
        return np.asarray(Image.frombytes(mode, (width, height), data, "zip", rawmode, interlace))

    if colour in (0, 4):
        raw = inflate("LA", "LA") if colour == 0 else inflate("RGBA", "RGBA")
        high, low = raw[..., 0::2], raw[..., 1::2]
    else:
        mode = "RGB" if colour == 2 else "RGBA"
        high, low = inflate(mode, f"{mode};16B"), inflate(mode, f"{mode};16L")
    return high.astype(np.uint16) << 8 | low


def _tiff16(path: Path) -> tuple[np.ndarray, int] | None:
    """(HxWxC uint16 samples, orientation) of a TIFF file with several 16-bit samples per
    pixel, read by tifffile; None for the TIFF files Pillow decodes in full."""
    import tifffile

    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages.first
        if page.samplesperpixel == 1 or page.bitspersample <= 8:
            return None
        photometric, sampleformat = page.photometric, page.sampleformat
        if page.bitspersample != 16 or sampleformat != tifffile.SAMPLEFORMAT.UINT \
                or photometric not in (tifffile.PHOTOMETRIC.MINISBLACK, tifffile.PHOTOMETRIC.RGB):
            raise UnsupportedImage(f"{page.bitspersample}-bit {sampleformat.name} "
                                   f"{photometric.name} TIFF samples are not taken (8- or 16-bit "
                                   f"unsigned integer grey or RGB)")
        pixels = np.moveaxis(page.asarray(), page.axes.index("S"), -1)
        return pixels, int(page.tags.valueof(ORIENTATION, 1))
