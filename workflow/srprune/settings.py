"""Building configuration dataclasses from plain mappings (YAML, checkpoints) with clear errors."""
from __future__ import annotations

import math
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an integer (not a bool) of at least ``minimum``; else a clear error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def from_mapping(cls: type[T], values: dict[str, Any], what: str) -> T:
    """``cls(**values)``, refusing unknown keys with a message that lists the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known: {sorted(known)}")
    return cls(**values)


def check_sections(config: dict[str, Any], known: tuple[str, ...], required: tuple[str, ...],
                   what: str) -> None:
    """Refuse unknown top-level keys of ``config`` and name the required ones it lacks."""
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known: {list(known)}")
    missing = [key for key in required if key not in config]
    if missing:
        raise ValueError(f"the {what} lacks {missing} (required: {list(required)})")


def check_weights(values: dict[str, float], what: str) -> None:
    """Every value a finite number >= 0."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            raise ValueError(f"{what} {name} must be a finite number >= 0, got {value!r}")
