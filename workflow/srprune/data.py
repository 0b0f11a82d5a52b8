"""Image data for super-resolution in BasicSR layout: reading, paired data sets, patches.

Reading (:func:`read_image`, the one image reader of srprune) always gives HxWx3 uint8 RGB,
upright (EXIF orientation applied as ``PIL.ImageOps.exif_transpose`` does; a tag outside 1..8
is refused); :mod:`srprune.decoding` decodes every file at its full bit depth:

* grayscale (HxW or HxWx1) is replicated to three channels;
* an alpha channel (grayscale + alpha, RGBA) is dropped, not composited: the colour values
  are kept as stored, whatever their opacity;
* every bit depth is scaled to 8 bits as ``round(v * 255 / (2**bits - 1))``: 16-bit samples
  (PNG and TIFF; grey, RGB, RGBA) as ``round(v / 257)`` (65535 -> 255), 1-, 2- and 4-bit grey
  exactly;
* palette images are expanded to their RGB entries; any other pixel type is an error.

Paired data sets (:class:`SRDataset`) follow BasicSR: the HR folder is ``dataroot_gt``, the
LR folder ``dataroot_lq``; for HR ``baby.png`` the LR file is
``filename_tmpl.format('baby')`` plus an image extension (``'{}x2'`` -> ``babyx2.png``).
HR images are modcropped to a multiple of the scale; without an LR folder the LR image is
made with MATLAB-compatible bicubic downscaling (:func:`srprune.imresize.imresize`).

Every failure caused by the data raises :class:`DataError` naming the file or folder.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import skimage.data
import torch

from srprune.decoding import UnsupportedImage, read_pixels, stored_size
from srprune.fileio import save_png
from srprune.imresize import imresize

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

T = TypeVar("T")

EMBEDDED_SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "stereo_motorcycle"),
    "val": ("astronaut", "coffee"),
}


class DataError(ValueError):
    """A data file or folder is missing, unreadable or unsuitable."""


def _to_rgb_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    """Normalise decoded pixels to HxWx3 uint8 (see the module docstring)."""
    if img.dtype == np.uint16:
        img = np.round(img / 257.0).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise DataError(f"{path}: unsupported pixel type {img.dtype} (expected 8- or 16-bit)")
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise DataError(f"{path}: unsupported image shape {img.shape}")
    if img.shape[2] in (1, 2):
        img = np.repeat(img[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as HxWx3 uint8 RGB; :class:`DataError` naming the file on failure."""
    path = Path(path)
    return _to_rgb_uint8(_from_file(path, read_pixels), path)


def _from_file(path: Path, decoder: Callable[[Path], T]) -> T:
    """``decoder(path)``, every failure a :class:`DataError` naming the file."""
    if not path.exists():
        raise DataError(f"{path}: image file does not exist")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        return decoder(path)
    except UnsupportedImage as exc:
        raise DataError(f"{path}: {exc}") from None
    except Exception as exc:  # the decoders raise many types (OSError, ValueError, SyntaxError...)
        raise DataError(f"{path}: cannot be read as an image ({type(exc).__name__}: {exc})") from exc


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    """Crop the bottom and right so that height and width are multiples of ``scale``."""
    height, width = img.shape[:2]
    return img[: height - height % scale, : width - width % scale]


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files (by extension, case-insensitive) directly inside ``folder``."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"{folder}: image folder does not exist")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def folder_digest(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` (hr/lr/filename_tmpl) with a checksum of each folder's image names and sizes."""
    out = dict(spec)
    for key in ("hr", "lr"):
        folder = spec.get(key)
        if folder and Path(folder).is_dir():
            listing = "\n".join(f"{p.name}:{p.stat().st_size}" for p in list_images(folder))
            out[f"{key}_files_sha256"] = hashlib.sha256(listing.encode()).hexdigest()
    return out


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 image -> 1x3xHxW float32 tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0).unsqueeze(0)


def _size(img: np.ndarray) -> str:
    """``HxW`` of an image, for messages."""
    return f"{img.shape[0]}x{img.shape[1]}"


