"""OPTIN unit scoring: our batched, restarted scorer against the naive one-forward-per-unit scorer.

Released-size CATANet x4 (1600 units: 8 blocks x (4 TAB heads, 96 TAB FFN neurons, 4 LRSA heads,
96 LRSA FFN neurons)), random weights (seeded) with every TAB's centres initialised to random
``means``, so that the eval forward of an image does not depend on the rest of its batch. The
calibration batch is ``--num-crops`` LR crops of ``--crop-size`` from the embedded training
images (srprune's ``Calibration``); ``OptinSettings()`` defaults unless overridden.

How the two are compared. Scoring all 1600 units naively takes about an hour on one CPU thread, so
both scorers run on the SAME sample of units: the groups of ``--blocks`` (default an early, a
middle and the last block), all heads of a head group and the first ``--units`` neurons of an FFN
group (default ``max_batch // crops``, 8 at the defaults: one of the batched forwards that a full
search makes). The library functions themselves run, unmodified (``naive_optin_terms`` and
``optin_terms``), through an adapter wrapper that lists only the sampled groups, with their
``count`` cut to the sample, and pads every mask with ones up to the group's real width before it
reaches the model: so the sampled units are scored exactly as in a full search (ours batches the
same variants per forward as it would on a full group), and the other units of a group stay in
the model. Each masked run is timestamped, which gives the time of every group from one call of
each scorer; the one-off setup (teacher reference, cache) is reported apart. The full search is
extrapolated from the per-unit times (per kind of module, linear in the block index between the
sampled blocks, which must include the first and the last); ``--full`` also runs ``optin_terms``
on all 1600 units and reports the measured time (about 40 min on one thread).

    OMP_NUM_THREADS=1 python benchmarks/bench_mask_search.py [--blocks 0 4 7] [--units N]
        [--num-crops 8] [--crop-size 48] [--max-batch 64] [--threads 1] [--full]
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from _common import (UnitSubset, extrapolate, fmt_seconds, peak_rss_mib, sample_counts,
                     random_released_x4, set_threads, suffix)
from srprune.pruning.adapter import UNIT_KINDS_DEFAULT, groups_of_kinds
from srprune.pruning.catanet import CATANetAdapter
from srprune.pruning.importance import OptinSettings, naive_optin_terms, optin_terms
from srprune.pruning.search import Calibration

MODULES = {"0.iasa_attn": "TAB heads", "0.mlp.fn": "TAB FFN", "1.layer.0.fn": "LRSA heads",
           "1.layer.1.fn": "LRSA FFN"}
TOLERANCE = 1e-4


@torch.no_grad()
def stage_times(model, x: torch.Tensor) -> dict[str, float]:
    """Seconds of each stage of one teacher forward: embed, tab<i>, lrsa<i> (+ mid conv), recon."""
    out = {}
    for _ in range(2):  # the second run is kept (warm)
        t = time.perf_counter()
        f = model.embed(x)
        out["embed"] = time.perf_counter() - t
        y = f
        for i, (tab, lrsa) in enumerate(model.blocks):
            t = time.perf_counter()
            z = tab(y)
            out[f"tab{i}"] = time.perf_counter() - t
            t = time.perf_counter()
            y = y + model.mid_convs[i](lrsa(z, model.cfg.patch_size[i]))
            out[f"lrsa{i}"] = time.perf_counter() - t
        t = time.perf_counter()
        model.reconstruct(y + f, x)
        out["recon"] = time.perf_counter() - t
    return out


def skipped(stages: dict[str, float], block: int, module: str) -> float:
    """Seconds of the teacher forward that a restart at ``module`` of ``block`` does not redo."""
    before = stages["embed"] + sum(stages[f"tab{j}"] + stages[f"lrsa{j}"] for j in range(block))
    return before + (stages[f"tab{block}"] if module.startswith("1.") else 0.0)


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest |a - b| / |b| (b the naive value)."""
    return float(((a - b).abs() / b.abs().clamp_min(1e-30)).max())


