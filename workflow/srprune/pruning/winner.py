"""The compensated selection's winner, kept so that ``srprune search-masks --compensated-out``
writes the model it already compensated instead of a second job compensating it again.

The compensated selection (:func:`.search.search_masks`) compensates every candidate to measure
it; :class:`CompensatedWinner` keeps the compensated students of the least distortion seen, and
:func:`write_compensated` saves the chosen one as ``srprune compensate`` would have written it
from the zeroed export: the zeroed model's meta with ``stage: compensated`` and a
``compensation`` record.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..checkpoint import save_model
from ..layout import COMPENSATED
from .calibration import Calibration
from .compensate import CompensationSettings
from .registry import adapter_for
from .search import zeroed_meta
from .selection import same_masks


@dataclass
class CompensatedWinner:
    """The compensated students of the smallest distortion offered so far (ties kept: the
    selection breaks them by its own rule)."""

    distortion: float = float("inf")
    kept: list[tuple[dict[str, Tensor], nn.Module, dict[str, Any]]] = field(default_factory=list)

    def offer(self, masks: dict[str, Tensor], distortion: float, student: nn.Module,
              fit: dict[str, Any]) -> None:
        if distortion < self.distortion:
            self.distortion, self.kept = distortion, []
        if distortion == self.distortion:
            self.kept.append((masks, student, fit))

    def of(self, masks: dict[str, Tensor]) -> tuple[nn.Module, dict[str, Any]]:
        """The compensated student of ``masks`` (the chosen candidate) and its fit record."""
        for kept_masks, student, fit in self.kept:
            if same_masks(kept_masks, masks):
                return student, fit
        raise RuntimeError("the chosen masks were not among the least distorting compensated "
                           "candidates (is the selection 'compensated'?)")


def write_compensated(winner: CompensatedWinner, artifact: dict[str, Any], out: str | Path,
                      teacher_path: str | Path, calibration: Calibration,
                      settings: CompensationSettings) -> None:
    """Save the compensated model of the masks ``artifact`` chose (self-describing, atomic)."""
    student, fit = winner.of(artifact["masks"])
    record = {"settings": asdict(settings), "calibration": asdict(calibration), "fit": fit,
              "teacher": str(teacher_path), "source": "search-masks (compensated selection)"}
    meta = zeroed_meta(adapter_for(student), student, artifact)
    save_model(student, out, {**meta, "stage": COMPENSATED, "compensation": record})
