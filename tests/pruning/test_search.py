"""The mask-search stages through the CLI: artifacts, budgets, zeroed export, clear errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import srprune
from srprune.cli import main
from srprune.pruning.adapter import masked
from srprune.pruning.calibration import Calibration
from srprune.pruning.catanet import CATANetAdapter
from srprune.pruning.compensate import CompensationSettings
from srprune.pruning.importance import OptinSettings
from srprune.pruning.methods import METHODS
from srprune.pruning.search import Compensated, score_units
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


def test_per_image_terms_are_kept_on_request(setup):
    root, teacher = setup
    calibration = Calibration(hr=str(root / "train"), num_crops=3, crop_size=12)
    settings = OptinSettings(tokens=16)
    artifact = score_units(teacher, "optin", calibration, settings, progress=False, per_image=True)
    for terms in artifact["terms"].values():
        assert terms["md_images"].shape[1] == 3
        assert torch.allclose(terms["md_images"].mean(1), terms["md"])
        assert torch.allclose(terms["out_images"].mean(1), terms["out"])
    with pytest.raises(ValueError, match="exact scorer"):
        score_units(teacher, "optin", calibration, OptinSettings(tokens=16, scorer="sketch"),
                    progress=False, per_image=True)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget", [0.9, 0.6])
def test_masks_meet_the_budget_and_zeroed_equals_masked(setup, method, budget, capsys):
    root, teacher = setup
    scores = score(setup, method, f"{method}.pth")
    masks_path = root / f"masks_{method}_{budget}.pth"
    assert main(["search-masks", "--teacher", str(teacher), "--scores", str(scores),
                 "--mac-constraint", str(budget), "--selection", "measured",
                 "--out", str(masks_path)]) == 0   # compensated: see the test above
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


def test_compensated_selection_keeps_the_least_distorting_compensated_candidate(setup):
    """Every candidate is measured after compensation; the chosen one is the best so measured."""
    root, teacher = setup
    scores = score(setup, "magnitude", "mag_c.pth")
    common = ["--teacher", str(teacher), "--scores", str(scores), "--mac-constraint", "0.6",
              "--calib-hr", str(root / "train"), "--num-crops", "3", "--crop-size", "12"]
    for selection in ("measured", "compensated"):
        assert main(["search-masks", *common, "--selection", selection, "--ridge", "0.01",
                     "--search-steps", "0", "--out", str(root / f"sel_{selection}.pth")]) == 0
    measured, compensated = (torch.load(root / f"sel_{s}.pth", weights_only=True)
                             for s in ("measured", "compensated"))
    assert compensated["selection"] == "compensated"
    assert compensated["selection_compensation"]["ridge"] == 0.01
    model = srprune.load_model(teacher).eval()
    crops = Calibration(hr=str(root / "train"), num_crops=3, crop_size=12).crops(1)
    with torch.no_grad():
        reference = model(crops)
    adapter = CATANetAdapter()
    settings = CompensationSettings(ridge=0.01)
    distortions = [c["distortion"] for c in compensated["candidates"]]
    assert len(distortions) > 1 and len(measured["candidates"]) > 1
    measure = Compensated(adapter, model, crops, reference, settings)
    assert measure(compensated["masks"])[0] == pytest.approx(min(distortions), rel=1e-6)
    # compensation lowers every candidate's error below its uncompensated one (the sweeps
    # follow their own measurements, so compare the head weights both measured)
    before = {c["alpha"]: c["distortion"] for c in measured["candidates"]}
    after = {c["alpha"]: c["distortion"] for c in compensated["candidates"]}
    assert set(before) & set(after)
    for alpha in set(before) & set(after):
        assert after[alpha] < before[alpha], alpha


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
    with pytest.raises(SystemExit) as exit_:  # refused by the parser, exit code 2
        score(setup, "optin", "bad.pth", "--scorer", "sketch", "--probes", "0")
    assert exit_.value.code == 2 and "--probes: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("method", METHODS)
def test_scoring_split_into_jobs_equals_one_job(setup, method):
    root, _ = setup
    whole = torch.load(score(setup, method, f"whole_{method}.pth"), weights_only=True)
    parts = [score(setup, method, f"part{k}_{method}.pth", "--part", f"{k}/2") for k in range(2)]
    assert main(["gather-scores", *map(str, parts), "--out", str(root / f"joined_{method}.pth")]) == 0
    joined = torch.load(root / f"joined_{method}.pth", weights_only=True)
    assert list(joined["scores"]) == list(whole["scores"])
    for name, values in whole["scores"].items():
        assert torch.equal(joined["scores"][name], values), name
    for name, curve in whole.get("curves", {}).items():
        assert all(torch.equal(joined["curves"][name][k], curve[k]) for k in curve), name
    assert joined["part"] is None


def test_obs_parts_with_channel_units_gather_into_the_whole(setup):
    """Curves cover whole modules only; the gathered artifact still equals one job's."""
    root, _ = setup
    units = ("--units", "head,neuron,qk_channel,v_channel")
    whole = torch.load(score(setup, "obs", "whole_ch.pth", *units), weights_only=True)
    parts = [score(setup, "obs", f"part{k}_ch.pth", "--part", f"{k}/2", *units) for k in range(2)]
    assert main(["gather-scores", *map(str, parts), "--out", str(root / "joined_ch.pth")]) == 0
    joined = torch.load(root / "joined_ch.pth", weights_only=True)
    assert list(joined["scores"]) == list(whole["scores"]) and len(whole["curves"]) < len(whole["scores"])
    assert list(joined["curves"]) == list(whole["curves"])
    for name, values in whole["scores"].items():
        assert torch.equal(joined["scores"][name], values), name


