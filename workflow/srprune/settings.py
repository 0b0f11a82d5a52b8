"""Building configuration dataclasses from plain mappings (YAML, checkpoints) with clear errors."""
from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_mapping(cls: type[T], values: dict[str, Any], what: str) -> T:
    """``cls(**values)``, refusing unknown keys with a message that lists the known ones."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known: {sorted(known)}")
    return cls(**values)
