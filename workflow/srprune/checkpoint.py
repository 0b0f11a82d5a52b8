"""Reading and writing checkpoints, safely.

Every file is read with ``torch.load(..., weights_only=True)``: a file that needs arbitrary
unpickling is refused before anything in it runs (the message names what it pickles; a bare
pickle, torch's legacy non-zip format of a newer protocol or ``pickle.dump``, is named as such,
to be re-saved with ``torch.save``). A ``.safetensors`` file is read with the safetensors package
when it is installed (nothing to unpickle), and is a plain state dict. Accepted layouts:

* srprune checkpoints: ``{'params': state_dict, 'arch': name, 'config': {...}, 'meta': {...}}``
  with only plain types, self-describing (nothing else is needed to rebuild the model) and still
  readable by BasicSR tools, which look for ``params``;
* BasicSR files: the state dict under ``params`` or ``params_ema`` (``params`` preferred, as in
  BasicSR's test pipeline, unless ``param_key`` says otherwise);
* plain state dicts (optionally with DataParallel's ``module.`` prefix).

For BasicSR files and plain state dicts, hyper-parameters that the caller does not give are read
off tensor shapes where the architecture allows it, and the log says which; when such a file
does not load, the error names the hyper-parameters its shapes cannot tell (to give with
``--model-config``).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .fileio import save_torch
from .models import DEFAULT_ARCH, arch_name, get_arch, model_config

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
PICKLE_PROTO = 0x80  # the first byte of a pickle of protocol 2 or later
TENSOR_PICKLE_GLOBAL = "torch.storage._load_from_bytes"  # tensors pickled outside torch.save


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe or does not fit the model."""


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` (a ``.safetensors`` file: the safetensors
    package) and errors that say what the file is and what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if _is_safetensors(path):
        return _read_safetensors(path)
    try:
        with warnings.catch_warnings():  # a legacy pickle's protocol: the refusal says it
            warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a corrupt file can fail anywhere inside the reader
        raise CheckpointError(_refusal(path, err)) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict (state dict or checkpoint), "
                              f"found {type(obj).__name__}")
    return obj


def _refusal(path: Path, err: Exception) -> str:
    """Why ``torch.load`` refused ``path``, in terms of the file (never torch's advice to unpickle
    it unsafely)."""
    unpickling = isinstance(err, pickle.UnpicklingError)
    refused = re.search(r"GLOBAL (\S+)", str(err)) if unpickling else None
    protocol = _legacy_pickle_protocol(path)
    if protocol is not None and (refused is None or refused.group(1) == TENSOR_PICKLE_GLOBAL):
        reason = f"it pickles {refused.group(1)}" if refused else _reason(err)
        return (f"{path}: a pickle file in the legacy (non-zip) format, pickle protocol "
                f"{protocol}, which the safe loader cannot read ({reason}): re-save it with "
                f"torch.save in a current torch")
    if refused is not None:
        return (f"{path}: refused to load: the file pickles {refused.group(1)} (not only "
                f"tensors and plain types), and srprune never unpickles untrusted code "
                f"(weights_only=True). If you trust it, re-save only its state dict.")
    return f"{path}: not a readable PyTorch checkpoint (truncated or corrupt?): {_reason(err)}"


def _reason(err: Exception) -> str:
    """The first line of torch's own reason, without its advice on ``weights_only``."""
    text = str(err).split("WeightsUnpickler error:")[-1].strip() or type(err).__name__
    line = text.splitlines()[0]
    return type(err).__name__ if "weights_only" in line else line


def _legacy_pickle_protocol(path: Path) -> int | None:
    """The pickle protocol of a file that is a bare pickle (torch.save's legacy format, or
    ``pickle.dump``), None for anything else (torch.save's zip format included)."""
    with open(path, "rb") as handle:
        head = handle.read(2)
    return head[1] if len(head) == 2 and head[0] == PICKLE_PROTO else None


def _is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then a JSON header."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:] == b"{" and \
        int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def _read_safetensors(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file (a plain state dict; nothing is unpickled)."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(f"{path} is a safetensors file; reading it needs the safetensors "
                              f"package: pip install safetensors") from None
    try:
        return load_file(path, device="cpu")
    except Exception as err:  # the reader raises its own error types
        reason = (str(err) or type(err).__name__).splitlines()[0]
        raise CheckpointError(f"{path}: a safetensors file that cannot be read (truncated?): "
                              f"{reason}") from None


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
    described = "config" in info
    try:
        model = get_arch(arch).build(config)
    except (TypeError, ValueError) as err:
        hint = "" if described else _config_hint(arch, config, str(err))
        raise CheckpointError(f"{source}: invalid model config: {err}{hint}") from None
    try:
        check_state_dict(model, state, source)
    except CheckpointError as err:
        if described:
            raise
        shape_hint = get_arch(arch).shape_hint
        raise CheckpointError(f"{err}{_config_hint(arch, config, str(err))}"
                              f"{f'; {shape_hint}' if shape_hint else ''}") from None
    model.load_state_dict(state, strict=True)
    model.checkpoint_meta = info.get("meta", {})
    return model.eval()


def _config_hint(arch: str, config: dict[str, Any], problem: str) -> str:
    """For a file without its config: the hyper-parameters its shapes do not tell (they took
    their defaults) and how to give them, the example naming the one ``problem`` names."""
    untold = [f.name for f in dataclasses.fields(get_arch(arch).config_class)
              if f.name not in config]
    if not untold:
        return ""
    example = next((name for name in untold if name in problem), untold[0])
    return (f". This file records no config and its tensor shapes cannot tell {', '.join(untold)} "
            f"({arch} defaults used): give the values it was trained with as --model-config "
            f"'{{{example}: ...}}' (teacher.model_config in a workflow config)")


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
