"""Every output path of every subcommand is checked before any work: one line, exit code 2.

The subcommands and their outputs are read off the parser, so a new subcommand or output
option is covered (or flagged unmarked) without editing this file.
"""
import argparse
import os
import tempfile
from pathlib import Path

import pytest

from srprune.argtypes import output_file, output_folder
from srprune.cli import build_parser, main
from srprune.fileio import OutputPathError, check_output_path

OUTPUT_TYPES = {output_file: False, output_folder: True}  # argparse type -> is a folder
OUTPUT_DESTS = {"out", "json", "workdir", "save_images"}  # option names that write


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _outputs() -> list[tuple[str, str]]:
    """(subcommand, output option) pairs."""
    return [(name, action.dest) for name, sub in _subcommands().items()
            for action in sub._actions if action.type in OUTPUT_TYPES]


def test_every_subcommand_declares_its_outputs():
    for name, sub in _subcommands().items():
        assert any(a.type in OUTPUT_TYPES for a in sub._actions), f"{name} has no output option"
        unmarked = [a.dest for a in sub._actions
                    if a.dest in OUTPUT_DESTS and a.type not in OUTPUT_TYPES]
        assert not unmarked, f"{name}: outputs not checked before the work: {unmarked}"
    assert len(_outputs()) >= 19


def _argv(command: str, dest: str, value: str) -> list[str]:
    """The command line of ``command`` with output ``dest`` set to ``value`` and every other
    required argument to a placeholder (it is never read: parsing stops first)."""
    argv = [command]
    for action in _subcommands()[command]._actions:
        if action.dest == dest:
            given = value
        elif action.required:
            given = str(action.choices[0]) if action.choices else "1"
        else:
            continue
        argv += [given] if not action.option_strings else [action.option_strings[0], given]
    return argv


@pytest.fixture()
def unwritable(tmp_path):
    """A folder in which no file can be made (root ignores permissions: then a sysfs folder)."""
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    folder = Path("/sys/kernel")
    try:
        os.close(tempfile.mkstemp(dir=folder)[0])
    except OSError:
        yield folder
    else:
        pytest.skip(f"running as root and {folder} is writable: no unwritable folder to try")


def _hostile(tmp_path: Path, unwritable: Path, folder: bool) -> dict[str, tuple[Path, str]]:
    """Output paths that cannot be written, with what the message must say."""
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "a_folder").mkdir()
    wrong = tmp_path / ("a_file" if folder else "a_folder")
    return {
        "wrong kind": (wrong, f"{wrong} is a {'file' if folder else 'folder'}; give a "
                              f"{'folder' if folder else 'file'} path"),
        "parent is a file": (tmp_path / "a_file" / "sub" / "out",
                             f"{tmp_path / 'a_file'} is a file, not a folder"),
        "unwritable": (unwritable / "out", f"{unwritable} is not writable"),
    }


@pytest.mark.parametrize("case", ["wrong kind", "parent is a file", "unwritable"])
@pytest.mark.parametrize("command,dest", _outputs())
def test_unwritable_outputs_are_refused_before_any_work(tmp_path, unwritable, capsys, command,
                                                         dest, case):
    sub = _subcommands()[command]
    folder = next(OUTPUT_TYPES[a.type] for a in sub._actions if a.dest == dest)
    path, expected = _hostile(tmp_path, unwritable, folder)[case]
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_:
        main(_argv(command, dest, str(path)))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert expected in err and "Traceback" not in err, err
    assert sorted(tmp_path.rglob("*")) == before  # nothing made


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_the_default_work_folder_is_checked_too(tmp_path, capsys, command):
    (tmp_path / "model_work").write_text("x")
    argv = _argv(command, "out", str(tmp_path / "model.pth"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: {tmp_path / 'model_work'} is a file; give a folder path", err


def test_writable_outputs_pass(tmp_path):
    (tmp_path / "old.json").write_text("{}")
    for path, folder in ((tmp_path / "old.json", False), (tmp_path / "new" / "deep" / "x.json", False),
                         (tmp_path, True), (tmp_path / "new" / "folder", True)):
        assert check_output_path(path, folder) == path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.json"]  # the probes are gone
    with pytest.raises(OutputPathError, match="give a file path"):
        check_output_path("", folder=False)
