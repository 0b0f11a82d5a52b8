"""Shared pytest fixtures."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ``../shared`` folder next to the repository; skip when it is absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared"
    if not path.is_dir():
        pytest.skip(f"shared material not found at {path} (only present in CI and development checkouts)")
    return path


@pytest.fixture(scope="session")
def make_images():
    """Factory: write ``n`` random RGB PNG images of ``shape`` (H, W) into a new folder."""
    import numpy as np
    import skimage.io

    def make(folder: Path, n: int, shape: tuple[int, int], seed: int = 0) -> Path:
        folder.mkdir(parents=True)
        rng = np.random.default_rng(seed)
        for i in range(n):
            img = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
            skimage.io.imsave(folder / f"im{i}.png", img, check_contrast=False)
        return folder

    return make
