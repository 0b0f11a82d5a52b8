"""search-masks --compensated-out: the compensated selection's winner is written, and it is the
model `srprune compensate` makes of the zeroed export (so the workflow compensates once)."""
from __future__ import annotations

import pytest
import torch

import srprune
from srprune.checkpoint import read_checkpoint
from srprune.cli import main
from tiny_catanet import tiny_catanet

CALIB = ["--num-crops", "3", "--crop-size", "12", "--ridge", "0.01"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, make_images):
    """Scores, masks with the compensated winner, and the zeroed export compensated by hand."""
    root = tmp_path_factory.mktemp("winner")
    teacher = str(root / "teacher.pth")
    srprune.save_model(tiny_catanet(upscale=2), teacher)
    calib = ["--calib-hr", str(make_images(root / "train", 2, (24, 26))), *CALIB]

    def cli(*argv: str) -> None:
        assert main([*argv]) == 0, argv

    cli("score-units", "--teacher", teacher, "--method", "magnitude", "--out", f"{root}/s.pth")
    cli("search-masks", "--teacher", teacher, "--scores", f"{root}/s.pth", "--mac-constraint",
        "0.7", "--selection", "compensated", *calib, "--out", f"{root}/masks.pth",
        "--compensated-out", f"{root}/winner.pth")
    cli("export-zeroed", "--teacher", teacher, "--masks", f"{root}/masks.pth",
        "--out", f"{root}/zeroed.pth")
    cli("compensate", "--teacher", teacher, "--model", f"{root}/zeroed.pth", *calib,
        "--out", f"{root}/compensated.pth")
    return root


def test_the_winner_is_what_compensate_makes_of_the_zeroed_export(run):
    winner, by_hand = read_checkpoint(run / "winner.pth"), read_checkpoint(run / "compensated.pth")
    ours, theirs = winner["meta"], by_hand["meta"]
    assert ours["stage"] == theirs["stage"] == "compensated"
    assert set(ours) == set(theirs)
    for key in ("method", "units", "groups", "mac_constraint", "achieved_mac_ratio",
                "teacher_sha256"):
        assert ours[key] == theirs[key], key
    assert all(torch.equal(ours["masks"][k], theirs["masks"][k]) for k in theirs["masks"])
    for key in ("settings", "calibration"):
        assert ours["compensation"][key] == theirs["compensation"][key], key
    assert ours["compensation"]["fit"].keys() == theirs["compensation"]["fit"].keys()
    a, b = srprune.load_model(run / "winner.pth"), srprune.load_model(run / "compensated.pth")
    changed = 0
    teacher = srprune.load_model(run / "teacher.pth").state_dict()
    for key, value in b.state_dict().items():
        assert torch.allclose(a.state_dict()[key], value, atol=1e-6), key
        changed += not torch.equal(value, teacher[key])
    assert changed > 0  # the compensation did refit something


def test_compensated_out_needs_the_compensated_selection(run, capsys):
    code = main(["search-masks", "--teacher", str(run / "teacher.pth"), "--scores",
                 str(run / "s.pth"), "--mac-constraint", "0.7", "--selection", "knapsack",
                 "--out", str(run / "k.pth"), "--compensated-out", str(run / "k_comp.pth")])
    assert code == 2
    assert "--compensated-out needs --selection compensated" in capsys.readouterr().err
    assert not (run / "k.pth").exists() and not (run / "k_comp.pth").exists()