def test_a_part_alone_is_refused(setup, capsys):
    root, teacher = setup
    part = score(setup, "magnitude", "only_part.pth", "--part", "1/2")
    assert main(["gather-scores", str(part), "--out", str(root / "j.pth")]) == 2
    assert "exactly once" in capsys.readouterr().err
    assert main(["search-masks", "--teacher", str(teacher), "--scores", str(part),
                 "--mac-constraint", "0.9", "--out", str(root / "m.pth")]) == 2
    assert "one scoring job only" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["optin", "magnitude", "random"])
def test_channel_units_are_scored_and_recorded(setup, method, capsys):
    root, teacher = setup
    units = "head,qk_channel,v_channel,neuron"
    artifact = torch.load(score(setup, method, f"ch_{method}.pth", "--units", units),
                          weights_only=True)
    default = torch.load(score(setup, method, f"def_{method}.pth"), weights_only=True)
    assert artifact["units"] == units.split(",") and default["units"] == ["head", "neuron"]
    names = [g.name for g in CATANetAdapter().groups(srprune.load_model(teacher))]
    assert list(artifact["scores"]) == names == [g["name"] for g in artifact["groups"]]
    assert [g["name"] for g in default["groups"]] == [n for n in names
                                                      if not n.endswith((".qk", ".v"))]
    for name in ("blocks.0.0.iasa_attn.qk", "blocks.1.1.layer.0.fn.v"):
        values = artifact["scores"][name]
        assert values.shape == (8,) and torch.isfinite(values).all() and values.std() > 0
    # head and neuron scores do not depend on whether channels are scored too
    if method != "optin":  # OPTIN's balance factor sums over every scored unit
        for name, values in default["scores"].items():
            assert torch.equal(artifact["scores"][name], values), name
    # the knapsack keeps equal widths per kept head: valid channel masks, a smaller rebuild
    out = root / f"ch_masks_{method}.pth"
    assert main(["search-masks", "--teacher", str(teacher), "--scores",
                 str(root / f"ch_{method}.pth"), "--mac-constraint", "0.6", "--num-crops", "4",
                 "--crop-size", "16", "--out", str(out)]) == 0
    masks = torch.load(out, weights_only=True)
    assert masks["units"] == units.split(",") and masks["achieved_mac_ratio"] <= 0.6
    model = srprune.load_model(teacher)
    CATANetAdapter().check_masks(model, masks["masks"])
    assert masks["kept"] == {k: int(v.sum()) for k, v in masks["masks"].items()}


def test_bad_units_are_refused(setup, capsys):
    root, teacher = setup
    for units, message in (("head,channel", "units must be"), ("v_channel,neuron", "need 'head'")):
        assert main(["score-units", "--teacher", str(teacher), "--method", "magnitude",
                     "--units", units, "--out", str(root / "bad.pth")]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("heads", [1, 4])
def test_scores_and_masks_of_another_model_are_refused(setup, heads, capsys):
    """Scores of the 2-head teacher read as a 1- or 4-head model: an error naming the group."""
    root, teacher = setup
    scores = score(setup, "magnitude", "mag_for_mismatch.pth")
    other = ["--model-config", f"{{heads: {heads}, tab_heads: null, lrsa_heads: null, "
                               "tab_qk: null, tab_v: null, lrsa_qk: null, lrsa_v: null}"]
    masks_path = root / "mismatch_masks.pth"
    assert main(["search-masks", "--teacher", str(teacher), "--scores", str(scores),
                 "--mac-constraint", "0.8", "--selection", "knapsack", *other,
                 "--out", str(root / "bad.pth")]) == 2
    err = capsys.readouterr().err
    assert "units in group" in err and "made for another model" in err and not (root / "bad.pth").exists()
    assert main(["search-masks", "--teacher", str(teacher), "--scores", str(scores),
                 "--mac-constraint", "0.8", "--selection", "knapsack",
                 "--out", str(masks_path)]) == 0
    assert torch.load(masks_path, weights_only=True)["groups"]
    assert main(["export-zeroed", "--teacher", str(teacher), "--masks", str(masks_path), *other,
                 "--out", str(root / "bad_zeroed.pth")]) == 2
    assert "made for another model" in capsys.readouterr().err


def test_non_finite_weights_and_scores_are_errors(setup, capsys):
    """One NaN weight used to make every score NaN and prune every unit, exiting 0."""
    root, teacher = setup
    model = srprune.load_model(teacher)
    with torch.no_grad():
        model.get_parameter("blocks.0.0.mlp.fn.fc1.weight")[3, 1] = float("nan")
    srprune.save_model(model, root / "nan_teacher.pth")
    assert main(["score-units", "--teacher", str(root / "nan_teacher.pth"), "--method",
                 "magnitude", "--out", str(root / "nan_scores.pth")]) == 2
    err = capsys.readouterr().err
    assert "blocks.0.0.mlp.fn.fc1.weight holds 1 non-finite values" in err and "(3, 1)" in err

    scores_path = score(setup, "magnitude", "finite.pth")
    scores = torch.load(scores_path, weights_only=True)
    name = next(iter(scores["scores"]))
    scores["scores"][name][0] = float("nan")
    torch.save(scores, root / "nan_scores.pth")
    assert main(["search-masks", "--teacher", str(teacher), "--scores", str(root / "nan_scores.pth"),
                 "--mac-constraint", "0.8", "--out", str(root / "nan_masks.pth")]) == 2
    assert f"{name} holds 1 non-finite values" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        score(setup, "optin", "nan_lam.pth", "--lam", "nan")
    assert exit_.value.code == 2 and "--lam: must be a finite number" in capsys.readouterr().err
