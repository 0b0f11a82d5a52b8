"""Do the scores rank what compensation leaves? Kendall tau against the measured PSNR loss.

The teacher is ../shared/weights/catanet_x4_third_party.pth. ``--units`` single units (heads and
neurons, sampled uniformly, seeded) and ``--sets`` unit sets (each module keeping a random
fraction in [``--keep-low``, 1] of its units, chosen at random) are each removed from the
teacher, the model is compensated as the compensate stage does (32 LR crops of 48x48 of the
training split, ``stream`` target, ridge 1e-2) and its PSNR loss against the teacher is measured
on the validation split (the 20 held-out BSD200 images, ``--val-images`` of them). Each method
predicts the damage of a removal:

* ``obs``: the error the refit leaves, E(M) summed over modules, from the teacher's inputs;
* ``optin``: the summed OPTIN scores of the removed units (``--optin-scores``: an artifact made
  earlier, e.g. by ``bench_pruning_quality.py``; otherwise scored here on 4 crops of 32x32);
* ``magnitude`` and ``random``: summed scores rescaled to MACs per module, as the selection
  reads them.

The table gives Kendall's tau between each prediction and the measured loss (1: the same order;
0: no relation), for single units and for sets. It tells whether a gain in the mask search
comes from ranking units or from choosing widths.

    python benchmarks/bench_importance_tau.py [--units 200] [--sets 50] [--threads 2]
        [--optin-scores S.pth] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import kendalltau

from _common import fmt_seconds, require_shared, set_threads, training_split
from srprune import load_model
from srprune.checkpoint import read_checkpoint
from srprune.data import load_pairs
from srprune.evaluate import score_model
from srprune.fileio import save_json
from srprune.progress import progress_bar
from srprune.pruning.calibration import Calibration
from srprune.pruning.compensate import CompensationSettings, compensate_model
from srprune.pruning.importance import OptinSettings
from srprune.pruning.methods import teacher_quadratics
from srprune.pruning.obs import removal_error, unit_columns
from srprune.pruning.registry import adapter_for
from srprune.pruning.search import finish_scores, score_units
from srprune.pruning.selection import Selector

WEIGHTS = "weights/catanet_x4_third_party.pth"
SCALE = 4


def sample_removals(groups, units: int, sets: int, keep_low: float, seed: int):
    """(single-unit removals, set removals) as lists of ``{group: removed unit indices}``."""
    rng = np.random.default_rng(seed)
    every = [(g.name, u) for g in groups for u in range(g.count)]
    singles = [{every[i][0]: [every[i][1]]} for i in rng.choice(len(every), units, replace=False)]
    many = []
    for _ in range(sets):
        removal = {}
        for g in groups:
            kept = int(round(rng.uniform(keep_low, 1.0) * g.count))
            removal[g.name] = sorted(rng.choice(g.count, g.count - kept, replace=False).tolist())
        many.append(removal)
    return singles, many


def first_images(folder: Path, count: int, out: Path) -> Path:
    """A folder of links to the first ``count`` images of ``folder`` (by name)."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.iterdir():
        stale.unlink()
    for path in sorted(folder.iterdir())[:count]:
        (out / path.name).symlink_to(path.resolve())
    return out


def masks_of(groups, removal):
    masks = {g.name: torch.ones(g.count) for g in groups}
    for name, units in removal.items():
        masks[name][units] = 0.0
    return masks


