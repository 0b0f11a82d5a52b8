"""Export a model for deployment outside Python: ONNX (dynamic batch, height and width) or TorchScript.

ONNX goes through ``torch.export`` and ``torch.onnx.export(..., dynamo=True)``: the model's
shape arithmetic (IASA groups, LRSA patch grid) is written with symbolic-friendly ops, so one
graph serves every input of at least 2x2 pixels. Boolean flag buffers (CATANet's ``initted``)
become Python constants in the exported copy. CATANet's token sort is traced as the tensor-op form
of torch's CPU sort (``models/catanet_sort.py``), so the graph orders tokens of one centre as the
PyTorch model does. Every ONNX file is checked against the model on the (tie-rich, random) trace
input with ONNX Runtime before it is written: a file that computes something else is an error.

TorchScript is a ``torch.jit.trace``: the shape arithmetic becomes constants, so the file runs
one LR size (a tile, by default 64x64) at any batch size, and refuses other sizes with an error.
It keeps torch's own sort, so it equals the PyTorch model.
"""
from __future__ import annotations

import copy
import importlib.util
import os
from typing import Callable

import torch
from torch import Tensor, nn

from .fileio import atomic_path, check_output_path

FORMATS = ("onnx", "torchscript")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".ts"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INPUT_NAME, OUTPUT_NAME = "lr", "sr"
MIN_SIDE = 2  # the exported graph assumes no side of 1 (a runtime check says so)


class ExportError(ValueError):
    """A format, size or environment that an export cannot handle."""


def require_packages(names: tuple[str, ...], purpose: str) -> None:
    """Raise an ExportError naming the packages ``purpose`` needs that are not installed."""
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"{purpose} needs the Python packages {', '.join(missing)}: "
                          f"pip install 'srprune[export]'")


def export_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy with 0-dim boolean buffers turned into Python bools."""
    frozen = copy.deepcopy(model).eval()
    for module in frozen.modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if buf.dim() == 0 and buf.dtype == torch.bool:
                del module._buffers[name]
                setattr(module, name, bool(buf))
    return frozen


def example_input(size: tuple[int, int], batch: int = 2) -> Tensor:
    """A fixed pseudo-random LR batch in [0, 1] used to trace the model."""
    if min(size) < MIN_SIDE:
        raise ExportError(f"example size must be at least {MIN_SIDE}x{MIN_SIDE}, got {size}")
    return torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(0))


def export_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (64, 64)) -> None:
    """Write ``model`` as ONNX with dynamic batch, height and width (sides of at least 2)."""
    require_packages(ONNX_PACKAGES, "ONNX export")
    import torch.fx.experimental._config as fx_config

    frozen = export_copy(model)
    dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height", min=MIN_SIDE),
            3: torch.export.Dim("width", min=MIN_SIDE)}
    x = example_input(size)
    # Sizes are assumed not to be 1 instead of branching on it: sides of 1 are refused.
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
        program = torch.export.export(frozen, (x,), dynamic_shapes={"x": dims})
    onnx_program = torch.onnx.export(program, (x,), dynamo=True, input_names=[INPUT_NAME],
                                     output_names=[OUTPUT_NAME], verbose=False)
    with atomic_path(path) as tmp:
        onnx_program.save(str(tmp))
        check_onnx(frozen, tmp, x)


def check_onnx(model: nn.Module, path: str | os.PathLike, x: Tensor, tol: float = 1e-4) -> None:
    """Raise an ExportError unless ONNX Runtime's output of ``path`` on ``x`` equals the model's."""
    with torch.no_grad():
        expected = model(x)
    diff = float((onnx_runner(path)(x) - expected).abs().max())
    if not diff <= tol:  # also catches NaN
        raise ExportError(f"the ONNX graph differs from the PyTorch model by {diff:.3g} (max abs) on "
                          f"the trace input (tolerance {tol:g}): not written")


class FixedSize(nn.Module):
    """A traced model behind a check that the input has the traced height and width."""

    def __init__(self, traced: nn.Module, height: int, width: int):
        super().__init__()
        self.traced = traced
        self.height = height
        self.width = width

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[2] != self.height or x.shape[3] != self.width:
            raise ValueError(f"this TorchScript model was exported for {self.height}x{self.width} "
                             f"inputs (export again with another --size), got {x.shape[2]}x{x.shape[3]}")
        return self.traced(x)


def export_torchscript(model: nn.Module, path: str | os.PathLike,
                       size: tuple[int, int] = (64, 64)) -> None:
    """Write ``model`` as TorchScript for ``size`` LR inputs (any batch)."""
    frozen = export_copy(model)
    with torch.no_grad():
        traced = torch.jit.trace(frozen, (example_input(size),), check_trace=False)
    scripted = torch.jit.script(FixedSize(traced, *size))
    with atomic_path(path) as tmp:
        torch.jit.save(scripted, str(tmp))


def export_model(model: nn.Module, path: str | os.PathLike, fmt: str,
                 size: tuple[int, int] = (64, 64)) -> None:
    """Export ``model`` to ``path`` in ``fmt`` (one of :data:`FORMATS`); ``path`` is checked
    before the (slow) tracing."""
    writers = {"onnx": export_onnx, "torchscript": export_torchscript}
    if fmt not in writers:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    check_output_path(path)
    writers[fmt](model, path, size)


def onnx_runner(path: str | os.PathLike, threads: int = 1) -> Callable[[Tensor], Tensor]:
    """A CPU ONNX Runtime session of ``path`` with ``threads`` intra-op threads, as a function
    from an LR tensor (B x 3 x H x W) to the SR tensor."""
    require_packages(("onnxruntime",), "running an ONNX model")
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        session = onnxruntime.InferenceSession(str(path), options,
                                               providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own types for missing and malformed files
        raise ExportError(f"{path}: not a readable ONNX model: {str(err).splitlines()[0]}") from None
    name = session.get_inputs()[0].name

    def run(x: Tensor) -> Tensor:
        out = session.run(None, {name: x.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    return run
