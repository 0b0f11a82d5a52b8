"""Speed of rebuilt (physically smaller) x4 models: heads-only against channel pruning.

For each MAC budget r, masks are chosen by the library's knapsack from magnitude scores of the
released-size x4 model (the shared third-party weights when present), once with heads and
neurons as units and once with the channels inside heads too, and both are rebuilt. The teacher
and every rebuilt model then run side by side in one process on the same input, in interleaved
rounds; each model's speed-up is the median over rounds of the teacher's time over its own. The
channel-pruned models also run with the authors' attention formulation, to show that the
narrower heads keep the fused attention kernel (one batched call per module).

    python benchmarks/bench_rebuilt.py [--budgets 0.7 0.5] [--size 64] [--rounds 7] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from _common import SHARED, knapsack_masks, random_released_x4, set_threads
from srprune import load_model
from srprune.complexity import count_params
from srprune.pruning.adapter import KINDS, UNIT_KINDS_DEFAULT, groups_of_kinds, kept_counts
from srprune.pruning.catanet import CATANetAdapter
from srprune.pruning.importance import magnitude_scores

WEIGHTS = SHARED / "weights/catanet_x4_third_party.pth"
ADAPTER = CATANetAdapter()


def teacher_x4() -> tuple[nn.Module, str]:
    if WEIGHTS.exists():
        return load_model(WEIGHTS).eval(), WEIGHTS.name
    return random_released_x4(), "random weights (../shared absent)"


def rebuilt(teacher: nn.Module, kinds: tuple[str, ...], budget: float) -> tuple[nn.Module, int]:
    """The rebuilt model of the knapsack's magnitude masks for ``kinds``, and its full MACs."""
    groups = groups_of_kinds(ADAPTER.groups(teacher), kinds)
    scores = {k: v for k, v in magnitude_scores(ADAPTER, teacher).items()
              if k in {g.name for g in groups}}
    masks = knapsack_masks(ADAPTER, teacher, groups, scores, budget)
    macs = ADAPTER.macs(teacher, kept_counts(masks), ADAPTER.reference_lr_size(teacher))
    return ADAPTER.rebuild(teacher, masks).eval(), macs


@torch.no_grad()
def seconds(model: nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.7, 0.5])
    parser.add_argument("--size", type=int, default=64, help="LR side of the timed input")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(set_threads(args.threads), f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    teacher, source = teacher_x4()
    total = ADAPTER.macs(teacher, {}, ADAPTER.reference_lr_size(teacher))
    models = {"teacher": (teacher, "fast", total)}
    for budget in args.budgets:
        for name, kinds in (("heads", UNIT_KINDS_DEFAULT), ("channels", KINDS)):
            model, macs = rebuilt(teacher, kinds, budget)
            models[f"r={budget:g} {name}"] = (model, "fast", macs)
            if name == "channels":
                models[f"r={budget:g} {name}, authors' attention"] = (model, "reference", macs)
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds + 1):  # the first round warms up and is dropped
        for name, (model, impl, _) in models.items():
            model.set_attention_impl(impl)
            times[name].append(seconds(model, x))
    base = times["teacher"][1:]
    print(f"{source}, LR {args.size}x{args.size}, {args.rounds} interleaved rounds; MACs at the "
          f"reference size (output 1280x720)")
    print(f"{'model':<34} {'params':>8} {'MAC ratio':>9} {'median ms':>9} {'speed-up':>8}")
    for name, (model, _, macs) in models.items():
        own = times[name][1:]
        speedup = statistics.median(t / s for t, s in zip(base, own))
        print(f"{name:<34} {count_params(model)['total']:>8,} {macs / total:>9.3f} "
              f"{1e3 * statistics.median(own):>9.1f} {speedup:>7.2f}x")


if __name__ == "__main__":
    main()
