"""The tensor-op token order equals torch's CPU sort, which is the order the authors' outputs need."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from srprune.checkpoint import load_model
from srprune.models import catanet
from srprune.models.catanet_sort import depth_limit, introsort_order, token_order


def owners(seed: int) -> list[torch.Tensor]:
    """Random rows with many ties: uniform keys, and spatially clustered keys with noise."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(60):
        b, n, k = (int(torch.randint(lo, hi, (1,), generator=gen)) for lo, hi in ((1, 4), (1, 3000), (1, 130)))
        uniform = torch.randint(0, k, (b, n), generator=gen)
        runs = (torch.arange(n) * k // n).expand(b, n)
        noisy = torch.where(torch.rand(b, n, generator=gen) < 0.3, uniform, runs)
        rows += [uniform, noisy]
    return rows


def test_introsort_order_is_torch_cpu_sort():
    for owner in owners(0):
        assert torch.equal(introsort_order(owner), owner.argsort(dim=-1)), owner.shape


def test_torch_sort_is_not_stable_here():
    """Otherwise the test above would not tell the two orders apart."""
    differ = [o for o in owners(1) if not torch.equal(o.argsort(dim=-1), o.argsort(dim=-1, stable=True))]
    assert len(differ) > 20


def test_depth_limit_is_twice_floor_log2():
    sizes = list(range(1, 3000)) + [2 ** k + d for k in range(12, 40) for d in (-1, 0, 1)]
    assert [int(depth_limit(n)) for n in sizes] == [2 * (n.bit_length() - 1) for n in sizes]


def test_token_order_is_torch_sort_outside_export():
    owner = owners(2)[1]
    assert torch.equal(token_order(owner), owner.argsort(dim=-1))


def test_real_model_owners(shared_dir, monkeypatch):
    """On the third-party x4 model and Set5 crops, every TAB's order is torch's."""
    model = load_model(shared_dir / "weights/catanet_x4_third_party.pth")
    seen = []

    def checked(owner):
        expected = owner.argsort(dim=-1)
        seen.append(torch.equal(introsort_order(owner), expected))
        return expected

    monkeypatch.setattr(catanet, "token_order", checked)
    for path in sorted((shared_dir / "data/Set5/LR_bicubic/X4").glob("*.png"))[:3]:
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)[:61, :77] / 255
        with torch.no_grad():
            model(torch.from_numpy(image).permute(2, 0, 1)[None].contiguous())
    assert len(seen) == 3 * 8 and all(seen)
