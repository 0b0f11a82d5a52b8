"""Pictures of a run: SR outputs side by side on one crop, and fine-tuning recovery.

**Visual comparison** (:func:`visual_comparison`, ``srprune visual``, ``visual_<dataset>.png``):
for one image of a data set and one crop of it, the HR image (whole, the crop marked), then
the crop of HR, bicubic, the teacher and every rebuilt model (each method and budget), each
labelled with its PSNR on that crop and its MAC ratio to the teacher. Teacher and bicubic
outputs are the PNG files ``srprune evaluate --save-images`` wrote (named in their evaluation
JSONs, ``images``); the rebuilt models run on the chosen image, as ``srprune evaluate`` runs
them (uint8 output). The MAC ratio is the rebuilt model's evaluation JSON ``macs_full`` over
the teacher's, the comparison's ``mac_ratio``.

The crop is given (image name and box ``top, left, height, width`` in HR pixels of the
modcropped image) or chosen: over every image of the data set, the ``size`` x ``size`` window,
inside the ``crop_border`` pixels that scoring ignores, where the teacher most reduces the
summed Y-channel squared error of bicubic (a sliding window over both outputs, all
positions). Crop PSNR is Y-channel PSNR on the crop alone (no further border).

**Recovery** (:func:`plot_recovery`, ``srprune plot-recovery``, ``finetune_recovery.png``):
validation PSNR against iteration of every method and budget, from the fine-tuning logs
``<method>/<budget>/finetune_log.csv`` (rows with a ``val_psnr``).

Every path comes from :class:`srprune.layout.RunPaths`.
"""
from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .compare.collect import MissingResultError, ResultFormatError, discover, ratio, read_json
from .compare.plots import figure, method_colors, save_png
from .data import read_image
from .metrics import psnr_y, rgb_to_y
from .layout import REBUILT, TEACHER, RunPaths
from .models import DEFAULT_ARCH

DEFAULT_CROP = 96
_PRODUCERS = {"teacher": "srprune evaluate --save-images (rule evaluate_teacher)",
              "bicubic": "srprune evaluate --model bicubic --save-images (rule evaluate_baseline)",
              "rebuilt": "srprune evaluate (rule evaluate_stage)",
              "log": "srprune finetune (rule finetune)"}


@dataclass(frozen=True)
class Crop:
    """A box of one image in HR pixels: ``top``, ``left``, ``height``, ``width``."""

    image: str
    top: int
    left: int
    height: int
    width: int

    def of(self, img: np.ndarray) -> np.ndarray:
        """This box of ``img``."""
        return img[self.top:self.top + self.height, self.left:self.left + self.width]

    def check(self, shape: Sequence[int]) -> None:
        """Refuse a box that is empty or leaves an image of ``shape`` (H, W, ...)."""
        if min(self.height, self.width) < 1 or min(self.top, self.left) < 0 or \
                self.top + self.height > shape[0] or self.left + self.width > shape[1]:
            raise ValueError(f"--box {self.top},{self.left},{self.height},{self.width} does not "
                             f"fit image {self.image!r} of {shape[0]}x{shape[1]} HR pixels")


# --------------------------------------------------------------------------- choosing the crop
def window_sums(values: np.ndarray, size: int) -> np.ndarray:
    """Sum of every ``size`` x ``size`` window of a 2-D array (an integral image)."""
    total = np.zeros((values.shape[0] + 1, values.shape[1] + 1))
    total[1:, 1:] = values.cumsum(0).cumsum(1)
    return (total[size:, size:] - total[:-size, size:] - total[size:, :-size]
            + total[:-size, :-size])


def best_window(teacher: np.ndarray, bicubic: np.ndarray, hr: np.ndarray, size: int,
                border: int) -> tuple[float, int, int]:
    """``(gain, top, left)`` of the window where the teacher most reduces bicubic's squared Y error."""
    y_hr = rgb_to_y(hr.astype(np.float64) / 255)
    gain = ((rgb_to_y(bicubic.astype(np.float64) / 255) - y_hr) ** 2
            - (rgb_to_y(teacher.astype(np.float64) / 255) - y_hr) ** 2)
    inner = gain[border:gain.shape[0] - border, border:gain.shape[1] - border]
    size = min(size, *inner.shape)
    if size < 1:
        raise ValueError(f"image of {hr.shape[0]}x{hr.shape[1]} has nothing inside its "
                         f"{border}-pixel border to crop")
    sums = window_sums(inner, size)
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return float(sums[top, left]), int(top) + border, int(left) + border


