"""OPTIN's lambda on the validation split: zeroed-model PSNR of the masks each lambda chooses.

An OPTIN scores artifact stores the raw terms (``md``, ``out``), so every lambda is a cheap
recombination (:func:`srprune.pruning.importance.combine`); for each lambda and budget r the
library's knapsack selection (unmeasured) chooses masks, the teacher's masked units are zeroed, and
the zeroed model is scored on the VALIDATION split (``benchmarks/_common.py:training_split``: 20
BSD200 images held out of calibration and fine-tuning; x4 LR made by MATLAB-bicubic
downscaling), never on Set5. Make the artifact with the calibration on the training split, e.g.

    srprune score-units --teacher ../shared/weights/catanet_x4_third_party.pth --method optin \\
        --calib-hr <split>/train --num-crops 8 --crop-size 32 --scorer exact --out S.pth
    OMP_NUM_THREADS=1 python benchmarks/bench_optin_lambda.py S.pth [S2.pth ...]
        [--lams 0 0.03 0.1 0.3 1] [--budgets 0.7 0.5] [--split-root DIR]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import knapsack_masks, require_shared, set_threads, training_split, zeroed_psnr
from srprune import load_model
from srprune.checkpoint import read_checkpoint
from srprune.data import load_pairs
from srprune.evaluate import score_model
from srprune.pruning.importance import combine
from srprune.pruning.registry import adapter_for
from srprune.pruning.search import check_scores_match, scored_groups

WEIGHTS = "weights/catanet_x4_third_party.pth"
SCALE = 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", nargs="+", type=Path, help="OPTIN unit-scores artifacts")
    parser.add_argument("--lams", type=float, nargs="+", default=[0, 0.03, 0.1, 0.3, 1])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--split-root", type=Path,
                        default=Path(tempfile.gettempdir()) / "srprune_lambda_split")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    teacher = require_shared(WEIGHTS) / WEIGHTS
    print(set_threads(args.threads))
    split = training_split(args.split_root)
    pairs = load_pairs(split["val"], SCALE)
    model = load_model(teacher)
    adapter = adapter_for(model)
    base = score_model(model, pairs, SCALE, ssim=False)["psnr"]
    print(f"teacher on the validation split ({len(pairs)} images of {split['val']}), "
          f"x{SCALE}: {base:.3f} dB; knapsack selection")
    print(f"{'scores':<28} {'scorer':<7} {'lambda':>7} " +
          " ".join(f"{'r=' + format(r, 'g'):>9}" for r in args.budgets))
    for path in args.scores:
        artifact = read_checkpoint(path)
        check_scores_match(artifact, teacher)
        groups = scored_groups(adapter, model, artifact)
        for lam in args.lams:
            scores, _ = combine(artifact["terms"], lam)
            cells = []
            for budget in args.budgets:
                masks = knapsack_masks(adapter, model, groups, scores, budget)
                cells.append(f"{zeroed_psnr(teacher, masks, pairs, SCALE) - base:>+9.3f}")
            print(f"{path.name:<28} {artifact['settings'].get('scorer', 'exact'):<7} {lam:>7g} "
                  + " ".join(cells), flush=True)
    print("cells: validation PSNR of the zeroed model minus the teacher's (dB)")


if __name__ == "__main__":
    main()
