"""Atomic writes: a temporary file beside the target, then a rename, so no half artifact remains."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


class OutputPathError(ValueError):
    """An output path that cannot be written."""


def check_output_path(path: str | os.PathLike, folder: bool = False) -> Path:
    """``path`` if a file (``folder``: a folder) can be written there; checked before any work.

    Refused: ``path`` exists as the other kind; the nearest existing folder above it is a file
    (``x.txt/out.json``) or not writable (a probe file is made and removed). Missing folders
    above it are fine: writes make them.
    """
    path = Path(path)
    want, other = ("folder", "file") if folder else ("file", "folder")
    if path.exists() and path.is_dir() != folder:
        raise OutputPathError(f"{path} is a {other}; give a {want} path")
    base = path if path.is_dir() else _existing_ancestor(path)
    if not base.is_dir():
        raise OutputPathError(f"cannot write {path}: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".srprune-probe.", dir=base)
    except OSError as err:
        raise OutputPathError(f"cannot write {path}: {base} is not writable "
                              f"({err.strerror})") from None
    os.close(fd)
    os.unlink(probe)
    return path


def _existing_ancestor(path: Path) -> Path:
    """The nearest folder (or file) above ``path`` that exists."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_json(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def save_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_png(img: np.ndarray, path: str | os.PathLike) -> None:
    """Write a uint8 HxWx3 (or HxW) image as PNG."""
    from PIL import Image

    if img.dtype != np.uint8:
        raise ValueError(f"{path}: PNG images are written from uint8 arrays, got {img.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
