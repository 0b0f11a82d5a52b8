"""What every pruning adapter must do, checked for every registered architecture (at the tiny
config it registers) and for the test-only ViT of vit_adapter.py: a mask is exactly the rebuilt
(narrower) model, zeroing equals masking, per-sample masks equal one run per sample, MACs and
parameters are those of the rebuilt model, and the trajectory restarts agree with a full run.

What the spec of one architecture says a unit is (its slices written out by hand) stays in
test_adapter_<arch>.py; a new architecture needs nothing here beyond its registered ``tiny``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import Tensor, nn

from srprune.complexity import macs_full
from srprune.models import ARCHS, create_model
from srprune.pruning.adapter import (UNIT_KINDS_DEFAULT, Adapter, full_kept, groups_of_kinds,
                                     kept_counts, masked)
from srprune.pruning.registry import adapter_for
from vit_adapter import TinyViT, TinyViTAdapter, ViTConfig

SIZES = [(12, 16), (11, 10)]  # LR inputs: none a multiple of every window or patch


@dataclass
class Case:
    """A model at a tiny config, its adapter, and the LR sizes it takes."""

    model: nn.Module
    adapter: Adapter
    sizes: list[tuple[int, int]]

    def x(self, batch: int = 2, seed: int = 0, size: int = 0) -> Tensor:
        return torch.rand(batch, 3, *self.sizes[size], generator=torch.Generator().manual_seed(seed))

    def groups(self):
        return groups_of_kinds(self.adapter.groups(self.model), UNIT_KINDS_DEFAULT)


def trained_looking(model: nn.Module, seed: int, x: Tensor) -> nn.Module:
    """Seeded weight noise (outputs of order 1, attention far from uniform), then one training
    forward so that state set on first use (CATANet's token centres) is set; eval mode."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        model.train()(x)
    return model.eval()


def registered(name: str) -> Callable[[], Case]:
    def make() -> Case:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = create_model(name, **ARCHS[name].tiny)
        case = Case(model, adapter_for(model), SIZES)
        trained_looking(model, 1, case.x())
        return case
    return make


def vit() -> Case:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = TinyViT(ViTConfig())
    case = Case(model, TinyViTAdapter(), [(8, 12), (10, 6)])  # multiples of its patch
    trained_looking(model, 1, case.x())
    return case


FACTORIES = {**{name: registered(name) for name in sorted(ARCHS)}, "test-vit": vit}


@pytest.fixture(scope="module", params=sorted(FACTORIES))
def case(request) -> Case:
    return FACTORIES[request.param]()


def random_masks(case: Case, seed: int, empty_first: bool = False) -> dict[str, Tensor]:
    """0/1 masks of every head and neuron group; ``empty_first``: the first group of each kind
    keeps nothing."""
    gen = torch.Generator().manual_seed(seed)
    masks, emptied = {}, set()
    for g in case.groups():
        masks[g.name] = (torch.rand(g.count, generator=gen) < 0.6).float()
        if empty_first and g.kind not in emptied:
            masks[g.name].zero_()
            emptied.add(g.kind)
    return masks


MASKS = [(0, False), (1, True), (2, False)]


def run(case: Case, masks: dict[str, Tensor] | None, x: Tensor) -> Tensor:
    with torch.no_grad(), masked(case.adapter, case.model, masks or {}):
        return case.model(x)


def test_every_architecture_registers_a_tiny_config_with_every_unit_kind():
    for name, arch in ARCHS.items():
        assert arch.tiny, f"{name} registers no tiny config"
        model = create_model(name, **arch.tiny)
        assert {g.kind for g in adapter_for(model).groups(model)} >= {"head", "neuron"}, name
        assert sum(p.numel() for p in model.parameters()) < 20_000, name


@pytest.mark.parametrize("seed, empty", MASKS)
def test_a_mask_is_the_rebuilt_model(case, seed, empty):
    masks = random_masks(case, seed, empty)
    case.adapter.check_masks(case.model, masks)
    small = case.adapter.rebuild(case.model, masks)
    for size in range(len(case.sizes)):
        x = case.x(size=size)
        out = run(case, masks, x)
        with torch.no_grad():
            assert (out - small(x)).abs().max().item() <= 1e-5, size
            assert (out - case.model(x)).abs().max().item() > 1e-3, size  # the masks matter
    with torch.no_grad():
        assert torch.equal(run(case, None, x), case.model(x))  # masked() left no mask behind


def test_keeping_every_unit_changes_nothing(case):
    x = case.x()
    masks = {g.name: torch.ones(g.count) for g in case.groups()}
    with torch.no_grad():
        assert (run(case, masks, x) - case.model(x)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("seed, empty", MASKS)
def test_zeroing_equals_masking_and_writing_back_the_rebuilt_model(case, seed, empty):
    masks, x = random_masks(case, seed, empty), case.x()
    zeroed = copy.deepcopy(case.model)
    case.adapter.zero_units(zeroed, masks)
    with torch.no_grad():
        assert (zeroed(x) - run(case, masks, x)).abs().max().item() <= 1e-5
    restored = copy.deepcopy(case.model)
    case.adapter.write_back(restored, case.adapter.rebuild(case.model, masks), masks)
    for key, value in zeroed.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key


def test_per_sample_masks_equal_one_run_per_sample(case):
    x = case.x(batch=3, seed=1)
    gen = torch.Generator().manual_seed(2)
    masks = {g.name: (torch.rand(3, g.count, generator=gen) < 0.6).float() for g in case.groups()}
    for mask in masks.values():
        mask[0] = 1.0  # sample 0 keeps everything
    batched = run(case, masks, x)
    for b in range(3):
        alone = run(case, {k: v[b] for k, v in masks.items()}, x[b:b + 1])
        assert (batched[b:b + 1] - alone).abs().max().item() <= 1e-5, b
    with torch.no_grad():
        assert (batched[0] - case.model(x[:1])[0]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("seed, empty", MASKS)
def test_macs_and_params_are_those_of_the_rebuilt_model(case, seed, empty):
    masks = random_masks(case, seed, empty)
    small = case.adapter.rebuild(case.model, masks)
    kept = kept_counts(masks)
    for size in [*case.sizes, case.adapter.reference_lr_size(case.model)]:
        assert case.adapter.macs(case.model, kept, size) == macs_full(small, size)["total"], size
    full = full_kept(case.adapter.groups(case.model))
    assert case.adapter.macs(case.model, full, case.sizes[0]) == \
        macs_full(case.model, case.sizes[0])["total"]
    assert case.adapter.params(case.model, kept) == sum(p.numel() for p in small.parameters())


def test_restarts_follow_the_trajectory(case):
    """run_from a group's layer with its masks equals the masked model; local_layers equal the
    trajectory (what OPTIN's exact scorer relies on)."""
    x = case.x()
    with torch.no_grad():
        feats, out = case.adapter.trajectory(case.model, x)
        cache = case.adapter.cache(case.model, x)
        for got, want in zip(case.adapter.local_layers(case.model, cache), feats, strict=True):
            assert torch.allclose(got, want, atol=1e-6)
        for group in case.groups():
            masks = torch.ones(2, group.count)
            masks[1, 0] = 0
            later, output = case.adapter.run_from(case.model, cache, group, masks)
            assert len(later) == len(feats) - group.layer
            assert torch.allclose(output[:2], out, atol=1e-5), group.name  # variant 0: all kept
            alone = run(case, {group.name: masks[1]}, x)
            assert torch.allclose(output[2:], alone, atol=1e-5), group.name


@pytest.mark.parametrize("size", [0, 1])
def test_the_compensation_blocks_make_up_the_forward(case, size):
    """enter, every run_block in turn and leave give the model's output, masked or not (what
    the compensation's streams and its output rely on)."""
    x = case.x(size=size)
    group = case.groups()[0]
    mask = torch.ones(group.count)
    mask[0] = 0
    for masks in ({}, {group.name: mask}):
        with torch.no_grad(), masked(case.adapter, case.model, masks):
            stream = case.adapter.enter(case.model, x)
            for i in range(case.adapter.block_count(case.model)):
                stream = case.adapter.run_block(case.model, i, stream)
            assert torch.allclose(case.adapter.leave(case.model, x, stream), case.model(x),
                                  atol=1e-6)


def test_magnitudes_and_mask_errors(case):
    groups = case.groups()
    for g in groups:
        magnitude = case.adapter.unit_magnitude(case.model, g)
        assert magnitude.shape == (g.count,) and bool((magnitude > 0).all()), g.name
    with pytest.raises(ValueError, match="unknown group"):
        case.adapter.check_masks(case.model, {"no.such.group": torch.ones(2)})
    with pytest.raises(ValueError, match="must have shape"):
        case.adapter.check_masks(case.model, {groups[0].name: torch.ones(groups[0].count + 1)})
