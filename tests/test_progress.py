"""``srprune.progress``: readable lines, not carriage-return floods, when stderr is a file."""
from __future__ import annotations

import io
import sys

from srprune import progress
from srprune.progress import progress_bar


def test_a_log_gets_plain_lines_at_most_every_interval(capsys):
    for _ in progress_bar(range(5000), desc="evaluate", unit="img"):
        pass
    err = capsys.readouterr().err
    assert "\r" not in err and "\x1b" not in err
    lines = err.splitlines()
    assert 2 <= len(lines) <= 3          # the first state, perhaps one timed, and the last
    assert lines[-1].startswith("evaluate: 100% 5000/5000 img [")


def test_each_update_past_the_interval_is_one_line(capsys, monkeypatch):
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
    bar = progress_bar(total=3, desc="train", unit="it", leave=False)
    for loss in (0.3, 0.2, 0.1):
        bar.set_postfix({"loss": loss}, refresh=False)
        bar.update()
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("train:   0% 0/3 it")
    assert lines[-1].startswith("train: 100% 3/3 it") and "loss=0.1" in lines[-1]
    assert len(lines) == 4               # kept after close: a log keeps the last state


def test_disabled_bars_write_nothing(capsys):
    for _ in progress_bar(range(10), desc="x", disable=True):
        pass
    assert capsys.readouterr().err == ""


def test_a_terminal_gets_an_ordinary_bar(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    for _ in progress_bar(range(3), desc="scores", mininterval=0):
        pass
    assert "\r" in terminal.getvalue() and "|" in terminal.getvalue()
