"""Post-refit damage (obs): exact errors, curves, the re-selecting compensation, the method."""
from __future__ import annotations

import itertools

import pytest
import torch

import srprune
from srprune.cli import main
from srprune.pruning.adapter import masked
from srprune.pruning.catanet import CATANetAdapter
from srprune.pruning.compensate import (CompensationSettings, compensate_model,
                                        compensated_copy, consumers)
from srprune.pruning.methods import METHOD_CLASSES, METHODS, teacher_curves, teacher_quadratics
from srprune.pruning.obs import Quadratic, removal_curve, removal_error, single_errors
from srprune.pruning.selection import Selector
from tiny_catanet import owned_slices, tiny_catanet, unit_index
from vit_adapter import TinyViT, TinyViTAdapter, ViTConfig

ADAPTER = CATANetAdapter()


def problem(samples=40, columns=12, outputs=5, bias=True, ridge=0.3, seed=0):
    """A random refit problem: Z = [X, 1], targets Y, prior W0 and its Quadratic."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(samples, columns, generator=gen, dtype=torch.float64)
    z = torch.cat([x, torch.ones(samples, 1, dtype=torch.float64)], 1) if bias else x
    y = torch.randn(samples, outputs, generator=gen, dtype=torch.float64)
    prior = torch.randn(z.shape[1], outputs, generator=gen, dtype=torch.float64)
    penalty = ridge * float(x.pow(2).sum(0).mean())
    quad = Quadratic.ridge(z.T @ z, z.T @ y, float((y * y).sum()), columns, penalty, prior)
    return z, y, prior, penalty, quad


def refit_error(z, y, prior, penalty, columns, keep):
    """The measured objective after refitting only the kept columns (and the bias), directly:
    the squared error plus the ridge's pull of every column to its prior (a removed column is 0;
    with ridge 0, the least-squares error alone)."""
    index = torch.cat([keep.nonzero().flatten(), torch.arange(columns, z.shape[1])])
    zk = z[:, index]
    reg = torch.zeros(len(index), dtype=torch.float64)
    reg[:int(keep.sum())] = penalty
    theta = torch.linalg.solve(zk.T @ zk + torch.diag(reg),
                               zk.T @ y + reg[:, None] * prior[index])
    fit = (zk @ theta - y).pow(2).sum()
    weights = torch.zeros(columns, y.shape[1], dtype=torch.float64)
    weights[keep] = theta[:int(keep.sum())]
    return float(fit + penalty * (weights - prior[:columns]).pow(2).sum())


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_removal_error_is_the_measured_refit_error(bias, ridge):
    """E(M) = (refit error with M removed) - (refit error with every column), to 1e-6."""
    z, y, prior, penalty, quad = problem(bias=bias, ridge=ridge)
    inverse = torch.linalg.inv(quad.a)
    theta = inverse @ quad.b
    full = refit_error(z, y, prior, penalty, 12, torch.ones(12, dtype=torch.bool))
    assert quad.value(theta) == pytest.approx(full, rel=1e-9)
    gen = torch.Generator().manual_seed(3)
    for size in (1, 3, 7, 12):
        removed = torch.randperm(12, generator=gen)[:size]
        keep = torch.ones(12, dtype=torch.bool)
        keep[removed] = False
        measured = refit_error(z, y, prior, penalty, 12, keep) - full
        assert removal_error(inverse, theta, removed) == pytest.approx(measured, rel=1e-6)
        kept = quad.keep(keep)
        assert kept.value(kept.solve()) == pytest.approx(full + measured, rel=1e-6)


@pytest.mark.parametrize("units,width", [(12, 1), (10, 2)])
def test_greedy_curve_is_monotone_and_its_masks_hold_their_error(units, width):
    z, y, prior, penalty, quad = problem(samples=60, columns=units * width)
    error, keep = removal_curve(quad, units, width)
    assert error[units] == 0 and (error[:-1] >= error[1:]).all()      # more units, less error
    assert keep.sum(1).tolist() == list(range(units + 1))
    assert (keep[:-1] <= keep[1:]).all()                              # greedy: nested sets
    full = refit_error(z, y, prior, penalty, units * width, torch.ones(units * width, dtype=torch.bool))
    for kept in (0, 3, units - 1):
        columns = keep[kept].bool().repeat_interleave(width)
        measured = refit_error(z, y, prior, penalty, units * width, columns) - full
        assert float(error[kept]) == pytest.approx(measured, rel=1e-6, abs=1e-9)


def test_exact_curve_searches_every_subset_of_few_units():
    units, width = 5, 3
    z, y, prior, penalty, quad = problem(samples=50, columns=units * width)
    error, keep = removal_curve(quad, units, width)
    full = refit_error(z, y, prior, penalty, units * width, torch.ones(units * width, dtype=torch.bool))
    for kept in range(units + 1):
        best = min(refit_error(z, y, prior, penalty, units * width,
                               torch.tensor([u in s for u in range(units)]).repeat_interleave(width))
                   for s in itertools.combinations(range(units), kept)) - full
        assert float(error[kept]) == pytest.approx(best, rel=1e-6, abs=1e-9)
        columns = keep[kept].bool().repeat_interleave(width)
        assert refit_error(z, y, prior, penalty, units * width, columns) - full == pytest.approx(
            best, rel=1e-6, abs=1e-9)
    single = single_errors(quad, units, width)
    assert float(single.min()) == pytest.approx(float(error[units - 1]), rel=1e-6)


def duplicate_neuron(model, group, source, copy):
    """Unit ``copy`` computes what ``source`` does: removing one of them costs the refit nothing."""
    with torch.no_grad():
        for key, axis, width in owned_slices(model, group):
            if axis == 0:
                p = model.get_parameter(key)
                p.index_copy_(0, unit_index([copy], width), p.index_select(0, unit_index([source], width)))


def test_the_reselecting_compensation_removes_what_the_refit_absorbs():
    group = "blocks.0.0.mlp.fn"
    teacher = tiny_catanet().eval()
    duplicate_neuron(teacher, group, source=0, copy=1)
    masks = {g.name: torch.ones(g.count) for g in ADAPTER.groups(teacher)}
    masks[group][5] = 0          # a unit the refit cannot replace
    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    settings = CompensationSettings(ridge=1e-6, target="output")
    refit = compensated_copy(ADAPTER, teacher, masks, x, settings, True, False)
    student, chosen, fit = refit.student, refit.masks, refit.fit
    assert int(chosen[group].sum()) == int(masks[group].sum())      # same count, same MACs
    assert chosen[group][0] + chosen[group][1] == 1 and chosen[group][5] == 1
    weight = f"{group}.fc2.weight"
    assert fit[weight]["after"] < 1e-8
    ADAPTER.check_masks(student, chosen)
    for name, axis, width in owned_slices(student, group):          # zeroed like export-zeroed
        removed = unit_index((chosen[group] == 0).nonzero().flatten().tolist(), width)
        assert student.get_parameter(name).index_select(axis, removed).abs().max() == 0
    # compensating the zeroed teacher with the chosen masks gives the same student
    again = tiny_catanet()
    again.load_state_dict(teacher.state_dict())
    ADAPTER.zero_units(again, chosen)
    compensate_model(ADAPTER, again, teacher, chosen, x, settings, progress=False)
    for key, value in student.state_dict().items():
        assert torch.allclose(value, again.state_dict()[key], atol=1e-5), key
    with torch.no_grad():                    # the output from the refit's own streams
        assert torch.allclose(refit.output, student(x), atol=1e-5)


def test_curves_predict_the_refit_of_the_teacher_layer():
    """On the teacher's own inputs, a curve point is the layer's measured refit error."""
    teacher = tiny_catanet().eval()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    groups = [g for g in ADAPTER.groups(teacher) if g.kind in ("head", "neuron")]
    settings = CompensationSettings(ridge=1e-2, target="output", batch_size=2)
    curves, scores = teacher_curves(ADAPTER, teacher, x, groups, settings, progress=False)
    group = "blocks.1.1.layer.1.fn"
    kept = 5
    masks = {group: curves[group]["keep"][kept]}
    student = tiny_catanet()
    student.load_state_dict(teacher.state_dict())
    ADAPTER.zero_units(student, masks)
    fc2 = student.get_submodule(f"{group}.fc2")
    seen = {}
    hook = teacher.get_submodule(f"{group}.fc2").register_forward_hook(
        lambda m, a, o: seen.update(x=a[0].reshape(-1, a[0].shape[-1]).double(),
                                    y=o.reshape(-1, o.shape[-1]).double()))
    with torch.no_grad():
        teacher(x)
    hook.remove()
    compensate_model(ADAPTER, student, teacher, masks, x, settings, progress=False)
    penalty = settings.ridge * float(seen["x"].pow(2).sum(0).mean())
    z = torch.cat([seen["x"], torch.ones(len(seen["x"]), 1, dtype=torch.float64)], 1)
    theta = torch.cat([fc2.weight.detach().T, fc2.bias.detach()[None]]).double()
    prior = torch.cat([teacher.get_submodule(f"{group}.fc2").weight.detach().T,
                       teacher.get_submodule(f"{group}.fc2").bias.detach()[None]]).double()
    left = float((z @ theta - seen["y"]).pow(2).sum()
                 + penalty * (theta[:-1] - prior[:-1]).pow(2).sum())
    assert float(curves[group]["err"][kept]) == pytest.approx(left, rel=1e-4)
    assert scores[group].shape == (12,)


def test_selection_from_curves_meets_the_budget_with_the_curves_units():
    teacher = tiny_catanet().eval()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    groups = [g for g in ADAPTER.groups(teacher) if g.kind in ("head", "neuron")]
    curves, scores = teacher_curves(ADAPTER, teacher, x, groups, CompensationSettings(), False)
    lr = (16, 16)
    selector = Selector(groups, scores, lambda k: ADAPTER.macs(teacher, k, lr), curves=curves)
    for budget in (0.9, 0.7, 0.55):
        chosen, _ = selector.select(budget, "knapsack")
        assert chosen.macs == ADAPTER.macs(teacher, {k: int(v.sum()) for k, v in chosen.masks.items()}, lr)
        assert chosen.macs <= budget * selector.total
        for name, mask in chosen.masks.items():
            assert torch.equal(mask.bool(), curves[name]["keep"][int(mask.sum())].bool()), name
        assert chosen.loss == pytest.approx(sum(float(curves[n]["err"][int(m.sum())])
                                                for n, m in chosen.masks.items()))


def test_local_moves_measure_new_candidates_and_keep_the_best():
    teacher = tiny_catanet().eval()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    groups = [g for g in ADAPTER.groups(teacher) if g.kind in ("head", "neuron")]
    curves, scores = teacher_curves(ADAPTER, teacher, x, groups, CompensationSettings(), False)
    selector = Selector(groups, scores, lambda k: ADAPTER.macs(teacher, k, (16, 16)), curves=curves)
    gen = torch.Generator().manual_seed(0)
    seen = []

    def measure(masks):
        seen.append(masks)
        return float(torch.rand(1, generator=gen))

    chosen, tried = selector.select(0.7, "measured", measure, steps=6, seed=1)
    assert len(tried) == len(seen) and chosen.distortion == min(c.distortion for c in tried)
    sweep = sum(1 for c in tried if c.weights == list(selector.head_weights(c.alpha)))
    assert len(tried) > sweep            # local moves found masks the sweep did not
    for a, b in itertools.combinations(tried, 2):
        assert not all(torch.equal(a.proposed[k], b.proposed[k]) for k in a.proposed)


def test_obs_is_a_registered_method(tmp_path, make_images):
    assert "obs" in METHODS and METHOD_CLASSES["obs"].reselects
    teacher = tmp_path / "teacher.pth"
    srprune.save_model(tiny_catanet(upscale=1), teacher)
    make_images(tmp_path / "train", 2, (20, 22))
    common = ["score-units", "--teacher", str(teacher), "--method", "obs", "--calib-hr",
              str(tmp_path / "train"), "--num-crops", "3", "--crop-size", "12"]
    assert main([*common, "--out", str(tmp_path / "s.pth")]) == 0
    out = tmp_path / "masks.pth"
    comp = tmp_path / "comp.pth"
    assert main(["search-masks", "--teacher", str(teacher), "--scores", str(tmp_path / "s.pth"),
                 "--mac-constraint", "0.7", "--calib-hr", str(tmp_path / "train"),
                 "--num-crops", "3", "--crop-size", "12", "--search-steps", "2",
                 "--out", str(out), "--compensated-out", str(comp)]) == 0
    artifact = torch.load(out, weights_only=True)
    assert artifact["reselected"] and artifact["achieved_mac_ratio"] <= 0.7
    # the written winner equals the compensate stage run on its zeroed export
    zeroed, again = tmp_path / "zeroed.pth", tmp_path / "again.pth"
    assert main(["export-zeroed", "--teacher", str(teacher), "--masks", str(out),
                 "--out", str(zeroed)]) == 0
    assert main(["compensate", "--teacher", str(teacher), "--model", str(zeroed),
                 "--calib-hr", str(tmp_path / "train"), "--num-crops", "3", "--crop-size", "12",
                 "--out", str(again)]) == 0
    first, second = srprune.load_model(comp), srprune.load_model(again)
    assert first.checkpoint_meta["stage"] == "compensated"
    for key, value in first.state_dict().items():
        assert torch.allclose(value, second.state_dict()[key], atol=1e-5), key


def test_obs_runs_through_the_adapter_interface_of_another_architecture():
    model = TinyViT(ViTConfig()).eval()
    adapter = TinyViTAdapter()
    x = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    groups = adapter.groups(model)
    curves, scores = teacher_curves(adapter, model, x, groups, CompensationSettings(), False)
    assert set(curves) == {g.name for g in groups}
    masks = {g.name: curves[g.name]["keep"][max(1, g.count // 2)] for g in groups}
    refit = compensated_copy(adapter, model, masks, x, CompensationSettings(), True, False)
    student, chosen = refit.student, refit.masks
    assert {k: int(v.sum()) for k, v in chosen.items()} == {k: int(v.sum()) for k, v in masks.items()}
    with torch.no_grad(), masked(adapter, student, chosen):
        assert torch.isfinite(student(x)).all()
        assert torch.allclose(refit.output, student(x), atol=1e-5)
    assert consumers(adapter, student, chosen)


def test_the_workflow_scores_each_method_on_the_crops_its_class_names():
    """rules/common.smk's list of methods with their own (OPTIN) crops is the registry's."""
    import re
    from pathlib import Path
    rules = (Path(__file__).resolve().parents[2] / "rules" / "common.smk").read_text()
    listed = re.search(r"OWN_CROPS_METHODS = \(([^)]*)\)", rules).group(1)
    names = {n.strip().strip("\"'") for n in listed.split(",") if n.strip()}
    assert names == {name for name, cls in METHOD_CLASSES.items() if cls.scoring_crops}


def test_obs_scores_channels_by_the_refit_and_q_k_by_the_fallback(tmp_path, make_images, caplog):
    """v channels: the error the refit of proj leaves without that column; q/k channels (through
    the softmax): magnitudes, scaled to their heads' errors; curves only for whole modules."""
    teacher_model = tiny_catanet(upscale=1).eval()
    teacher = tmp_path / "teacher.pth"
    srprune.save_model(teacher_model, teacher)
    make_images(tmp_path / "train", 2, (20, 22))
    scores = tmp_path / "s.pth"
    calib = ["--calib-hr", str(tmp_path / "train"), "--num-crops", "3", "--crop-size", "12"]
    with caplog.at_level("WARNING"):
        assert main(["score-units", "--teacher", str(teacher), "--method", "obs", *calib,
                     "--units", "head,neuron,qk_channel,v_channel", "--out", str(scores)]) == 0
    assert "softmax" in caplog.text
    artifact = torch.load(scores, weights_only=True)
    groups = {g.name: g for g in ADAPTER.groups(teacher_model)}
    parents = {g.parent for g in groups.values() if g.parent}
    assert set(artifact["curves"]) == {n for n, g in groups.items()
                                       if g.kind == "neuron" or (g.kind == "head" and n not in parents)}
    x = artifact["calibration_crops"]
    v = next(g for g in groups.values() if g.kind == "v_channel")
    quads = teacher_quadratics(ADAPTER, teacher_model, x, [v], CompensationSettings(), False)
    quad, width = quads[v.name]
    assert width == 1
    best = quad.value(quad.solve())
    for unit in (0, v.count - 1):                   # the refit without that column, measured
        keep = torch.ones(quad.columns, dtype=torch.bool)
        keep[unit] = False
        sub = quad.keep(keep)
        left = sub.value(sub.solve()) - best
        assert float(artifact["scores"][v.name][unit]) == pytest.approx(left, rel=1e-3)
    qk = next(g for g in groups.values() if g.kind == "qk_channel")
    magnitude = ADAPTER.unit_magnitude(teacher_model, qk)
    ratio = artifact["scores"][qk.name].double() / magnitude.double()
    assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-5)     # magnitude order
    assert float(artifact["scores"][qk.name].double().mean()) == pytest.approx(
        float(artifact["scores"][qk.parent].double().mean()) / qk.per_parent, rel=1e-5)
    masks = tmp_path / "masks.pth"
    assert main(["search-masks", "--teacher", str(teacher), "--scores", str(scores),
                 "--mac-constraint", "0.7", *calib, "--search-steps", "1", "--out",
                 str(masks)]) == 0
    chosen = torch.load(masks, weights_only=True)
    assert chosen["achieved_mac_ratio"] <= 0.7
    assert any(not bool(chosen["masks"][n].all()) for n, g in groups.items()
               if g.kind in ("qk_channel", "v_channel"))