def predictions(removals, quads, scores):
    """Per method: the predicted damage of every removal."""
    solved = {}
    for name, (quad, width) in quads.items():   # A^-1, theta* and unit columns, once per module
        inverse = torch.linalg.pinv(quad.a, hermitian=True)
        solved[name] = (inverse, inverse @ quad.b, unit_columns(quad.columns // width, width))
    out = {"obs": [sum(removal_error(solved[n][0], solved[n][1],
                                     torch.cat([solved[n][2][u] for u in units]))
                       for n, units in removal.items() if units) for removal in removals]}
    for method, per_group in scores.items():
        out[method] = [sum(float(per_group[n][units].sum()) for n, units in r.items())
                       for r in removals]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=200)
    parser.add_argument("--sets", type=int, default=50)
    parser.add_argument("--keep-low", type=float, default=0.5,
                        help="a set's modules keep a random fraction in [this, 1] of their units")
    parser.add_argument("--val-images", type=int, default=20)
    parser.add_argument("--optin-scores", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "srprune_bench_tau")
    args = parser.parse_args()

    shared = require_shared(WEIGHTS)
    print(set_threads(args.threads), f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    split = training_split(args.workdir / "split")
    teacher = load_model(shared / WEIGHTS).eval()
    adapter = adapter_for(teacher)
    groups = [g for g in adapter.groups(teacher) if g.kind in ("head", "neuron")]
    settings = CompensationSettings()
    x = Calibration(hr=str(split["train"]), num_crops=32, crop_size=48, seed=args.seed).crops(SCALE)
    val = load_pairs(first_images(split["val"], args.val_images, args.workdir / "val"), SCALE)
    base = score_model(teacher, val, SCALE, ssim=False)["psnr"]

    start = time.perf_counter()
    quads = teacher_quadratics(adapter, teacher, x, groups, settings, progress=False)
    print(f"obs quadratics: {fmt_seconds(time.perf_counter() - start)}")
    if args.optin_scores:
        optin = finish_scores(read_checkpoint(args.optin_scores))["scores"]
    else:
        crops = Calibration(hr=str(split["train"]), num_crops=4, crop_size=32, seed=args.seed)
        optin = score_units(shared / WEIGHTS, "optin", crops, OptinSettings(), progress=False)["scores"]
    macs = lambda kept: adapter.macs(teacher, kept, adapter.reference_lr_size(teacher))  # noqa: E731
    raw = {"magnitude": {g.name: adapter.unit_magnitude(teacher, g) for g in groups},
           "random": {g.name: torch.rand(g.count, generator=torch.Generator().manual_seed(
               args.seed + i)) for i, g in enumerate(groups)}}
    scores = {"optin": {g.name: optin[g.name].double() for g in groups}}
    scores.update({m: Selector(groups, s, macs, distortion_scores=False).scores
                   for m, s in raw.items()})

    singles, sets = sample_removals(groups, args.units, args.sets, args.keep_low, args.seed)
    memo: dict = {}
    results = {}
    for kind, removals in (("units", singles), ("sets", sets)):
        losses = []
        start = time.perf_counter()
        for removal in progress_bar(removals, desc=f"measure {kind}", unit="removal"):
            masks = masks_of(groups, removal)
            student = copy.deepcopy(teacher)
            adapter.zero_units(student, masks)
            compensate_model(adapter, student, teacher, masks, x, settings, progress=False,
                             memo=memo)
            losses.append(base - score_model(student, val, SCALE, ssim=False)["psnr"])
        predicted = predictions(removals, quads, scores)
        results[kind] = {m: float(kendalltau(p, losses).statistic) for m, p in predicted.items()}
        results[kind + "_loss_db"] = [float(np.min(losses)), float(np.median(losses)),
                                      float(np.max(losses))]
        print(f"{kind}: {len(removals)} removals measured in "
              f"{fmt_seconds(time.perf_counter() - start)}; PSNR loss min / median / max "
              f"{np.min(losses):.4f} / {np.median(losses):.4f} / {np.max(losses):.4f} dB",
              flush=True)

    print(f"\nKendall tau between predicted damage and measured PSNR loss after compensation "
          f"(validation split, {len(val)} images, teacher {base:.3f} dB):")
    print(f"{'method':<10} {'units':>7} {'sets':>7}")
    for method in results["units"]:
        print(f"{method:<10} {results['units'][method]:>7.3f} {results['sets'][method]:>7.3f}")
    save_json(results, args.workdir / "tau.json")


if __name__ == "__main__":
    main()
