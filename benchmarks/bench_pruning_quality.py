"""Pruning quality on a real trained CATANet x4: OPTIN against magnitude and random, one-shot.

The teacher is ../shared/weights/catanet_x4_third_party.pth (a trained x4 CATANet, BasicSR
format). For every unit set (``heads``: heads and neurons; ``channels``: heads, the q/k and v
channels inside them, and neurons), method and MAC budget r the library's own stages run in
turn, as the workflow's commands do: ``score_units``, ``search_masks`` (``--selection``),
``export_zeroed`` and ``compensate_checkpoint``; the zeroed and the compensated models are scored
on Set5 x4 (Y channel, ``scale`` pixels cropped, uint8 output as BasicSR), and the compensated one
on the validation split too (defaults are chosen there, never on Set5). Calibration crops come
from the training split (T91 + BSD200 less its validation part, ``_common.training_split``). The table gives the whole-model and the prunable-part MAC ratios and the wall
time of each stage.

Then (unless ``--finetune-iters 0``) the compensated model of ``--finetune-method`` (default: the default method) at r = 0.5 of the first unit set
is fine-tuned for ``--finetune-iters`` iterations on the CPU (batch 8 of 32x32 LR crops, feature
KD from the teacher, the workflow's default loss), once on the embedded training images and once
on the training split, validation on the validation split; Set5 x4 of both is reported.

OPTIN scoring of the released-size x4 model is slow on a CPU (the exact scorer runs one masked
forward per unit), so its calibration is set apart (``--optin-crops``, ``--optin-crop-size``,
default 4 of 32x32 from the training split) from the crops that measure candidates and fit the
compensation, and ``--optin-scores`` takes an OPTIN scores artifact made earlier (for the
``heads`` unit set; its own calibration is printed, and ``lam`` is recombined to ``--lam``).

Everything is cached in ``--workdir`` (scores, masks, models), so a rerun only redoes what is
missing; cached stages report the time they took when they were made.

    python benchmarks/bench_pruning_quality.py [--budgets 0.9 0.7 0.5] [--units heads channels]
        [--methods optin magnitude random] [--num-crops 32] [--crop-size 48] [--threads 2]
        [--finetune-iters 300] [--workdir DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from _common import fmt_seconds, peak_rss_mib, require_shared, set_threads, training_split
from srprune import load_model
from srprune.checkpoint import read_checkpoint
from srprune.data import load_pairs
from srprune.evaluate import score_model
from srprune.finetune import finetune
from srprune.fileio import save_json
from srprune.pruning.adapter import KINDS, UNIT_KINDS_DEFAULT
from srprune.pruning.compensate import CompensationSettings, compensate_checkpoint
from srprune.pruning.importance import OptinSettings
from srprune.pruning.methods import DEFAULT_METHOD, METHODS
from srprune.pruning.methods import method as get_method
from srprune.fileio import file_sha256
from srprune.pruning.calibration import Calibration
from srprune.pruning.search import (export_zeroed, finish_scores, save_artifact, score_units,
                                    search_masks)
from srprune.pruning.selection import DEFAULT_SELECTION, DEFAULT_STEPS, SELECTIONS

WEIGHTS = "weights/catanet_x4_third_party.pth"
SET5_HR, SET5_LR = "data/Set5/HR", "data/Set5/LR_bicubic/X4"
SCALE = 4
UNIT_SETS = {"heads": UNIT_KINDS_DEFAULT, "channels": KINDS}


def digest(what: Any) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached(path: Path, make: Callable[[], Any], write: Callable[[Any, Path], None]
           ) -> tuple[Path, float]:
    """Make ``path`` unless it exists; (path, seconds it took when it was made)."""
    timing = path.with_suffix(".seconds")
    if not path.exists():
        start = time.perf_counter()
        write(make(), path)
        timing.write_text(str(time.perf_counter() - start))
    return path, float(timing.read_text()) if timing.exists() else float("nan")


def psnr_of(path: Path, pairs: Any, dataset: str) -> float:
    """PSNR of the model file on ``pairs``, cached beside it (``<file>.<dataset>.psnr``)."""
    cache = path.with_name(f"{path.name}.{dataset}.psnr")
    if not cache.exists():
        cache.write_text(repr(score_model(load_model(path), pairs, SCALE)["psnr"]))
    return float(cache.read_text())


def given_scores(path: Path, lam: float) -> dict[str, Any]:
    """An OPTIN scores artifact made earlier, its raw terms recombined with ``lam``."""
    artifact = read_checkpoint(path)
    artifact["settings"] = {**artifact["settings"], "lam": lam}
    artifact.setdefault("units", list(UNIT_KINDS_DEFAULT))
    return finish_scores(artifact)


def run_budget(teacher: Path, scores: Path, budget: float, selection: str,
               calibration: Calibration, compensation: CompensationSettings, workdir: Path,
               stem: str, steps: int) -> dict[str, Any]:
    """Masks, zeroed and compensated model of one budget (cached); their paths and times."""
    masks_path, search_s = cached(
        workdir / f"masks_{stem}.pth",
        lambda: search_masks(teacher, scores, budget, selection, calibration=calibration,
                             compensation=compensation, steps=steps),
        save_artifact)
    zeroed = workdir / f"zeroed_{stem}.pth"
    if not zeroed.exists():
        export_zeroed(teacher, masks_path, zeroed)
    comp_path = workdir / f"compensated_{stem}_{digest(vars(compensation))}.pth"
    _, comp_s = cached(comp_path, lambda: compensate_checkpoint(
        teacher, zeroed, comp_path, calibration, compensation, progress=False), lambda *_: None)
    masks = read_checkpoint(masks_path)
    return {"masks": masks, "zeroed": zeroed, "compensated": comp_path, "search_s": search_s,
            "compensate_s": comp_s}


def kept_line(masks: dict[str, Any]) -> str:
    kept = masks["kept"]
    heads = sum(v for k, v in kept.items() if k.endswith(("iasa_attn", "layer.0.fn")))
    neurons = sum(v for k, v in kept.items() if k.endswith(("mlp.fn", "layer.1.fn")))
    qk = sum(v for k, v in kept.items() if k.endswith(".qk"))
    v = sum(v for k, v in kept.items() if k.endswith(".v"))
    return f"{heads:>2} heads {neurons:>4} neurons" + (f" {qk:>3} qk {v:>3} v" if qk else "")


def fine_tune(teacher: Path, student: Path, train: str, val: str, iters: int, workdir: Path,
              tag: str) -> tuple[Path, float]:
    """The 300-iteration CPU recipe of the issue, from ``student`` (cached)."""
    config = {"train": {"iters": iters, "batch_size": 8, "crop_size": 32, "lr": 2e-4,
                        "schedule": "cosine", "min_lr": 1e-6, "val_every": 100,
                        "save_every": 100, "seed": 0, "keep": "best"},
              "loss": {"pix": 1.0, "out": 1.0, "feat": 0.01},
              "data": {"train": {"hr": train}, "val": {"hr": val}}}
    out = workdir / f"finetuned_{tag}_{digest([config, file_sha256(student)])}.pth"
    return cached(out, lambda: finetune(teacher, student, config, out,
                                        workdir / f"work_{out.stem}", progress=False),
                  lambda *_: None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.9, 0.7, 0.5])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--units", nargs="+", default=list(UNIT_SETS), choices=list(UNIT_SETS))
    parser.add_argument("--num-crops", type=int, default=32, help="calibration LR crops")
    parser.add_argument("--crop-size", type=int, default=48, help="side of each LR crop")
    parser.add_argument("--scorer", default=OptinSettings.scorer, help="OPTIN scorer")
    parser.add_argument("--channels-scorer", default="hybrid",
                        help="OPTIN scorer of the channels unit set (exact is about 1.8x heads')")
    parser.add_argument("--optin-crops", type=int, default=4, help="OPTIN calibration crops")
    parser.add_argument("--optin-crop-size", type=int, default=32)
    parser.add_argument("--optin-scores", type=Path,
                        help="OPTIN scores artifact of the heads unit set, made earlier")
    parser.add_argument("--lam", type=float, default=OptinSettings.lam)
    parser.add_argument("--selection", default=DEFAULT_SELECTION, choices=SELECTIONS)
    parser.add_argument("--search-steps", type=int, default=DEFAULT_STEPS,
                        help="local moves of the per-module weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--finetune-iters", type=int, default=300, help="0 skips fine-tuning")
    parser.add_argument("--finetune-method", default=DEFAULT_METHOD, choices=METHODS,
                        help="the method whose compensated r = 0.5 model is fine-tuned")
    parser.add_argument("--finetune-on", nargs="+", default=["embedded", "t91_bsd200"],
                        choices=["embedded", "t91_bsd200"], help="training images of the runs")
    parser.add_argument("--workdir", type=Path,
                        default=Path(tempfile.gettempdir()) / "srprune_bench_quality")
    args = parser.parse_args()

    shared = require_shared(WEIGHTS, SET5_HR, SET5_LR)
    teacher = shared / WEIGHTS
    print(set_threads(args.threads))
    args.workdir.mkdir(parents=True, exist_ok=True)
    split = training_split(args.workdir / "split")
    calibration = Calibration(hr=str(split["train"]), num_crops=args.num_crops,
                              crop_size=args.crop_size, seed=args.seed)
    settings = OptinSettings(lam=args.lam, seed=args.seed, scorer=args.scorer)
    optin_calibration = Calibration(hr=str(split["train"]), num_crops=args.optin_crops,
                                    crop_size=args.optin_crop_size, seed=args.seed)
    compensation = CompensationSettings()
    print(f"teacher {teacher.name} (x{SCALE}); calibration (selection, compensation) "
          f"{args.num_crops} LR crops {args.crop_size}x{args.crop_size} of {split['train']} "
          f"(seed {args.seed}); selection {args.selection}; compensation {compensation}")

    pairs = load_pairs(shared / SET5_HR, SCALE, shared / SET5_LR, "{}x4")
    val = load_pairs(split["val"], SCALE)
    base = score_model(load_model(teacher), pairs, SCALE)["psnr"]
    base_val = score_model(load_model(teacher), val, SCALE)["psnr"]
    print(f"teacher: Set5 x{SCALE} {base:.3f} dB, validation split {base_val:.3f} dB", flush=True)
    rows, compensated = [], {}
    for unit_set in args.units:
        units = UNIT_SETS[unit_set]
        for method in args.methods:
            scoring = replace(settings, scorer=args.channels_scorer) \
                if unit_set == "channels" else settings
            own_crops = get_method(method).scoring_crops
            key = digest([method, units, vars(calibration),
                          [scoring.to_dict(), vars(optin_calibration), str(args.optin_scores)]
                          if method == "optin" else args.seed, file_sha256(teacher)]
                         + ([vars(compensation)] if method == "obs" else []))
            scores, score_s = cached(
                args.workdir / f"scores_{method}_{unit_set}_{key}.pth",
                lambda: given_scores(args.optin_scores, args.lam)
                if method == "optin" and unit_set == "heads" and args.optin_scores
                else score_units(teacher, method, optin_calibration if own_crops else calibration,
                                 scoring, progress=False, units=units,
                                 compensation=compensation), save_artifact)
            if method == "optin":
                made = read_checkpoint(scores)
                print(f"OPTIN scores ({unit_set}): {made['settings']}, calibration "
                      f"{made['calibration']}")
            print(f"scores {method} {unit_set}: {fmt_seconds(score_s)}", flush=True)
            for budget in args.budgets:
                stem = f"{method}_{unit_set}_r{budget:g}_{key}" + (
                    "" if args.selection == "measured" else f"_{args.selection}") + (
                    f"_s{args.search_steps}" if args.search_steps else "")
                done = run_budget(teacher, scores, budget, args.selection, calibration,
                                  compensation, args.workdir, stem, args.search_steps)
                compensated[(method, unit_set, budget)] = done["compensated"]
                row = {"units": unit_set, "method": method, "r": budget,
                       "ratio": done["masks"]["achieved_mac_ratio"],
                       "prunable": done["masks"]["prunable_mac_ratio"],
                       "kept": kept_line(done["masks"]),
                       "zeroed": psnr_of(done["zeroed"], pairs, "set5"),
                       "compensated": psnr_of(done["compensated"], pairs, "set5"),
                       "val": psnr_of(done["compensated"], val, "val") - base_val,
                       "score_s": score_s, "search_s": done["search_s"],
                       "compensate_s": done["compensate_s"]}
                rows.append(row)
                print(f"  {method} {unit_set} r={budget:g}: zeroed {row['zeroed']:.3f}, "
                      f"compensated {row['compensated']:.3f} dB ({row['kept']})", flush=True)

    print(f"\nSet5 x{SCALE} (uint8 output, Y channel), one-shot pruning, no training; teacher "
          f"{base:.3f} dB. ratio: full MACs over the teacher's; prunable: the same for the part "
          f"pruning can remove. Times: scoring (per method), mask search, compensation.")
    print(f"{'units':<8} {'method':<9} {'r':>4} {'ratio':>6} {'prunable':>8} "
          f"{'zeroed':>7} {'comp.':>7} {'d comp.':>7} {'d val':>6}  {'score s':>7} "
          f"{'search s':>8} {'comp. s':>7}  kept")
    for r in rows:
        print(f"{r['units']:<8} {r['method']:<9} {r['r']:>4g} {r['ratio']:>6.3f} "
              f"{r['prunable']:>8.3f} {r['zeroed']:>7.3f} {r['compensated']:>7.3f} "
              f"{r['compensated'] - base:>+7.3f} {r['val']:>+6.3f}  {r['score_s']:>7.0f} "
              f"{r['search_s']:>8.0f} {r['compensate_s']:>7.0f}  {r['kept']}")
    print("(d val: compensated minus teacher on the validation split, where defaults are chosen)")
    save_json({"teacher_psnr": base, "teacher_val_psnr": base_val, "rows": rows},
              args.workdir / "quality.json")

    start_key = (args.finetune_method, args.units[0], 0.5)
    if args.finetune_iters and start_key in compensated:
        print(f"\nfine-tuning the compensated {args.finetune_method} r = 0.5 ({args.units[0]}) "
              f"model, {args.finetune_iters} iterations, batch 8 of 32x32 LR crops:")
        data = {"embedded": "embedded:train", "t91_bsd200": str(split["train"])}
        for tag, train in ((t, data[t]) for t in args.finetune_on):
            path, seconds = fine_tune(teacher, compensated[start_key], train, str(split["val"]),
                                      args.finetune_iters, args.workdir, tag)
            print(f"  on {train}: Set5 x{SCALE} {psnr_of(path, pairs, 'set5'):.3f} dB "
                  f"({fmt_seconds(seconds)})", flush=True)
    print(f"\npeak RSS {peak_rss_mib():.0f} MiB; work files in {args.workdir}")


if __name__ == "__main__":
    main()
