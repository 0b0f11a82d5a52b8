"""Progress bars that stay readable in log files.

On a terminal :func:`progress_bar` is an ordinary tqdm bar. When stderr is not a terminal (a
Snakemake log, a pipe) the bar would write a carriage-return update many times a second, which
a log file keeps as one endless line; there it writes instead one plain line (no bar glyphs)
at most every :data:`LOG_INTERVAL_S` seconds, plus the first and the last state::

    evaluate: 50% 1/2 img [00:03<00:03, 0.31img/s]

Every progress bar of srprune goes through this helper; ``disable`` (the commands' ``--quiet``)
turns it off.
"""
from __future__ import annotations

import re
import sys
from typing import Any, Iterable

from tqdm import tqdm

LOG_INTERVAL_S = 10.0
LOG_FORMAT = "{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class LineWriter:
    """A file for tqdm that turns each carriage-return status update into one line of stderr.

    A status whose count is the one written last (tqdm's repeat on closing) is dropped.
    """

    def __init__(self) -> None:
        self.last = ""

    def write(self, text: str) -> int:
        """Write every new non-blank status in ``text`` as its own line."""
        for part in _CONTROL.sub("", text).replace("\r", "\n").split("\n"):
            count = part.split(" [", 1)[0]
            if part.strip() and count != self.last:
                sys.stderr.write(part.rstrip() + "\n")
                self.last = count
        return len(text)

    def flush(self) -> None:
        """Flush stderr."""
        sys.stderr.flush()


def _is_terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable: Iterable[Any] | None = None, *, desc: str, unit: str = "it",
                 total: float | None = None, disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on a terminal; elsewhere plain lines every :data:`LOG_INTERVAL_S` seconds."""
    if _is_terminal():
        return tqdm(iterable, desc=desc, unit=unit, total=total, disable=disable,
                    dynamic_ncols=True, **kwargs)
    kwargs.pop("leave", None)   # a log keeps the last state
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=disable, file=LineWriter(),
                mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, miniters=1,
                bar_format=LOG_FORMAT, ascii=True, leave=True, **kwargs)
