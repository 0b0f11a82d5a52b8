"""Reading and writing checkpoints, safely.

Every file is read with ``torch.load(..., weights_only=True)``: a file that needs arbitrary
unpickling is refused before anything in it runs. Accepted layouts:

* srprune checkpoints: ``{'params': state_dict, 'arch': name, 'config': {...}, 'meta': {...}}``
  with only plain types, self-describing (nothing else is needed to rebuild the model) and still
  readable by BasicSR tools, which look for ``params``;
* BasicSR files: the state dict under ``params`` or ``params_ema`` (``params`` preferred, as in
  BasicSR's test pipeline, unless ``param_key`` says otherwise);
* plain state dicts (optionally with DataParallel's ``module.`` prefix).

For BasicSR files and plain state dicts, hyper-parameters that the caller does not give are read
off tensor shapes where the architecture allows it, and the log says which.
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .fileio import save_torch
from .models import DEFAULT_ARCH, arch_name, get_arch, model_config

log = logging.getLogger(__name__)

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe or does not fit the model."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` and errors that say what is wrong with the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "GLOBAL" not in str(err):  # bad bytes rather than a refused object
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or "
                                  f"corrupt?): {str(err).splitlines()[0]}") from None
        raise CheckpointError(
            f"{path}: refused to load: the file holds pickled objects other than tensors and plain "
            f"types, and srprune never unpickles untrusted code (weights_only=True). If you trust "
            f"it, re-save only its state dict.") from None
    except Exception as err:  # a corrupt file can fail anywhere inside the reader
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (truncated or "
                              f"corrupt?): {(str(err) or type(err).__name__).splitlines()[0]}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict (state dict or checkpoint), "
                              f"found {type(obj).__name__}")
    return obj


def split_checkpoint(obj: dict[str, Any], param_key: str | None = None
                     ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Return (state dict, description) where description holds arch/config/meta if present."""
    keys = [param_key] if param_key else ["params", "params_ema", "state_dict", "model"]
    for key in keys:
        if isinstance(obj.get(key), dict):
            state, info = obj[key], {k: obj[k] for k in ("arch", "config", "meta") if k in obj}
            break
    else:
        if param_key:
            raise CheckpointError(f"no {param_key!r} entry; top-level keys: {sorted(obj)[:10]}")
        state, info = obj, {}
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad or not state:
        raise CheckpointError(f"not a state dict: entries that are not tensors: {bad[:5]}"
                              if bad else "the state dict is empty")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, info


def check_state_dict(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Raise a CheckpointError naming every missing, unexpected or mis-shaped entry."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    problems = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                         ("shape mismatches", shapes)):
        if items:
            shown = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"{title}: {shown}")
    if problems:
        raise CheckpointError(f"{source} does not fit the model: " + "; ".join(problems))


def resolve_config(arch: str, state: dict[str, Tensor], info: dict[str, Any],
                   overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """Config from the file (ours), else inferred from shapes; ``overrides`` win."""
    if "config" in info:
        return {**info["config"], **overrides}
    spec = get_arch(arch)
    hidden = {name: overrides.get(name, default) for name, default in spec.hidden.items()}
    try:
        inferred = spec.infer_config(state, **hidden)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from None
    taken = {k: v for k, v in inferred.items() if k not in overrides}
    shown = sorted(k for k in taken if k in spec.inferable)
    if shown:
        log.info("%s: inferred from tensor shapes: %s", source,
                 ", ".join(f"{k}={taken[k]}" for k in shown))
    return {**taken, **overrides}


def load_model(path: str | os.PathLike, arch: str | None = None, param_key: str | None = None,
               **overrides: Any) -> nn.Module:
    """Build a model from a checkpoint file and load its weights strictly; returns it in eval mode."""
    state, info = split_checkpoint(read_checkpoint(path), param_key)
    return model_from_state(state, info, str(path), arch, **overrides)


def load_finite(path: str | os.PathLike, **overrides: Any) -> nn.Module:
    """:func:`load_model`, refusing weights that hold NaN or infinite values."""
    model = load_model(path, **overrides)
    check_finite(model.state_dict(), str(path))
    return model


def model_from_state(state: dict[str, Tensor], info: dict[str, Any], source: str,
                     arch: str | None = None, **overrides: Any) -> nn.Module:
    """:func:`load_model` for a state dict and description already read by :func:`split_checkpoint`."""
    if arch and info.get("arch") and get_arch(arch) is not get_arch(info["arch"]):
        raise CheckpointError(f"{source} is a {info['arch']} checkpoint, not {arch} (--arch, "
                              f"teacher.arch)")
    arch = arch or info.get("arch", DEFAULT_ARCH)
    config = resolve_config(arch, state, info, overrides, source)
    try:
        model = get_arch(arch).build(config)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid model config: {err}") from None
    try:
        check_state_dict(model, state, source)
    except CheckpointError as err:
        hint = get_arch(arch).shape_hint
        if "config" in info or not hint:
            raise
        raise CheckpointError(f"{err}; {hint}") from None
    model.load_state_dict(state, strict=True)
    model.checkpoint_meta = info.get("meta", {})
    return model.eval()


def check_same_architecture(student: nn.Module, teacher: nn.Module, student_path: Any,
                            teacher_path: Any) -> None:
    """Refuse a student whose architecture or config differs from its teacher's."""
    if (arch_name(student), model_config(student)) != (arch_name(teacher), model_config(teacher)):
        raise CheckpointError(f"{student_path} and {teacher_path} are not the same architecture")


def check_finite(tensors: dict[str, Any], source: str) -> None:
    """Refuse NaN or infinite values in ``tensors`` (nested dicts too), naming the first entry."""
    for name, value in tensors.items():
        if isinstance(value, dict):
            check_finite(value, f"{source} {name}")
        elif isinstance(value, Tensor) and value.is_floating_point():
            bad = (~torch.isfinite(value)).nonzero()
            if len(bad):
                raise FloatingPointError(
                    f"{source}: {name} holds {len(bad)} non-finite values (NaN or inf), the first "
                    f"at index {tuple(bad[0].tolist())}")


def checkpoint_dict(model: nn.Module, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """The self-describing checkpoint of a registered model (plain types and tensors only)."""
    return {
        "params": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "arch": arch_name(model),
        "config": model_config(model),
        "meta": {"format_version": FORMAT_VERSION, **(meta or {})},
    }


def save_model(model: nn.Module, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    """Write a self-describing checkpoint atomically."""
    save_torch(checkpoint_dict(model, meta), path)
