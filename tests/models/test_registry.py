"""One registration per architecture: nothing outside an architecture's own modules imports it,
and a new architecture registered once works with loading, MACs and the pruning adapter."""
from __future__ import annotations

import ast
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import srprune
from srprune import complexity
from srprune.checkpoint import CheckpointError, load_model
from srprune.models import ARCHS, Arch, create_model, get_arch, register_arch, scale_of
from srprune.pruning.adapter import Adapter, UnitGroup
from srprune.pruning.registry import ADAPTERS, adapter_for, register_adapter

PACKAGE = Path(srprune.__file__).parent


def _own(module: Path, arch: str) -> bool:
    """``models/<arch>.py``, ``models/<arch>_*.py`` or ``pruning/<arch>.py``."""
    rel = module.relative_to(PACKAGE)
    return len(rel.parts) == 2 and (
        (rel.parts[0] == "models" and (rel.stem == arch or rel.stem.startswith(arch + "_")))
        or (rel.parts[0] == "pruning" and rel.stem == arch))


def _imported(module: Path) -> list[str]:
    """Every module name an ``import`` or ``from ... import`` of ``module`` names (any depth)."""
    names = []
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names += [f"{node.module or ''}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_no_module_imports_another_architecture(arch):
    offenders = [f"{m.relative_to(PACKAGE)}: {name}" for m in sorted(PACKAGE.rglob("*.py"))
                 if not _own(m, arch)
                 for name in _imported(m) if arch in name.lower().split(".")
                 or any(part.startswith(arch + "_") for part in name.lower().split("."))]
    assert not offenders, f"{arch} is imported outside its own modules: {offenders}"


def test_every_architecture_is_discovered_with_its_adapter():
    assert "catanet" in ARCHS
    for name in ARCHS:
        model = create_model(name) if name != "catanet" else create_model(
            name, block_num=1, patch_size=[8], num_tokens=[4], group_size=[8], n_iters=[1])
        assert type(adapter_for(model)) is ADAPTERS[name]
        assert isinstance(scale_of(model), int)
    with pytest.raises(ValueError, match="unknown architecture 'nope'"):
        get_arch("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_arch(ARCHS["catanet"])


# --------------------------------------------------------------------------- a new architecture
@dataclass
class ToyConfig:
    width: int = 4
    hidden: int = 6
    scale: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


class Toy(nn.Module):
    """conv -> hidden neurons (maskable) -> conv -> pixel shuffle."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        self.cfg = cfg
        self.head = nn.Conv2d(3, cfg.hidden, 3, padding=1)
        self.tail = nn.Conv2d(cfg.hidden, 3 * cfg.scale ** 2, 3, padding=1)
        self.mask: Tensor | None = None

    @property
    def scale(self) -> int:
        return self.cfg.scale

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.head(x))
        if self.mask is not None:
            h = h * self.mask.view(-1, self.cfg.hidden, 1, 1) if self.mask.dim() == 1 else \
                h * self.mask[:, :, None, None]
        return F.pixel_shuffle(self.tail(h), self.cfg.scale)


def toy_macs(cfg: ToyConfig, lr_size: tuple[int, int]) -> dict:
    n = lr_size[0] * lr_size[1]
    layers = {"head": n * 3 * cfg.hidden * 9, "tail": n * cfg.hidden * 3 * cfg.scale ** 2 * 9}
    return {"total": sum(layers.values()), "per_module": dict(layers), "per_layer": layers}


class ToyAdapter(Adapter):
    """Only what is specific to the model: the base class gives sizes, params, MACs, rebuild."""

    def groups(self, model: Toy) -> list[UnitGroup]:
        return [UnitGroup("hidden", "neuron", 0, model.cfg.hidden, 0)]

    def set_masks(self, model: Toy, masks: dict[str, Tensor] | None) -> None:
        model.mask = (masks or {}).get("hidden")

    def trajectory(self, model: Toy, x: Tensor) -> tuple[list[Tensor], Tensor]:
        y = model(x)
        return [y.flatten(2).transpose(1, 2)], y

    def local_layers(self, model: Toy, cache: Tensor) -> list[Tensor]:
        return self.trajectory(model, cache)[0]

    def slices(self, model: Toy, group: UnitGroup) -> list[tuple[str, int, int]]:
        return [("head.weight", 0, 1), ("head.bias", 0, 1), ("tail.weight", 1, 1)]

    def block_count(self, model: Toy) -> int:
        return 1

    def enter(self, model: Toy, x: Tensor) -> Tensor:
        return x

    def run_block(self, model: Toy, i: int, stream: Tensor) -> Tensor:
        return model(stream)

    def leave(self, model: Toy, x: Tensor, stream: Tensor) -> Tensor:
        return stream

    def block_of(self, weight: str) -> int:
        return 0

    def narrowed_config(self, model: Toy, kept: dict[str, int]) -> ToyConfig:
        return ToyConfig(model.cfg.width, kept.get("hidden", model.cfg.hidden), model.cfg.scale)


def _infer(state: dict[str, Tensor], width: int = ToyConfig.width) -> dict:
    hidden = state["head.weight"].shape[0]
    return {"width": width, "hidden": hidden,
            "scale": int((state["tail.weight"].shape[0] // 3) ** 0.5)}


@pytest.fixture
def toy():
    """The toy architecture and its adapter, registered for one test."""
    register_arch(Arch(name="toy", config_class=ToyConfig,
                       build=lambda config: Toy(ToyConfig(**config)), infer_config=_infer,
                       inferable=("hidden", "scale"), macs=toy_macs, hidden={"width": 4}))
    register_adapter("toy")(ToyAdapter)
    yield
    ARCHS.pop("toy")
    ADAPTERS.pop("toy")


def test_a_registered_architecture_loads_counts_and_prunes(toy, tmp_path):
    model = create_model("toy", hidden=6, scale=3)
    assert scale_of(model) == 3
    srprune.save_model(model, tmp_path / "toy.pth")
    assert load_model(tmp_path / "toy.pth").cfg == model.cfg          # self-describing
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    plain = load_model(tmp_path / "plain.pth", arch="toy", width=7)   # hidden setting given
    assert plain.cfg == ToyConfig(7, 6, 3)
    with pytest.raises(CheckpointError, match="is a toy checkpoint, not catanet"):
        load_model(tmp_path / "toy.pth", arch="catanet")
    assert complexity.analytic_macs(model, (5, 4)) == toy_macs(model.cfg, (5, 4))["total"]
    assert complexity.complexity_report(model)["lr_size"] == [240, 426]  # 720p output at x3

    adapter = adapter_for(model)
    masks = {"hidden": torch.tensor([1.0, 0, 1, 1, 0, 1])}
    small = adapter.rebuild(model, masks)
    assert small.cfg.hidden == 4 and adapter.params(model, {"hidden": 4}) == sum(
        p.numel() for p in small.parameters())
    assert adapter.macs(model, {"hidden": 4}, (5, 4)) == toy_macs(small.cfg, (5, 4))["total"]
    assert adapter.reference_lr_size(model) == (240, 426)
    x = torch.rand(2, 3, 5, 4)
    with torch.no_grad():
        adapter.set_masks(model, masks)
        expected = model(x)
        adapter.set_masks(model, None)
        torch.testing.assert_close(small(x), expected)
        feats, out = adapter.run_from(model, adapter.cache(model, x),
                                      adapter.groups(model)[0], torch.stack([masks["hidden"]] * 3))
    assert out.shape[0] == 6 and torch.allclose(out[2:4], expected, atol=1e-6)
    assert len(feats) == 1
