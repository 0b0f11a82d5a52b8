"""Argparse ``type=`` checkers shared by every subcommand: a bad value is refused while the
command line is parsed (one line naming the option, exit code 2), before any work starts."""
from __future__ import annotations

import argparse
import math
from typing import Any, Callable


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An integer of at least ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


positive_int = int_at_least(1)


def finite_float(text: str) -> float:
    """A finite number (no nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def nonnegative_float(text: str) -> float:
    """A finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def lr_size(text: str) -> tuple[int, int] | None:
    """``"HxW"`` (or ``"N"`` for NxN) -> ``(H, W)``; ``"reference"`` -> None (the caller's
    reference size)."""
    if str(text).strip().lower() == "reference":
        return None
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH (e.g. 180x320), N or reference, "
                                         f"got {text!r}")
    return values[0], values[1]


def device(text: str) -> str:
    """cpu, auto, cuda or cuda:N, refused when CUDA is asked for and absent."""
    from .device import parse_device

    try:
        parse_device(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def filename_template(text: str) -> str:
    """An LR file-name template with exactly one ``{}``."""
    from .data import DataError, check_filename_template

    try:
        return check_filename_template(text)
    except DataError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def height_by_width(text: str) -> tuple[int, int]:
    """An image size written ``HxW`` (e.g. ``64x64``), both sides at least 2."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(part.isdigit() for part in parts) or min(map(int, parts)) < 2:
        raise argparse.ArgumentTypeError(f"expected HxW with sides of at least 2, got {text!r}")
    return int(parts[0]), int(parts[1])


def crop_box(text: str) -> tuple[int, int, int, int]:
    """``TOP,LEFT,HEIGHT,WIDTH`` in pixels: offsets >= 0, sizes >= 1."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values[:2]) < 0 or min(values[2:]) < 1:
        raise argparse.ArgumentTypeError(f"expected TOP,LEFT,HEIGHT,WIDTH (offsets >= 0, sizes "
                                         f">= 1), got {text!r}")
    return values  # type: ignore[return-value]


def output_file(text: str) -> str:
    """A file to write (see :func:`srprune.fileio.check_output_path`)."""
    return _output(text, folder=False)


def output_folder(text: str) -> str:
    """A folder to write into (see :func:`srprune.fileio.check_output_path`)."""
    return _output(text, folder=True)


def _output(text: str, folder: bool) -> str:
    from .fileio import OutputPathError, check_output_path

    try:
        check_output_path(text, folder)
    except OutputPathError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


class UniqueNames(argparse.Action):
    """``nargs='+'`` names given at most once each (``--datasets a a`` is refused)."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        twice = sorted({value for value in values if values.count(value) > 1})
        if twice:
            raise argparse.ArgumentError(self, f"{', '.join(twice)} given more than once")
        setattr(namespace, self.dest, values)


class NamedDatasets(argparse.Action):
    """Repeatable ``--dataset NAME=...`` (``type`` gives ``(name, spec)``) collected as
    ``{name: spec}``; a name given twice is refused, not replaced."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        name, spec = values
        given = getattr(namespace, self.dest) or {}
        if name in given:
            raise argparse.ArgumentError(self, f"data set {name!r} is given twice ("
                                               f"{given[name]['hr']} and {spec['hr']})")
        setattr(namespace, self.dest, {**given, name: spec})


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``prog: error: ...``), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print one line naming the problem and exit with status 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
