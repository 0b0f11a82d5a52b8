"""OPTIN unit scoring: the sketch and hybrid scorers against the exact scorer, in the same run.

Teacher: ../shared/weights/catanet_x4_third_party.pth (a trained x4 CATANet, 1600 units). Both
scorers run on the same calibration crops (``--num-crops`` LR crops of ``--crop-size`` from the
training split, ``_common.training_split``; images smaller than a crop are skipped) with the
same ``OptinSettings``; only ``scorer`` differs. The hybrid scorer's terms are the exact terms of
the heads and the sketched terms of the other units (what ``hybrid_terms`` returns, tested), so
they are composed from the two runs; its time is the sketch's plus the exact scorer's time on
the head groups, which is measured on its own. Printed:

* wall time of each scorer (and ratios) and of one teacher forward of the calibration batch;
  on a loaded machine only the ratios mean something;
* Spearman rank correlation against exact, per kind of unit and overall, for the trajectory
  term ``md``, the output term ``out`` and the combined score at ``--lam``;
* for each budget r: the masks each scorer's scores give (the library's knapsack, unmeasured),
  the share of units on which they agree with exact, and the Set5 x4 PSNR of the zeroed teacher
  with each (Set5 only reports).

    OMP_NUM_THREADS=1 python benchmarks/bench_mask_search.py [--num-crops 32] [--crop-size 48]
        [--probes 8] [--lam L] [--budgets 0.7 0.5] [--threads 1]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from scipy.stats import spearmanr

from _common import (fmt_seconds, knapsack_masks, peak_rss_mib, require_shared, set_threads,
                     training_split, zeroed_psnr)
from srprune import load_model
from srprune.data import load_pairs
from srprune.evaluate import score_model
from srprune.fileio import file_sha256
from srprune.pruning.adapter import UNIT_KINDS_DEFAULT, groups_of_kinds
from srprune.pruning.importance import OptinSettings, combine, optin_terms
from srprune.pruning.calibration import Calibration
from srprune.pruning.registry import adapter_for
from srprune.pruning.sketch import sketch_terms

WEIGHTS = "weights/catanet_x4_third_party.pth"
SET5_HR, SET5_LR = "data/Set5/HR", "data/Set5/LR_bicubic/X4"
SCALE = 4


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def flat(values: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([values[name] for name in names])


def kind_names(groups) -> dict[str, list[str]]:
    """Group names per kind of unit (heads, neurons) and all of them."""
    return {"head": [g.name for g in groups if g.kind == "head"],
            "neuron": [g.name for g in groups if g.kind == "neuron"],
            "all": [g.name for g in groups]}


def spearman_table(groups, exact, sketch, lam: float) -> None:
    """Spearman of ``sketch`` against exact: md, out and the combined score, per kind and all."""
    columns = {key: ({n: t[key] for n, t in exact.items()}, {n: t[key] for n, t in sketch.items()})
               for key in ("md", "out")}
    columns[f"score (lam {lam:g})"] = (combine(exact, lam)[0], combine(sketch, lam)[0])
    kinds = kind_names(groups)
    print(f"{'Spearman':<10}" + "".join(f"{key:>18}" for key in columns))
    for kind, names in kinds.items():
        cells = [spearmanr(flat(a, names), flat(b, names))[0] for a, b in columns.values()]
        print(f"{kind + ' (' + str(sum(len(exact[n]['md']) for n in names)) + ')':<10}"
              + "".join(f"{c:>18.3f}" for c in cells))


def subset_scores(terms: dict[str, dict[str, torch.Tensor]], images: slice, lam: float
                  ) -> dict[str, torch.Tensor]:
    """Combined OPTIN scores from the per-image terms of ``images`` only."""
    part = {name: {"md": t["md_images"][:, images].mean(1), "out": t["out_images"][:, images].mean(1)}
            for name, t in terms.items()}
    return combine(part, lam)[0]


def stability(args, shared: Path, teacher: Path, calib_hr: Path) -> None:
    """Split-half rank stability of exact OPTIN scores, and the default search against the
    exact scorer on every crop: scores, masks (compensated selection), Set5 PSNR, wall times."""
    from bench_pruning_quality import cached, digest, psnr_of, run_budget
    from srprune.pruning.compensate import CompensationSettings
    from srprune.pruning.search import finish_scores, save_artifact, score_units
    from srprune.pruning.selection import DEFAULT_SELECTION
    from srprune.checkpoint import read_checkpoint

    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    settings = OptinSettings(tokens=args.tokens, lam=args.lam, seed=args.seed,
                             max_batch=args.max_batch)
    model = load_model(teacher)
    groups = groups_of_kinds(adapter_for(model).groups(model), UNIT_KINDS_DEFAULT)
    crops = Calibration(hr=str(calib_hr), num_crops=args.num_crops, crop_size=args.crop_size,
                        seed=args.seed)
    key = digest([vars(crops), settings.to_dict(), file_sha256(teacher)])
    reference, all_s = cached(workdir / f"scores_exact_all_{key}.pth",
                              lambda: score_units(teacher, "optin", crops, settings,
                                                  progress=False, per_image=True), save_artifact)
    terms = read_checkpoint(reference)["terms"]
    print(f"exact per-image terms of {sum(g.count for g in groups)} units on {args.num_crops} LR "
          f"crops {args.crop_size}x{args.crop_size} of {calib_hr}: {fmt_seconds(all_s)}"
          f" (when made)", flush=True)
    names = kind_names(groups)
    full = subset_scores(terms, slice(None), args.lam)
    print(f"\nSpearman of exact scores (lam {args.lam:g}) between disjoint sets of crops: split "
          f"halves (crops 0..n-1 against n..2n-1), and crops 0..n-1 against the other "
          f"{args.num_crops} - n")
    print(f"{'n':>3} " + "".join(f"{'halves ' + k:>14}" for k in names)
          + "".join(f"{'vs rest ' + k:>15}" for k in names))
    n = 1
    while 2 * n <= args.num_crops:
        a = subset_scores(terms, slice(0, n), args.lam)
        b = subset_scores(terms, slice(n, 2 * n), args.lam)
        halves = [spearmanr(flat(a, v), flat(b, v))[0] for v in names.values()]
        rest = subset_scores(terms, slice(n, None), args.lam)
        vs_rest = [spearmanr(flat(a, v), flat(rest, v))[0] for v in names.values()]
        print(f"{n:>3} " + "".join(f"{c:>14.3f}" for c in halves)
              + "".join(f"{c:>15.3f}" for c in vs_rest), flush=True)
        n *= 2

    split = training_split(args.split_root)
    calibration = Calibration(hr=str(split["train"]), num_crops=args.select_crops,
                              crop_size=args.select_crop_size, seed=args.seed)
    compensation = CompensationSettings()
    default = replace(crops, num_crops=args.default_crops)
    pairs = load_pairs(shared / SET5_HR, SCALE, shared / SET5_LR, "{}x4")
    base = score_model(model, pairs, SCALE, ssim=False)["psnr"]
    print(f"\nthe search: exact scores on the first {args.default_crops} crops, then "
          f"masks per budget ({DEFAULT_SELECTION} selection on {args.select_crops} crops "
          f"{args.select_crop_size}x{args.select_crop_size}), against the same with the exact "
          f"scores of all {args.num_crops} crops; Set5 x{SCALE} teacher {base:.3f} dB")
    fast_path, score_s = cached(workdir / f"scores_default_{key}_{args.default_crops}.pth",
                                lambda: score_units(teacher, "optin", default, settings,
                                                    progress=False), save_artifact)
    fast = read_checkpoint(fast_path)
    print(f"scoring {fmt_seconds(score_s)} (when made); Spearman against all crops: " + ", ".join(
        f"{k} {spearmanr(flat(fast['scores'], v), flat(full, v))[0]:.3f}"
        for k, v in names.items()), flush=True)
    # the exact scorer's own spread: the same number of other crops (n..2n-1), from their terms
    n = args.default_crops
    other = {**fast, "terms": {name: {"md": t["md_images"][:, n:2 * n].mean(1),
                                      "out": t["out_images"][:, n:2 * n].mean(1)}
                               for name, t in terms.items()}}
    other_path = workdir / f"scores_other_{key}_{n}.pth"
    save_artifact(finish_scores(other), other_path)
    runs = {"default": fast_path, "all crops": reference, f"crops {n}..{2 * n - 1}": other_path}
    print(f"Set5 x{SCALE} PSNR of the compensated masks from the scores of: the default search "
          f"(crops 0..{n - 1}), exact on all {args.num_crops} crops, exact on crops "
          f"{n}..{2 * n - 1} (as many other crops: how much the exact scorer itself varies)")
    print(f"{'r':>4} " + "".join(f"{label:>14}" for label in runs)
          + f" {'default - all':>14} {'same masks':>10} {'search s':>9} {'score+search s':>15}")
    for budget in args.budgets:
        tag = f"{budget:g}_{digest([vars(calibration), vars(compensation)])}"
        done = [run_budget(teacher, path, budget, DEFAULT_SELECTION, calibration, compensation,
                           workdir, f"{stem}_{key}_{tag}")
                for path, stem in zip(runs.values(), (f"default{n}", "all", f"other{n}"))]
        psnr = [psnr_of(run["compensated"], pairs, "set5") for run in done]
        same = float((flat(done[0]["masks"]["masks"], names["all"])
                      == flat(done[1]["masks"]["masks"], names["all"])).float().mean())
        print(f"{budget:>4g} " + "".join(f"{p:>14.3f}" for p in psnr)
              + f" {psnr[0] - psnr[1]:>+14.3f} {same:>10.3f} {done[0]['search_s']:>9.0f} "
              f"{score_s + done[0]['search_s']:>15.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-crops", type=int, default=32, help="calibration LR crops")
    parser.add_argument("--crop-size", type=int, default=48, help="side of each LR crop")
    parser.add_argument("--probes", type=int, default=OptinSettings.probes)
    parser.add_argument("--tokens", type=int, default=OptinSettings.tokens)
    parser.add_argument("--lam", type=float, default=OptinSettings.lam)
    parser.add_argument("--max-batch", type=int, default=OptinSettings.max_batch)
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-root", type=Path,
                        default=Path(tempfile.gettempdir()) / "srprune_bench_split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--stability", action="store_true",
                        help="split-half rank stability of exact scores over --num-crops crops, "
                             "and the default search against exact scores of all of them")
    parser.add_argument("--default-crops", type=int, default=4,
                        help="--stability: crops the default search scores on (the first ones)")
    parser.add_argument("--select-crops", type=int, default=32,
                        help="--stability: calibration crops of the selection and compensation")
    parser.add_argument("--select-crop-size", type=int, default=48)
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "srprune_bench_mask_search")
    args = parser.parse_args()

    shared = require_shared(WEIGHTS, SET5_HR, SET5_LR)
    teacher = shared / WEIGHTS
    print(set_threads(args.threads))
    calib_hr = training_split(args.split_root)["train"]
    if args.stability:
        return stability(args, shared, teacher, calib_hr)
    calibration = Calibration(hr=str(calib_hr), num_crops=args.num_crops,
                              crop_size=args.crop_size, seed=args.seed)
    settings = OptinSettings(tokens=args.tokens, lam=args.lam, seed=args.seed,
                             max_batch=args.max_batch, probes=args.probes)
    model = load_model(teacher)
    adapter = adapter_for(model)
    groups = groups_of_kinds(adapter.groups(model), UNIT_KINDS_DEFAULT)
    x = calibration.crops(SCALE)
    print(f"teacher {teacher.name}, {sum(g.count for g in groups)} units; calibration "
          f"{x.shape[0]} LR crops {args.crop_size}x{args.crop_size} of {calib_hr}; {settings}")

    with torch.no_grad():
        _, forward = timed(model, x)
    sketch, sketch_s = timed(sketch_terms, adapter, model, x, replace(settings, scorer="sketch"),
                             progress=False)
    print(f"sketch scorer: {fmt_seconds(sketch_s)} ({sketch_s / forward:.0f} teacher forwards "
          f"of the batch, one took {forward:.2f} s)", flush=True)
    exact, exact_s = timed(optin_terms, adapter, model, x, settings, progress=False)
    print(f"exact scorer: {fmt_seconds(exact_s)} ({exact_s / forward:.0f} forwards); "
          f"sketch/exact time {sketch_s / exact_s:.3f}", flush=True)
    heads = [g for g in groups if g.kind == "head"]
    _, heads_s = timed(optin_terms, adapter, model, x, settings, progress=False, groups=heads)
    hybrid = {g.name: (exact if g.kind == "head" else sketch)[g.name] for g in groups}
    print(f"hybrid scorer: {fmt_seconds(sketch_s + heads_s)} (exact on the heads "
          f"{heads_s:.0f} s); hybrid/exact time {(sketch_s + heads_s) / exact_s:.3f}")
    for name, terms in (("sketch", sketch), ("hybrid", hybrid)):
        print(f"\n{name} against exact")
        spearman_table(groups, exact, terms, args.lam)

    pairs = load_pairs(shared / SET5_HR, SCALE, shared / SET5_LR, "{}x4")
    base = score_model(model, pairs, SCALE, ssim=False)["psnr"]
    print(f"\nSet5 x{SCALE}, zeroed teacher (no compensation, no fine-tuning); teacher "
          f"{base:.3f} dB; knapsack selection (unmeasured)")
    scorers = {"exact": exact, "sketch": sketch, "hybrid": hybrid}
    names = [g.name for g in groups]
    print(f"{'r':>4} " + " ".join(f"{name + ' dPSNR':>13}" for name in scorers)
          + f" {'same as exact: sketch':>22} {'hybrid':>7}")
    for budget in args.budgets:
        masks = {name: knapsack_masks(adapter, model, groups, combine(terms, args.lam)[0], budget)
                 for name, terms in scorers.items()}
        same = [float((flat(masks[name], names) == flat(masks["exact"], names)).float().mean())
                for name in ("sketch", "hybrid")]
        psnr = [zeroed_psnr(teacher, m, pairs, SCALE) - base for m in masks.values()]
        print(f"{budget:>4g} " + " ".join(f"{p:>+13.3f}" for p in psnr)
              + f" {same[0]:>22.3f} {same[1]:>7.3f}", flush=True)
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
