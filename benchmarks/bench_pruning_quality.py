"""Pruning quality on a real trained CATANet x4: OPTIN unit scores against magnitude and random.

The teacher is ../shared/weights/catanet_x4_third_party.pth (a trained x4 CATANet, BasicSR
format). For each method and MAC budget r the library's own stages run in turn, as the
``score-units``, ``search-masks`` and ``export-zeroed`` commands do: ``score_units`` (OPTIN
calibrated on seeded LR crops of the embedded training images, never on Set5), ``search_masks``
(``--selection``, OPTIN's head/neuron search by default), ``export_zeroed``; then the zeroed model
is scored on Set5 x4 (Y channel, ``scale`` pixels cropped, uint8 output as BasicSR, unless
``--float-output``). No fine-tuning: this measures one-shot pruning only.

Scores are cached per method (and calibration and settings) in ``--workdir``, so a rerun with
other budgets or another selection does not rescore. OPTIN scoring of all 1600 units is the
expensive step on a CPU (restarted masked forwards of the calibration batch); ``--estimate`` times
it on a sample of units (blocks 0, 4, 7: all heads, and the first ``max_batch // crops`` neurons of
each FFN, one batched forward) and prints the extrapolated total without running anything else.

    OMP_NUM_THREADS=1 python benchmarks/bench_pruning_quality.py [--budgets 0.9 0.7 0.5]
        [--methods optin magnitude random] [--selection optin|greedy] [--num-crops 8]
        [--crop-size 48] [--workdir DIR] [--threads 1] [--estimate] [--progress]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (UnitSubset, extrapolate, fmt_seconds, peak_rss_mib, require_shared,
                     sample_counts, set_threads)
from srprune import load_model
from srprune.checkpoint import read_checkpoint
from srprune.evaluate import load_pairs, score_model
from srprune.pruning.adapter import UNIT_KINDS_DEFAULT, groups_of_kinds
from srprune.pruning.importance import METHODS, OptinSettings, optin_terms
from srprune.pruning.search import (Calibration, adapter_for, check_scores_match, export_zeroed,
                                    file_sha256, save_artifact, score_units, search_masks)
from srprune.pruning.selection import SELECTIONS

WEIGHTS = "weights/catanet_x4_third_party.pth"
SET5_HR, SET5_LR = "data/Set5/HR", "data/Set5/LR_bicubic/X4"
SCALE = 4
HEAD_GROUPS = ("0.iasa_attn", "1.layer.0.fn")  # TAB heads, LRSA heads; the others are FFNs


def scores_key(method: str, teacher_sha: str, calibration: Calibration,
               settings: OptinSettings) -> str:
    """What a method's scores depend on, hashed (max_batch only changes rounding)."""
    what: dict[str, Any] = {"method": method, "teacher": teacher_sha}
    if method == "optin":
        what.update(calibration=vars(calibration),
                    settings={k: v for k, v in settings.to_dict().items() if k != "max_batch"})
    elif method == "random":
        what["seed"] = calibration.seed
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def cached_scores(teacher: Path, method: str, calibration: Calibration, settings: OptinSettings,
                  workdir: Path, progress: bool) -> tuple[Path, float, bool]:
    """(scores artifact path, seconds its scoring took, whether it came from the cache)."""
    key = scores_key(method, file_sha256(teacher), calibration, settings)
    path = workdir / f"scores_{method}_{key}.pth"
    if path.exists():
        artifact = read_checkpoint(path)
        check_scores_match(artifact, teacher)
        return path, float(artifact.get("bench_seconds", float("nan"))), True
    start = time.perf_counter()
    artifact = score_units(teacher, method, calibration, settings, progress=progress)
    artifact["bench_seconds"] = time.perf_counter() - start
    save_artifact(artifact, path)
    return path, artifact["bench_seconds"], False


