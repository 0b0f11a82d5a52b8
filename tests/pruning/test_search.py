"""The mask-search stages through the CLI: artifacts, budgets, zeroed export, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

import srprune
from srprune.cli import build_parser, main
from srprune.pruning.importance import OptinSettings
from srprune.pruning.adapter import masked
from srprune.pruning.catanet import CATANetAdapter
from tiny_catanet import tiny_catanet

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, make_images):
    root = tmp_path_factory.mktemp("search")
    teacher = root / "teacher.pth"
    srprune.save_model(tiny_catanet(upscale=1), teacher)
    make_images(root / "train", 2, (20, 22))
    return root, teacher


def score(setup, method, out_name, *extra):
    root, teacher = setup
    out = root / out_name
    code = main(["score-units", "--teacher", str(teacher), "--method", method, "--out", str(out),
                 "--calib-hr", str(root / "train"), "--num-crops", "3", "--crop-size", "12",
                 "--tokens", "16", *extra])
    assert code == 0
    return out


def test_scores_artifact_is_plain_and_reproducible(setup):
    first = torch.load(score(setup, "optin", "a.pth"), weights_only=True)
    second = torch.load(score(setup, "optin", "b.pth"), weights_only=True)
    assert first["kind"] == "unit_scores" and first["method"] == "optin"
    assert first["calibration_crops"].shape == (3, 3, 12, 12)
    assert first["settings"]["tokens"] == 16 and first["calibration"]["num_crops"] == 3
    assert first["settings"]["lam"] == OptinSettings().lam and first["settings"]["scorer"] == "exact"
    lam = first["settings"]["lam"]
    for name, values in first["scores"].items():
        assert torch.equal(values, second["scores"][name])
        terms = first["terms"][name]
        assert torch.allclose(values, terms["md"] + lam * first["balance_factor"] * terms["out"])


def test_optin_defaults_agree_everywhere():
    """The measured defaults are the same in OptinSettings, the CLI and the config schema."""
    schema = yaml.safe_load((ROOT / "config/schema.yaml").read_text())
    optin = schema["properties"]["prune"]["properties"]["optin"]["properties"]
    args = build_parser().parse_args(["score-units", "--teacher", "t", "--out", "o"])
    defaults = OptinSettings()
    for key in ("lam", "scorer", "probes", "tokens", "max_batch"):
        assert getattr(args, key) == getattr(defaults, key) == optin[key]["default"], key
    assert defaults.lam == 0.3  # measured on the validation split, see the importance docstring


@pytest.mark.parametrize("method", ["optin", "magnitude", "random"])
@pytest.mark.parametrize("budget", [0.9, 0.6])
def test_masks_meet_the_budget_and_zeroed_equals_masked(setup, method, budget, capsys):
    root, teacher = setup
    scores = score(setup, method, f"{method}.pth")
    masks_path = root / f"masks_{method}_{budget}.pth"
    assert main(["search-masks", "--teacher", str(teacher), "--scores", str(scores),
                 "--mac-constraint", str(budget), "--out", str(masks_path)]) == 0
    artifact = torch.load(masks_path, weights_only=True)
    assert artifact["achieved_mac_ratio"] <= budget
    assert artifact["macs_pruned"] == CATANetAdapter().macs(
        srprune.load_model(teacher), artifact["kept"], tuple(artifact["macs_lr_size"]))
    assert artifact["method"] == method and artifact["mac_constraint"] == budget
    assert set(artifact["masks"]) == set(artifact["scores"])
    assert "ratio" in capsys.readouterr().out

    zeroed_path = root / f"zeroed_{method}_{budget}.pth"
    assert main(["export-zeroed", "--teacher", str(teacher), "--masks", str(masks_path),
                 "--out", str(zeroed_path)]) == 0
    zeroed, model = srprune.load_model(zeroed_path), srprune.load_model(teacher)
    assert zeroed.checkpoint_meta["stage"] == "zeroed"
    x = torch.rand(2, 3, 13, 11, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), masked(CATANetAdapter(), model, artifact["masks"]):
        expected = model(x)
    with torch.no_grad():
        assert (zeroed(x) - expected).abs().max().item() <= 1e-5


def test_budget_below_floor_and_wrong_teacher(setup, capsys):
    root, teacher = setup
    scores = score(setup, "magnitude", "m.pth")
    assert main(["search-masks", "--teacher", str(teacher), "--scores", str(scores),
                 "--mac-constraint", "0.01", "--out", str(root / "x.pth")]) == 2
    assert "below the floor of" in capsys.readouterr().err
    assert not (root / "x.pth").exists()
    other = root / "other.pth"
    srprune.save_model(tiny_catanet(seed=5, upscale=1), other)
    assert main(["search-masks", "--teacher", str(other), "--scores", str(scores),
                 "--mac-constraint", "0.9", "--out", str(root / "y.pth")]) == 2
    assert "another teacher" in capsys.readouterr().err


def test_sketch_scorer_through_the_cli(setup, capsys):
    """--scorer and --probes are recorded; parts of a sketch gather into the whole."""
    root, _ = setup
    whole = torch.load(score(setup, "optin", "sk.pth", "--scorer", "sketch", "--probes", "3",
                             "--lam", "0.5"), weights_only=True)
    assert whole["settings"]["scorer"] == "sketch" and whole["settings"]["probes"] == 3
    assert whole["settings"]["lam"] == 0.5
    exact = torch.load(score(setup, "optin", "ex.pth"), weights_only=True)
    assert exact["settings"]["scorer"] == "exact"
    parts = [score(setup, "optin", f"sk{k}.pth", "--scorer", "sketch", "--probes", "3", "--lam",
                   "0.5", "--part", f"{k}/2") for k in range(2)]
    assert main(["gather-scores", *map(str, parts), "--out", str(root / "skj.pth")]) == 0
    joined = torch.load(root / "skj.pth", weights_only=True)
    for name, values in whole["scores"].items():
        assert torch.allclose(joined["scores"][name], values, rtol=1e-5), name
    capsys.readouterr()
    with pytest.raises(SystemExit):
        score(setup, "optin", "bad.pth", "--scorer", "fast")
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(AssertionError):  # exit code 2, not 0
        score(setup, "optin", "bad.pth", "--scorer", "sketch", "--probes", "0")
    assert "probes must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["optin", "magnitude", "random"])
def test_scoring_split_into_jobs_equals_one_job(setup, method):
    root, _ = setup
    whole = torch.load(score(setup, method, f"whole_{method}.pth"), weights_only=True)
    parts = [score(setup, method, f"part{k}_{method}.pth", "--part", f"{k}/2") for k in range(2)]
    assert main(["gather-scores", *map(str, parts), "--out", str(root / f"joined_{method}.pth")]) == 0
    joined = torch.load(root / f"joined_{method}.pth", weights_only=True)
    assert list(joined["scores"]) == list(whole["scores"])
    for name, values in whole["scores"].items():
        assert torch.equal(joined["scores"][name], values), name
    assert joined["part"] is None


def test_a_part_alone_is_refused(setup, capsys):
    root, teacher = setup
    part = score(setup, "magnitude", "only_part.pth", "--part", "1/2")
    assert main(["gather-scores", str(part), "--out", str(root / "j.pth")]) == 2
    assert "exactly once" in capsys.readouterr().err
    assert main(["search-masks", "--teacher", str(teacher), "--scores", str(part),
                 "--mac-constraint", "0.9", "--out", str(root / "m.pth")]) == 2
    assert "one scoring job only" in capsys.readouterr().err
