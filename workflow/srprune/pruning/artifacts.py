"""Checks of what a scores, masks or masked-model artifact records against the model it is for."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ..checkpoint import CheckpointError, check_finite
from .adapter import (UNIT_KINDS_DEFAULT, UnitGroup, check_groups, groups_of_kinds,
                      recorded_groups, sizes)
from .registry import adapter_for


def check_artifact(groups: list[UnitGroup], artifact: dict[str, Any],
                   per_group: dict[str, Tensor], source: str | Path) -> None:
    """Refuse masks or scores (``per_group``) of an artifact made for other groups than these.

    Only the groups of the unit kinds the artifact was made for must all be there.
    """
    if "groups" in artifact:
        kinds = groups_of_kinds(groups, artifact.get("units") or UNIT_KINDS_DEFAULT)
        check_groups(kinds, recorded_groups(artifact), str(source))
    check_groups(groups, sizes(per_group), str(source), complete=False)
    check_finite(per_group, str(source))


def masks_of(model: nn.Module, source: str | Path) -> dict[str, Tensor]:
    """The masks recorded in a loaded zeroed (or fine-tuned) checkpoint's meta, checked against it."""
    meta = getattr(model, "checkpoint_meta", {})
    if "masks" not in meta:
        raise CheckpointError(f"{source} records no masks: give the zeroed model written by "
                              f"`srprune export-zeroed` (<arch>_zeroed.pth)")
    check_artifact(adapter_for(model).groups(model), meta, meta["masks"], source)
    return meta["masks"]
