"""Compensation without training on the real x4 CATANet: zeroed against compensated PSNR.

For each MAC budget r, magnitude masks are chosen (``score-units --method magnitude``,
``search-masks``) and the zeroed model exported, as the workflow does; then ``compensate`` runs
for every (target, ridge) asked, with calibration crops from the training split, and every
model is scored on the validation split (defaults are chosen there) and on Set5 x4 (reported).
Prints one line per model and appends it as JSON to ``--jsonl``.

    OMP_NUM_THREADS=1 python benchmarks/bench_compensation.py [--budgets 0.9 0.7 0.5]
        [--targets stream output] [--ridges 1e-3] [--num-crops 32] [--crop-size 48]
        [--workdir DIR] [--jsonl FILE]

Calibration crops come from the training split (images smaller than a crop are skipped).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import require_shared, set_threads, training_split
from srprune import load_model
from srprune.data import load_pairs
from srprune.evaluate import score_model
from srprune.pruning.compensate import TARGETS, CompensationSettings, compensate_checkpoint
from srprune.pruning.calibration import Calibration
from srprune.pruning.search import (export_zeroed, save_artifact, score_units,
                                    search_masks)
from srprune.pruning.importance import OptinSettings

SCALE = 4


def psnr(path: Path, datasets: dict[str, list]) -> dict[str, float]:
    model = load_model(path)
    return {name: score_model(model, pairs, SCALE, ssim=False)["psnr"]
            for name, pairs in datasets.items()}


def zeroed_model(teacher: Path, budget: float, workdir: Path, calibration: Calibration) -> Path:
    scores = workdir / "magnitude_scores.pth"
    if not scores.exists():
        save_artifact(score_units(teacher, "magnitude", Calibration(), OptinSettings()), scores)
    out = workdir / f"zeroed_{budget}.pth"
    if not out.exists():
        save_artifact(search_masks(teacher, scores, budget, calibration=calibration),
                      workdir / f"masks_{budget}.pth")
        export_zeroed(teacher, workdir / f"masks_{budget}.pth", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.9, 0.7, 0.5])
    parser.add_argument("--targets", nargs="+", choices=TARGETS, default=list(TARGETS))
    parser.add_argument("--ridges", type=float, nargs="+", default=[1e-3])
    parser.add_argument("--num-crops", type=int, default=32)
    parser.add_argument("--crop-size", type=int, default=48)
    parser.add_argument("--calib", help="calibration HR folder (default: the training split)")
    parser.add_argument("--workdir", default="/tmp/srprune_bench_compensation")
    parser.add_argument("--jsonl", help="append every result as one JSON line")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    print(set_threads(args.threads))
    shared = require_shared("weights/catanet_x4_third_party.pth", "data/Set5/HR")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    split = training_split(workdir / "split")
    teacher = shared / "weights/catanet_x4_third_party.pth"
    datasets = {"val": list(load_pairs(split["val"], SCALE)),
                "set5": list(load_pairs(shared / "data/Set5/HR", SCALE,
                                        shared / "data/Set5/LR_bicubic/X4", "{}x4"))}
    calibration = Calibration(hr=args.calib or str(split["train"]), num_crops=args.num_crops,
                              crop_size=args.crop_size)
    reference = psnr(teacher, datasets)
    report(args.jsonl, {"model": "teacher", **reference})
    for budget in args.budgets:
        zeroed = zeroed_model(teacher, budget, workdir, calibration)
        report(args.jsonl, {"model": "zeroed", "budget": budget,
                            **delta(psnr(zeroed, datasets), reference)})
        for target in args.targets:
            for ridge in args.ridges:
                out = workdir / f"compensated_{budget}_{target}_{ridge}.pth"
                summary = compensate_checkpoint(teacher, zeroed, out, calibration,
                                                CompensationSettings(ridge=ridge, target=target),
                                                progress=False)
                report(args.jsonl, {"model": "compensated", "budget": budget, "target": target,
                                    "ridge": ridge, "layers": len(summary["fit"]),
                                    "seconds": round(summary["seconds"], 1),
                                    **delta(psnr(out, datasets), reference)})


def delta(scores: dict[str, float], reference: dict[str, float]) -> dict[str, float]:
    return {f"d_{name}": round(value - reference[name], 4) for name, value in scores.items()}


def report(path: str | None, row: dict) -> None:
    print(json.dumps(row), flush=True)
    if path:
        with open(path, "a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
