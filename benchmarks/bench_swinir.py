"""Eval-forward speed of SwinIR-light: our formulation against the authors', side by side.

Released-size model (x4, 929,628 parameters). With ../shared present it uses the parity
fixture's weights (the authors' code produced that fixture's outputs); otherwise seeded random
weights, which time the same. Both formulations run in one process on the same input in
interleaved rounds (authors', ours, authors', ours, ...): the authors' (``reference``: scaled
q times k transposed, plus the relative position bias, plus the shift mask, softmax, times v)
and ours (``fast``: one fused ``scaled_dot_product_attention`` call per layer with bias and
mask as its additive mask). The speed-up is the median of the per-round ratios, so a load
that changes during the run hits both alike. Also printed: the CPU, its capability as
PyTorch dispatches it, the threads, and the GMAC/s of each (the adapter's exact MAC count at
the padded size, attention included).

    python benchmarks/bench_swinir.py [--sizes 64 90] [--rounds 5] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from bench_model import SHARED, interleaved, matmul_gmacs, run_header
from srprune.models import create_model
from srprune.models.swinir import analytic_macs, infer_config

FIXTURE = SHARED / "fixtures" / "swinir_light_official_x4.pt"


def released_x4() -> tuple[nn.Module, str]:
    """The released-size x4 model and where its weights come from."""
    if FIXTURE.is_file():
        params = torch.load(FIXTURE, weights_only=True)["params"]
        model = create_model("swinir", **infer_config(params))
        model.load_state_dict(params, strict=True)
        return model.eval(), "parity fixture weights (synthetic)"
    torch.manual_seed(0)
    return create_model("swinir").eval(), "random weights (../shared absent)"


def compare(model: nn.Module, side: int, rounds: int) -> None:
    """Interleaved rounds at LR side x side; prints times, the speed-up and GMAC/s."""
    _, outs, times, ratios = interleaved(model, side, rounds)
    macs = analytic_macs(model.cfg, (side, side))
    diff = (outs["fast"] - outs["reference"]).abs().max().item()
    print(f"LR {side}x{side} ({macs / 1e9:.2f} GMAC at the padded size): speed-up of ours over "
          f"the authors' {statistics.median(ratios):.2f}x (median of {rounds} per-round ratios, "
          f"{min(ratios):.2f}-{max(ratios):.2f}), max |diff| {diff:.1e}")
    matmul = matmul_gmacs()
    for label, impl in (("ours", "fast"), ("authors'", "reference")):
        rate = macs / statistics.median(times[impl]) / 1e9
        print(f"  {label}: {rate:.1f} GMAC/s = {rate / matmul:.0%} of a 2048x2048 float32 matmul "
              f"({matmul:.1f} GMAC/s in this run)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 90], help="LR sides (>= 5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per size")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if args.rounds < 1 or args.threads < 1 or min(args.sizes) < 5:
        parser.error("--rounds and --threads must be positive, --sizes at least 5")
    torch.set_num_threads(args.threads)
    model, source = released_x4()
    print(run_header("SwinIR-light x4", source))
    for side in args.sizes:
        compare(model, side, args.rounds)


if __name__ == "__main__":
    main()