def timed(scorer, adapter: UnitSubset, *args, **kwargs):
    adapter.marks.clear()
    start = time.perf_counter()
    terms = scorer(adapter, *args, **kwargs)
    end = time.perf_counter()
    setup, per_group = adapter.group_times(start, end)
    return terms, end - start, setup, per_group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, nargs="+", default=[0, 4, 7],
                        help="blocks whose four groups are sampled")
    parser.add_argument("--units", type=int,
                        help="neurons sampled per FFN group, the first N (default: one batched "
                             "forward's worth, max_batch // crops); heads: all")
    parser.add_argument("--num-crops", type=int, default=8, help="calibration LR crops")
    parser.add_argument("--crop-size", type=int, default=48, help="side of each LR crop")
    parser.add_argument("--max-batch", type=int, default=OptinSettings().max_batch,
                        help="OptinSettings.max_batch (images per batched forward)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--full", action="store_true",
                        help="also run optin_terms on all units and time it (long)")
    args = parser.parse_args()

    threads_line = set_threads(args.threads)
    model = random_released_x4(args.seed)
    adapter = CATANetAdapter()
    groups = groups_of_kinds(adapter.groups(model), UNIT_KINDS_DEFAULT)
    if not set(args.blocks) <= {g.block for g in groups}:
        sys.exit(f"--blocks must lie in 0..{model.cfg.block_num - 1}")
    calibration = Calibration(num_crops=args.num_crops, crop_size=args.crop_size, seed=args.seed)
    x = calibration.crops(model.cfg.upscale)
    settings = replace(OptinSettings(), max_batch=args.max_batch)
    per_forward = max(1, settings.max_batch // x.shape[0])
    if args.units is None:
        args.units = per_forward
    subset = UnitSubset(adapter, model, sample_counts(groups, args.blocks, args.units))
    sample = subset.groups(model)
    n_sample, n_all = sum(g.count for g in sample), sum(g.count for g in groups)

    print(f"OPTIN unit scoring, released-size CATANet x4 ({n_all} units in {len(groups)} groups), "
          f"random weights (seed {args.seed}), TAB centres initialised")
    print(f"calibration: {x.shape[0]} LR crops {args.crop_size}x{args.crop_size} from "
          f"{calibration.hr}; {settings}: ours runs {per_forward} masked variant(s) x "
          f"{x.shape[0]} crops per forward, naive one unit x {x.shape[0]} crops per full forward")
    print(threads_line)
    print(f"sample: blocks {' '.join(map(str, args.blocks))}, all heads and the first "
          f"{args.units} neurons of each FFN: {n_sample} of {n_all} units, the same units for both "
          f"(library scorers run unmodified through a sample-restricting adapter wrapper)")
    if args.units % per_forward and args.units < max(g.count for g in groups):
        print(f"note: {args.units} sampled neurons per FFN is not a multiple of the {per_forward} "
              f"variants a full search batches per forward: ours batches differently here, so its "
              f"per-unit time (and the extrapolation) is off")

    stages = stage_times(model, x)
    forward = sum(stages.values())

    naive, naive_total, naive_setup, naive_groups = timed(naive_optin_terms, subset, model, x,
                                                          settings)
    rss_naive = peak_rss_mib()
    ours, ours_total, ours_setup, ours_groups = timed(optin_terms, subset, model, x, settings,
                                                      progress=False)
    rss_ours = peak_rss_mib()

    print()
    print(f"{'group':<24} {'module':<11} {'units':>5} {'naive s/unit':>13} {'ours s/unit':>12} "
          f"{'speed-up':>9} {'max rel md':>11} {'max rel out':>12}")
    worst_md = worst_out = 0.0
    for g in sample:
        rel_md = max_rel(ours[g.name]["md"], naive[g.name]["md"])
        rel_out = max_rel(ours[g.name]["out"], naive[g.name]["out"])
        worst_md, worst_out = max(worst_md, rel_md), max(worst_out, rel_out)
        a, b = naive_groups[g.name] / g.count, ours_groups[g.name] / g.count
        print(f"{g.name:<24} {MODULES[suffix(g.name)]:<11} {g.count:>5} {a:>13.3f} {b:>12.3f} "
              f"{a / b:>8.2f}x {rel_md:>11.2e} {rel_out:>12.2e}")
    naive_units, ours_units = sum(naive_groups.values()), sum(ours_groups.values())
    print(f"{'sampled units':<36} {n_sample:>5} {naive_units / n_sample:>13.3f} "
          f"{ours_units / n_sample:>12.3f} {naive_units / ours_units:>8.2f}x "
          f"{worst_md:>11.2e} {worst_out:>12.2e}")
    ok = worst_md <= TOLERANCE and worst_out <= TOLERANCE
    print(f"agreement on the {n_sample} common units: max relative difference md {worst_md:.2e}, "
          f"out {worst_out:.2e} (limit {TOLERANCE:g}: {'OK' if ok else 'FAILED'})")
    print(f"one-off setup: naive {naive_setup:.2f} s (teacher reference), ours {ours_setup:.2f} s "
          f"(teacher reference + cache); whole calls on the sample: naive {naive_total:.1f} s, "
          f"ours {ours_total:.1f} s")

    naive_per_unit = {g.name: naive_groups[g.name] / g.count for g in sample}
    ours_per_unit = {g.name: ours_groups[g.name] / g.count for g in sample}
    ours_full = None
    if {0, model.cfg.block_num - 1} <= set(args.blocks):
        naive_full = extrapolate(groups, naive_per_unit, naive_setup)
        ours_full = extrapolate(groups, ours_per_unit, ours_setup)
        print(f"full search ({n_all} units), extrapolated: naive {fmt_seconds(naive_full)}, ours "
              f"{fmt_seconds(ours_full)}, speed-up {naive_full / ours_full:.2f}x")
    else:  # a restart's cost falls with the block index: no extrapolation past the sample
        print(f"full search ({n_all} units), extrapolated: not done, --blocks must include the "
              f"first (0) and the last ({model.cfg.block_num - 1}) block")
    if args.full:
        start = time.perf_counter()
        optin_terms(adapter, model, x, settings, progress=False, groups=groups)
        measured = time.perf_counter() - start
        versus = "" if ours_full is None else \
            f" (extrapolation was {ours_full / measured:.2f}x of it)"
        print(f"full search ({n_all} units), measured with ours: {fmt_seconds(measured)}{versus}")
    else:
        print("full search measured with ours: not run (pass --full; the estimate above says how "
              "long it takes)")

    skip = sum(g.count * skipped(stages, g.block, suffix(g.name)) for g in groups)
    ideal = n_all * forward / (n_all * forward - skip)
    batching = sum(ours_groups[g.name] / (naive_per_unit[g.name] * g.count *
                                          (1 - skipped(stages, g.block, suffix(g.name)) / forward))
                   for g in sample) / len(sample)
    print(f"where the time goes: a unit's restart skips on average {skip / n_all / forward:.0%} "
          f"of a full forward ({forward:.2f} s for {x.shape[0]} crops; the x4 reconstruction, "
          f"{stages['recon'] / forward:.0%} of it, is redone by every restart), so restarting can "
          f"give at most {ideal:.2f}x over the full search; batching {per_forward} variant(s) per "
          f"forward costs {batching:.2f}x per image here against that ideal (1.00 = free)")
    print(f"peak RSS: {rss_naive:.0f} MiB after the naive scorer, {rss_ours:.0f} MiB after ours "
          f"(process-wide peak; naive ran first)")
    if not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
