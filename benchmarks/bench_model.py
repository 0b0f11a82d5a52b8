"""Eval-forward speed of CATANet: our fast attention formulation against the authors'.

Released-size model (x4). With ../shared present it uses the x4 parity fixture's weights (trained-
looking centres; the authors' formulation is what produced that fixture's output); otherwise
random weights with initialised centres. Both formulations run side by side in one process, on
the same inputs, interleaved, and the output difference is printed next to the speed ratio.

    python benchmarks/bench_model.py [--sizes 64 128] [--repeats 5] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from srprune.models import create_model

SHARED = Path(__file__).resolve().parents[2] / "shared"


def released_x4() -> tuple[torch.nn.Module, str]:
    model = create_model("catanet", upscale=4)
    fixture = SHARED / "fixtures/catanet_official_x4.pt"
    if fixture.exists():
        model.load_state_dict(torch.load(fixture, weights_only=True)["params"])
        return model.eval(), f"weights of {fixture.name}"
    torch.manual_seed(0)
    for tab, _ in model.blocks:
        tab.initted.fill_(True)
    return model.eval(), "random weights (../shared absent)"


def time_forward(model: torch.nn.Module, x: torch.Tensor, impl: str) -> tuple[float, torch.Tensor]:
    model.set_attention_impl(impl)
    start = time.perf_counter()
    with torch.no_grad():
        out = model(x)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="LR sides")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, source = released_x4()
    print(f"CATANet x4 released size, {source}; torch {torch.__version__}, "
          f"{args.threads} threads, median of {args.repeats} runs after one warm-up each")
    print(f"{'LR size':>9} {'authors (s)':>12} {'ours (s)':>10} {'speed-up':>9} {'max |diff|':>11}")
    for side in args.sizes:
        x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(side))
        times: dict[str, list[float]] = {"reference": [], "fast": []}
        outs = {}
        for impl in times:  # warm-up
            time_forward(model, x, impl)
        for _ in range(args.repeats):
            for impl in times:
                seconds, outs[impl] = time_forward(model, x, impl)
                times[impl].append(seconds)
        ref, fast = statistics.median(times["reference"]), statistics.median(times["fast"])
        diff = (outs["fast"] - outs["reference"]).abs().max().item()
        print(f"{side:>4}x{side:<4} {ref:>12.3f} {fast:>10.3f} {ref / fast:>8.2f}x {diff:>11.2e}")


if __name__ == "__main__":
    main()
