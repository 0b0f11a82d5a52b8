"""Registry of model architectures: one clear way to build a model from a name plus config."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from .catanet import CATANet, CATANetConfig, PLAIN_STATE_HINT, infer_config as catanet_infer_config
from .swinir import SwinIR, SwinIRConfig, infer_config as swinir_infer_config


@dataclass(frozen=True)
class Arch:
    """How to build an architecture and read its config off a state dict."""

    build: Callable[..., nn.Module]
    config_class: type
    infer_config: Callable[..., dict[str, Any]]
    inferable: tuple[str, ...]
    shape_hint: str = ""  # added to the error when a file that does not describe itself misfits


ARCHS: dict[str, Arch] = {
    "catanet": Arch(
        build=lambda config: CATANet(CATANetConfig.from_dict(config)),
        config_class=CATANetConfig,
        infer_config=catanet_infer_config,
        inferable=("dim", "block_num", "qk_dim", "mlp_dim", "num_tokens", "upscale"),
        shape_hint=PLAIN_STATE_HINT,
    ),
    "swinir": Arch(
        build=lambda config: SwinIR(SwinIRConfig.from_dict(config)),
        config_class=SwinIRConfig,
        infer_config=swinir_infer_config,
        inferable=("embed_dim", "depths", "num_heads", "window_size", "img_size", "mlp_ratio",
                   "upscale", "layer_heads", "layer_mlp"),
    ),
}


def get_arch(name: str) -> Arch:
    try:
        return ARCHS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHS)}") from None


def create_model(arch: str = "catanet", **config: Any) -> nn.Module:
    """Build an architecture by name; unspecified hyper-parameters take their defaults."""
    return get_arch(arch).build(config)


def model_config(model: nn.Module) -> dict[str, Any]:
    """The full configuration a registered model was built from (plain types)."""
    return model.cfg.to_dict()


def arch_name(model: nn.Module) -> str:
    for name, arch in ARCHS.items():
        if isinstance(getattr(model, "cfg", None), arch.config_class):
            return name
    raise ValueError(f"{type(model).__name__} is not a registered architecture")


__all__ = ["ARCHS", "Arch", "CATANet", "CATANetConfig", "SwinIR", "SwinIRConfig", "arch_name",
           "create_model", "get_arch", "model_config"]