class SRDataset:
    """Paired LR/HR images; items are ``(name, lr, hr)`` with HxWx3 uint8 arrays.

    ``hr_dir`` is BasicSR's ``dataroot_gt`` and ``lr_dir`` its ``dataroot_lq`` (None: make LR
    by MATLAB bicubic downscaling). Items are named by the HR file stem, so two HR files of one
    stem are refused. LR partners are found when the data set is built; images are read on
    access (:func:`check_min_side` checks their sizes first, from the file headers).
    """

    def __init__(
        self,
        hr_dir: str | Path,
        *,
        scale: int,
        lr_dir: str | Path | None = None,
        filename_tmpl: str = "{}",
    ) -> None:
        if scale < 1:
            raise ValueError(f"scale must be a positive integer, got {scale}")
        self.scale = scale
        check_filename_template(filename_tmpl)
        self.hr_paths = list_images(hr_dir)
        _refuse_shared_stems(self.hr_paths, Path(hr_dir))
        self.lr_paths: list[Path] | None = None
        if lr_dir is not None:
            lr_index = _index_by_stem(list_images(lr_dir))
            self.lr_paths = [_find_partner(hr, lr_index, Path(lr_dir), filename_tmpl) for hr in self.hr_paths]

    def __len__(self) -> int:
        return len(self.hr_paths)

    def __getitem__(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        hr_path = self.hr_paths[index]
        hr = modcrop(read_image(hr_path), self.scale)
        if min(hr.shape[:2]) < self.scale:
            raise DataError(f"{hr_path}: image too small ({_size(hr)} after modcrop; scale "
                            f"{self.scale} needs at least {self.scale} pixels per side)")
        if self.lr_paths is None:
            return hr_path.stem, imresize(hr, 1 / self.scale), hr
        lr_path = self.lr_paths[index]
        lr = read_image(lr_path)
        if (lr.shape[0] * self.scale, lr.shape[1] * self.scale) != hr.shape[:2]:
            raise DataError(
                f"{lr_path}: LR size {_size(lr)} times scale {self.scale} does not match the "
                f"modcropped HR size {_size(hr)} of {hr_path}"
            )
        return hr_path.stem, lr, hr

    def __iter__(self) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        return (self[i] for i in range(len(self)))

    def hr_sizes(self) -> dict[str, tuple[int, int]]:
        """``{HR file: (height, width) after modcrop}``, read from the file headers."""
        return {str(path): tuple(side - side % self.scale for side in _from_file(path, stored_size))
                for path in self.hr_paths}

    def tensors(self, index: int) -> tuple[str, torch.Tensor, torch.Tensor]:
        """Item ``index`` as ``(name, lr, hr)`` with 1x3xHxW float32 tensors in [0, 1]."""
        name, lr, hr = self[index]
        return name, to_tensor(lr), to_tensor(hr)


def _refuse_shared_stems(paths: list[Path], folder: Path) -> None:
    """Refuse HR files that would share a name (``a.png`` and ``a.jpg``)."""
    shared = [group for group in _index_by_stem(paths).values() if len(group) > 1]
    if shared:
        raise DataError(f"{folder}: images are named by their file stem, and {len(shared)} "
                        f"stems name several files (e.g. {', '.join(p.name for p in shared[0])}); "
                        f"keep one file per stem")


def check_filename_template(template: str) -> str:
    """``template`` if it holds exactly one ``{}`` (where the HR file stem goes)."""
    if not isinstance(template, str) or not template.count("{") == template.count("}") \
            == template.count("{}") == 1:
        raise DataError(f"filename_tmpl must hold exactly one '{{}}' for the HR file name "
                        f"(e.g. '{{}}x4'), got {template!r}")
    return template


def _index_by_stem(paths: list[Path]) -> dict[str, list[Path]]:
    """Group image paths by file stem."""
    index: dict[str, list[Path]] = {}
    for path in paths:
        index.setdefault(path.stem, []).append(path)
    return index


def _find_partner(hr_path: Path, lr_index: dict[str, list[Path]], lr_dir: Path, filename_tmpl: str) -> Path:
    """LR file for ``hr_path``: same extension preferred, any image extension accepted."""
    stem = filename_tmpl.format(hr_path.stem)
    candidates = lr_index.get(stem, [])
    for path in candidates:
        if path.suffix == hr_path.suffix:
            return path
    if candidates:
        return candidates[0]
    raise DataError(
        f"{hr_path}: no LR partner {lr_dir / (stem + hr_path.suffix)} (or another image extension) "
        f"in {lr_dir} (filename_tmpl {filename_tmpl!r})"
    )


def _load_embedded(name: str) -> np.ndarray:
    """One scikit-image sample image as HxWx3 uint8 (left view for the stereo pair)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = getattr(skimage.data, name)()
    if isinstance(img, tuple):
        img = img[0]
    return np.ascontiguousarray(img)


def embedded_images(split: str) -> list[tuple[str, np.ndarray]]:
    """Colour photographs shipped with scikit-image, as ``(name, HxWx3 uint8)``; no download.

    ``"val"``: astronaut (512x512, face, fabric) and coffee (400x600, textures), natural
    photographs held out from training. ``"train"``: chelsea (300x451, fur), rocket (427x640),
    immunohistochemistry (512x512, microscopy), hubble_deep_field (872x1000, astronomy) and
    the left view of stereo_motorcycle (500x741): natural photographs plus microscopy and
    astronomy textures for variety, about 1.9 Mpixel in all. Left out: retina (1411x1411,
    would double the training pixels with mostly smooth fundus and black border), colorwheel
    (synthetic), logo (RGBA graphic) and cat (the same photograph as chelsea).
    """
    if split not in EMBEDDED_SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(EMBEDDED_SPLITS)}")
    return [(name, _load_embedded(name)) for name in EMBEDDED_SPLITS[split]]


def export_embedded(split: str, folder: str | Path) -> list[Path]:
    """Write :func:`embedded_images` of ``split`` as ``<name>.png`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, img in embedded_images(split):
        path = folder / f"{name}.png"
        save_png(img, path)
        paths.append(path)
    return paths


class PatchSampler:
    """Random aligned LR/HR training crops with flips and transposition, reproducible by seed.

    ``pairs`` holds ``(name, lr, hr)`` items (e.g. an :class:`SRDataset`) or ``(lr, hr)``
    pairs of HxWx3 uint8 arrays; each batch draws images uniformly with replacement. An LR crop
    of ``crop_size`` at (y, x) pairs with the HR crop of ``crop_size * scale`` at
    (y * scale, x * scale).
    """

    def __init__(
        self,
        pairs: Iterable[Sequence[Any]],
        *,
        scale: int,
        crop_size: int,
        batch_size: int,
        seed: int | np.random.Generator,
    ) -> None:
        self.scale = scale
        self.crop_size = crop_size
        self.batch_size = batch_size
        checked = [_checked_pair(item, i, scale) for i, item in enumerate(pairs)]
        if not checked:
            raise DataError("PatchSampler needs at least one image pair")
        self.pairs = [(lr, hr) for _, lr, hr in checked if min(lr.shape[:2]) >= crop_size]
        small = [name for name, lr, _ in checked if min(lr.shape[:2]) < crop_size]
        if not self.pairs:
            name, lr, _ = checked[0]
            raise DataError(f"{name}: LR image {_size(lr)} is smaller than the crop size "
                            f"{crop_size}, and so is every other image ({len(checked)} in all); "
                            f"use a smaller crop size")
        if small:
            log.warning("%d of %d images have an LR side below the crop size %d and are skipped "
                        "(e.g. %s)", len(small), len(checked), crop_size, ", ".join(small[:3]))
        self.rng = np.random.default_rng(seed)

    def _crop(self) -> tuple[np.ndarray, np.ndarray]:
        """One random aligned, augmented LR/HR crop pair."""
        lr, hr = self.pairs[self.rng.integers(len(self.pairs))]
        c, s = self.crop_size, self.scale
        y = int(self.rng.integers(lr.shape[0] - c + 1))
        x = int(self.rng.integers(lr.shape[1] - c + 1))
        lr_crop = lr[y : y + c, x : x + c]
        hr_crop = hr[y * s : (y + c) * s, x * s : (x + c) * s]
        hflip, vflip, transpose = self.rng.random(3) < 0.5
        return _augment(lr_crop, hflip, vflip, transpose), _augment(hr_crop, hflip, vflip, transpose)

    def sample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: LR ``B x 3 x c x c`` and HR ``B x 3 x cs x cs`` float32 tensors in [0, 1]."""
        crops = [self._crop() for _ in range(self.batch_size)]
        lr = np.stack([pair[0] for pair in crops])
        hr = np.stack([pair[1] for pair in crops])
        return _batch_tensor(lr), _batch_tensor(hr)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.sample()

    def state_dict(self) -> dict[str, Any]:
        """The random state (plain Python types) for resuming."""
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a random state saved by :meth:`state_dict`."""
        self.rng.bit_generator.state = state["bit_generator"]


def _checked_pair(item: Sequence[Any], index: int, scale: int) -> tuple[str, np.ndarray, np.ndarray]:
    """Validate one ``(name, lr, hr)`` or ``(lr, hr)`` item and return ``(name, lr, hr)``."""
    name, lr, hr = item if len(item) == 3 else (f"pair {index}", *item)
    if (lr.shape[0] * scale, lr.shape[1] * scale) != hr.shape[:2]:
        raise DataError(f"{name}: LR size {_size(lr)} times scale {scale} does not match HR size {_size(hr)}")
    return name, lr, hr


def _augment(img: np.ndarray, hflip: bool, vflip: bool, transpose: bool) -> np.ndarray:
    """BasicSR ``augment``: horizontal flip, vertical flip, then height/width transposition."""
    if hflip:
        img = img[:, ::-1]
    if vflip:
        img = img[::-1]
    if transpose:
        img = img.transpose(1, 0, 2)
    return img


def _batch_tensor(batch: np.ndarray) -> torch.Tensor:
    """B x H x W x 3 uint8 -> B x 3 x H x W float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(batch.transpose(0, 3, 1, 2))).float().div_(255.0)


Pair = tuple[str, np.ndarray, np.ndarray]
EMBEDDED_PREFIX = "embedded:"


def load_pairs(hr: str | Path, scale: int, lr: str | Path | None = None,
               filename_tmpl: str = "{}") -> Sequence[Pair]:
    """``(name, lr, hr)`` uint8 items of a folder pair, or of ``embedded:<split>`` images."""
    if str(hr).startswith(EMBEDDED_PREFIX):
        pairs = []
        for name, img in embedded_images(str(hr)[len(EMBEDDED_PREFIX):]):
            img = modcrop(img, scale)
            pairs.append((name, imresize(img, 1 / scale), img))
        return pairs
    return SRDataset(hr, scale=scale, lr_dir=lr, filename_tmpl=filename_tmpl)


def check_min_side(pairs: Sequence[Pair], side: int, purpose: str) -> None:
    """Refuse, before any image is used, the images whose modcropped HR side is below ``side``,
    naming each with its file and size (an :class:`SRDataset` is checked from its file headers)."""
    sizes = pairs.hr_sizes() if isinstance(pairs, SRDataset) else \
        {name: hr.shape[:2] for name, _, hr in pairs}
    small = [f"{source} ({h}x{w})" for source, (h, w) in sizes.items() if min(h, w) < side]
    if small:
        raise DataError(f"{len(small)} of {len(sizes)} images are too small for {purpose}, which "
                        f"needs sides of at least {side} pixels after modcrop: "
                        f"{', '.join(small[:5])}{', ...' if len(small) > 5 else ''}")


def pair_names(pairs: Sequence[Pair]) -> list[str]:
    """The item names of ``pairs``, without reading any image."""
    if isinstance(pairs, SRDataset):
        return [path.stem for path in pairs.hr_paths]
    return [name for name, _, _ in pairs]