def kept_summary(masks: dict[str, Any]) -> dict[str, Any]:
    """Kept heads and neurons in all, and per block (TAB, LRSA) pairs."""
    heads = neurons = heads_total = neurons_total = 0
    per_block: dict[int, dict[str, int]] = {}
    for name, mask in masks.items():
        _, block, module = name.split(".", 2)
        kept, total = int(mask.bool().sum()), mask.numel()
        column = ("th" if module.startswith("0.") else "lh") if module in HEAD_GROUPS else \
                 ("tn" if module.startswith("0.") else "ln")
        per_block.setdefault(int(block), {})[column] = kept
        if module in HEAD_GROUPS:
            heads, heads_total = heads + kept, heads_total + total
        else:
            neurons, neurons_total = neurons + kept, neurons_total + total
    return {"heads": heads, "heads_total": heads_total, "neurons": neurons,
            "neurons_total": neurons_total, "per_block": per_block}


def estimate(teacher: Path, calibration: Calibration, settings: OptinSettings) -> None:
    """Time OPTIN scoring on a sample of units of the teacher and extrapolate to all units."""
    model = load_model(teacher).eval()
    adapter = adapter_for(model)
    groups = groups_of_kinds(adapter.groups(model), UNIT_KINDS_DEFAULT)
    x = calibration.crops(model.cfg.upscale)
    per_forward = max(1, settings.max_batch // x.shape[0])  # sample one batched forward per FFN
    subset = UnitSubset(adapter, model, sample_counts(groups, [0, 4, 7], per_forward))
    start = time.perf_counter()
    optin_terms(subset, model, x, settings, progress=False)
    setup, per_group = subset.group_times(start, time.perf_counter())
    sample = subset.groups(model)
    per_unit = {g.name: per_group[g.name] / g.count for g in sample}
    total = extrapolate(groups, per_unit, setup)
    print(f"OPTIN scoring estimate, {x.shape[0]} crops {calibration.crop_size}x"
          f"{calibration.crop_size}, {settings}: {sum(g.count for g in sample)} sampled units "
          f"took {sum(per_group.values()):.1f} s (+{setup:.1f} s setup); all "
          f"{sum(g.count for g in groups)} units: about {fmt_seconds(total)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.9, 0.7, 0.5],
                        help="MAC constraints r (pruned full MACs <= r x the teacher's)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--selection", default="optin", choices=SELECTIONS)
    parser.add_argument("--min-keep", type=int, default=0, help="units always kept per group")
    parser.add_argument("--num-crops", type=int, default=8, help="OPTIN calibration LR crops")
    parser.add_argument("--crop-size", type=int, default=48, help="side of each LR crop")
    parser.add_argument("--tokens", type=int, default=OptinSettings.tokens)
    parser.add_argument("--lam", type=float, default=OptinSettings.lam)
    parser.add_argument("--max-batch", type=int, default=OptinSettings.max_batch)
    parser.add_argument("--seed", type=int, default=0, help="calibration crops, tokens, random")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "srprune_bench_quality",
                        help="cached scores, masks and zeroed models")
    parser.add_argument("--float-output", action="store_true",
                        help="score the float SR output instead of the uint8 image")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--estimate", action="store_true",
                        help="only estimate the OPTIN scoring time from a sample of units")
    parser.add_argument("--progress", action="store_true", help="OPTIN progress bar (stderr)")
    args = parser.parse_args()

    shared = require_shared(WEIGHTS, SET5_HR, SET5_LR)
    teacher = shared / WEIGHTS
    threads_line = set_threads(args.threads)
    calibration = Calibration(hr="embedded:train", num_crops=args.num_crops,
                              crop_size=args.crop_size, seed=args.seed)
    settings = OptinSettings(tokens=args.tokens, lam=args.lam, seed=args.seed,
                             max_batch=args.max_batch)
    print(f"teacher {teacher.name} (x{SCALE}); OPTIN calibration: {args.num_crops} LR crops "
          f"{args.crop_size}x{args.crop_size} from {calibration.hr} (seed {args.seed}), "
          f"{settings}; selection {args.selection}, min_keep {args.min_keep}")
    print(threads_line)
    if args.estimate:
        estimate(teacher, calibration, settings)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)

    scores = {}
    for method in args.methods:
        path, seconds, cached = cached_scores(teacher, method, calibration, settings,
                                              args.workdir, args.progress)
        scores[method] = path
        print(f"scores {method}: {fmt_seconds(seconds)}"
              f"{' (cached from an earlier run)' if cached else ''}; {path}", flush=True)

    pairs = load_pairs(shared / SET5_HR, SCALE, shared / SET5_LR, "{}x4")
    quantize = not args.float_output
    start = time.perf_counter()
    base = score_model(load_model(teacher), pairs, SCALE, quantize=quantize)
    print(f"teacher on Set5 x{SCALE}: PSNR {base['psnr']:.3f} dB, SSIM {base['ssim']:.4f} "
          f"({time.perf_counter() - start:.1f} s)", flush=True)

    rows = []
    for method in args.methods:
        for budget in args.budgets:
            key = scores[method].stem[-12:]
            stem = f"{method}_{args.selection}_k{args.min_keep}_r{budget:g}_{key}"
            masks_path = args.workdir / f"masks_{stem}.pth"
            start = time.perf_counter()
            masks = search_masks(teacher, scores[method], budget, args.selection, args.min_keep)
            save_artifact(masks, masks_path)
            search_s = time.perf_counter() - start
            model = export_zeroed(teacher, masks_path, args.workdir / f"zeroed_{stem}.pth")
            start = time.perf_counter()
            result = score_model(model, pairs, SCALE, quantize=quantize)
            rows.append({"method": method, "r": budget, "ratio": masks["achieved_mac_ratio"],
                         **kept_summary(masks["masks"]), "psnr": result["psnr"],
                         "ssim": result["ssim"], "search_s": search_s,
                         "eval_s": time.perf_counter() - start})
            print(f"  {method} r={budget:g}: PSNR {result['psnr']:.3f} dB", flush=True)

    print()
    print(f"Set5 x{SCALE} ({'float' if args.float_output else 'uint8'} output, Y channel), "
          f"one-shot pruning, zeroed weights, no fine-tuning; teacher {base['psnr']:.3f} dB / "
          f"{base['ssim']:.4f}")
    print(f"{'method':<10} {'r':>4} {'MAC ratio':>9} {'kept heads':>10} {'kept neurons':>12} "
          f"{'PSNR (dB)':>9} {'SSIM':>7} {'dPSNR':>7}")
    for row in rows:
        print(f"{row['method']:<10} {row['r']:>4g} {row['ratio']:>9.4f} "
              f"{row['heads']:>4}/{row['heads_total']:<5} "
              f"{row['neurons']:>6}/{row['neurons_total']:<5} "
              f"{row['psnr']:>9.3f} {row['ssim']:>7.4f} {row['psnr'] - base['psnr']:>+7.3f}")

    blocks = sorted(rows[0]["per_block"]) if rows else []
    print()
    print("kept per block: TAB heads+LRSA heads (of 4+4) | TAB neurons+LRSA neurons (of 96+96)")
    print(f"{'method':<10} {'r':>4} " + " ".join(f"{'block ' + str(b):>13}" for b in blocks))
    for row in rows:
        cells = [f"{c['th']}+{c['lh']} {c['tn']:>2}+{c['ln']:<2}"
                 for c in (row["per_block"][b] for b in blocks)]
        print(f"{row['method']:<10} {row['r']:>4g} " + " ".join(f"{c:>13}" for c in cells))
    print(f"\nmask search {sum(r['search_s'] for r in rows):.1f} s, Set5 evaluation "
          f"{sum(r['eval_s'] for r in rows):.1f} s in all; peak RSS {peak_rss_mib():.0f} MiB; "
          f"work files in {args.workdir}")


if __name__ == "__main__":
    main()