def choose_crop(images: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]], size: int,
                border: int) -> Crop:
    """The best window over ``(name, teacher, bicubic, hr)`` images (see :func:`best_window`)."""
    best: tuple[float, Crop] | None = None
    for name, teacher, bicubic, hr in images:
        gain, top, left = best_window(teacher, bicubic, hr, size, border)
        side = min(size, hr.shape[0] - 2 * border, hr.shape[1] - 2 * border)
        if best is None or gain > best[0]:
            best = gain, Crop(name, top, left, side, side)
    if best is None:
        raise ValueError("no images to choose a crop from")
    return best[1]


# --------------------------------------------------------------------------- the figure
@dataclass
class Panel:
    """One picture of the figure: a crop and its label."""

    title: str
    image: np.ndarray
    psnr: float | None = None
    mac_ratio: float | None = None

    def label(self) -> str:
        """Title, crop PSNR and MAC ratio on up to three lines."""
        lines = [self.title]
        if self.psnr is not None:
            lines.append(f"{self.psnr:.2f} dB")
        if self.mac_ratio is not None:
            lines.append(f"MACs x{self.mac_ratio:.2f}")
        return "\n".join(lines)


def draw_visual(hr: np.ndarray, crop: Crop, panels: Sequence[Panel], path: str | os.PathLike,
                title: str) -> Path:
    """The whole HR image with the crop marked, then every panel; written as PNG."""
    from matplotlib.patches import Rectangle

    cols = min(len(panels) + 1, 5)
    rows = math.ceil((len(panels) + 1) / cols)
    fig = figure(2.6 * cols, 2.9 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    axes[0].imshow(hr)
    axes[0].add_patch(Rectangle((crop.left - 0.5, crop.top - 0.5), crop.width, crop.height,
                                fill=False, edgecolor="red", linewidth=1.5))
    axes[0].set_title(f"{crop.image}\n{crop.height}x{crop.width} at ({crop.top}, {crop.left})",
                      fontsize=9)
    for ax, panel in zip(axes[1:], panels):
        ax.imshow(panel.image, interpolation="nearest")
        ax.set_title(panel.label(), fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return save_png(fig, path)


def _saved_images(record: Mapping[str, Any], path: Path, producer: str) -> Callable[[str], Path]:
    """``name -> PNG path`` of the images an evaluation JSON says it saved."""
    images = record.get("images")
    if not isinstance(images, Mapping) or "dir" not in images or "suffix" not in images:
        raise ResultFormatError(f"{path} records no saved SR images; rerun {producer}")
    return lambda name: Path(images["dir"]) / f"{name}_{images['suffix']}.png"


def _read_png(path: Path, producer: str) -> np.ndarray:
    if not path.is_file():
        raise MissingResultError(path, producer)
    return read_image(path)


def _crop_psnr(sr: np.ndarray, hr: np.ndarray, crop: Crop) -> float:
    return psnr_y(crop.of(sr), crop.of(hr), 0)


@dataclass
class VisualInputs:
    """What :func:`visual_comparison` reads besides the results folder."""

    pairs: Sequence[tuple[str, np.ndarray, np.ndarray]]   # (name, lr, hr) of the data set
    scale: int
    upscale: Callable[[str | Path, np.ndarray], np.ndarray]  # (model file, LR) -> uint8 SR


def visual_comparison(results_dir: str | os.PathLike, dataset: str, inputs: VisualInputs,
                      out: str | os.PathLike, crop: Crop | None = None, image: str | None = None,
                      crop_size: int = DEFAULT_CROP,
                      layout: Mapping[str, Sequence[str]] | None = None,
                      arch: str = DEFAULT_ARCH) -> dict[str, Any]:
    """Write the visual comparison of ``dataset`` (see the module docstring); returns its record.

    Without ``crop`` the best ``crop_size`` window is chosen in ``image`` (default: in every
    image of the data set).
    """
    paths = RunPaths(str(results_dir), arch)
    layout = discover(results_dir) if layout is None else layout
    records = {who: read_json(Path(paths.reference_eval(who, dataset)), _PRODUCERS[who])
               for who in (TEACHER, "bicubic")}
    outputs = {who: _saved_images(record, Path(paths.reference_eval(who, dataset)),
                                  _PRODUCERS[who]) for who, record in records.items()}
    hr_of = {name: hr for name, _, hr in inputs.pairs}
    image = crop.image if crop is not None else image
    if image is not None and image not in hr_of:
        raise ValueError(f"--image {image!r} is not in data set {dataset} "
                         f"(images: {', '.join(hr_of)})")
    if crop is None:
        crop = choose_crop([(n, _read_png(outputs["teacher"](n), _PRODUCERS["teacher"]),
                             _read_png(outputs["bicubic"](n), _PRODUCERS["bicubic"]), hr)
                            for n, hr in hr_of.items() if image in (None, n)],
                           crop_size, inputs.scale)
    hr = hr_of[crop.image]
    crop.check(hr.shape)
    panels = [Panel("HR", crop.of(hr))]
    for who, mac_ratio in (("bicubic", None), ("teacher", 1.0)):
        sr = _read_png(outputs[who](crop.image), _PRODUCERS[who])
        panels.append(Panel(who, crop.of(sr), _crop_psnr(sr, hr, crop), mac_ratio))
    lr = next(lr for name, lr, _ in inputs.pairs if name == crop.image)
    for method, budgets in layout.items():
        for budget in budgets:
            macs = read_json(Path(paths.stage_eval(method, budget, REBUILT, dataset)),
                             _PRODUCERS[REBUILT]).get("macs_full")
            sr = inputs.upscale(paths.model(method, budget, REBUILT), lr)
            panels.append(Panel(f"{method} r={budget}", crop.of(sr), _crop_psnr(sr, hr, crop),
                                ratio(macs, records[TEACHER].get("macs_full"))))
    draw_visual(hr, crop, panels, out, f"{dataset}: rebuilt models against the teacher")
    return {"crop": crop, "panels": {p.title: {"psnr": p.psnr, "mac_ratio": p.mac_ratio}
                                     for p in panels}}


# --------------------------------------------------------------------------- recovery
def read_recovery(path: str | os.PathLike) -> tuple[list[int], list[float]]:
    """Iterations and validation PSNRs of one fine-tuning ``log.csv``."""
    path = Path(path)
    if not path.is_file():
        raise MissingResultError(path, _PRODUCERS["log"])
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"iter", "val_psnr"} <= set(rows[0]):
        raise ResultFormatError(f"{path} lacks the columns iter and val_psnr")
    points = [(int(r["iter"]), float(r["val_psnr"])) for r in rows if r["val_psnr"]]
    return [i for i, _ in points], [p for _, p in points]


def plot_recovery(results_dir: str | os.PathLike, out: str | os.PathLike,
                  layout: Mapping[str, Sequence[str]] | None = None,
                  arch: str = DEFAULT_ARCH) -> Path:
    """Validation PSNR against iteration for every method (colour) and budget (line style)."""
    paths = RunPaths(str(results_dir), arch)
    layout = discover(results_dir) if layout is None else layout
    colors = method_colors(layout)
    budgets = list(dict.fromkeys(b for bs in layout.values() for b in bs))
    styles = ["-", "--", ":", "-."]
    fig = figure(6.4, 4.2)
    ax = fig.subplots()
    for method, method_budgets in layout.items():
        for budget in method_budgets:
            iters, psnr = read_recovery(paths.finetune_log(method, budget))
            ax.plot(iters, psnr, marker="o", markersize=3, color=colors[method],
                    linestyle=styles[budgets.index(budget) % len(styles)],
                    label=f"{method} r={budget}")
    ax.set_xlabel("fine-tuning iteration")
    ax.set_ylabel("validation PSNR (dB, Y)")
    ax.set_title("Recovery during feature-KD fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, out)


__all__ = ["Crop", "Panel", "VisualInputs", "best_window", "choose_crop", "draw_visual",
           "plot_recovery", "read_recovery", "visual_comparison", "window_sums"]
