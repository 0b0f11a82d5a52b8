"""Eval-forward speed of CATANet: our formulation against the authors', side by side.

Released-size model (x4). With ../shared present it uses the x4 parity fixture's weights (trained-
looking centres; the authors' formulation is what produced that fixture's output); otherwise
random weights with initialised centres. Both formulations run in one process on the same
input, in interleaved rounds (authors', ours, authors', ours, ...); the speed-up is the median
of the per-round ratios, so a load that changes during the run hits both alike.

Also printed: the CPU, its capability as PyTorch dispatches it, the threads; the achieved
GMAC/s (the repository's full MAC count, attention included, ``complexity.macs_full``) and its
fraction of a 2048x2048 float32 matmul timed in the same run; and where our forward spends its
time, from one profiled forward with ``record_function`` regions (attention: projections and
attention kernels; sort+gather: assigning tokens to centres, sorting, and moving token rows for
IASA's groups and LRSA's patches; convolutions outside the FFNs; FFN: ConvFFNs with their
depthwise conv; other: norms, residual adds, pixel shuffle, ...).

    python benchmarks/bench_model.py [--sizes 64 128] [--rounds 5] [--threads N]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import platform
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn
from torch.profiler import profile, record_function

from srprune.complexity import macs_full
from srprune.models import catanet, create_model

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARES = ("attention", "sort+gather", "convolutions", "FFN")
GATHER_FUNCTIONS = ("take_rows", "put_rows", "add_rows")  # module-level helpers of catanet.py;
# TAB.assign (tokens to centres, sort) is wrapped too


def released_x4() -> tuple[nn.Module, str]:
    """The released x4 architecture with the parity fixture's weights (or seeded random ones)."""
    model = create_model("catanet", upscale=4)
    fixture = SHARED / "fixtures/catanet_official_x4.pt"
    if fixture.exists():
        model.load_state_dict(torch.load(fixture, weights_only=True)["params"])
        return model.eval(), f"weights of {fixture.name}"
    torch.manual_seed(0)
    for tab, _ in model.blocks:
        tab.initted.fill_(True)
    return model.eval(), "random weights (../shared absent)"


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what ``platform`` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_gmacs(side: int = 2048, repeats: int = 5) -> float:
    """GMAC/s of a float32 ``side`` x ``side`` matmul (median of ``repeats`` after a warm-up)."""
    a, b = torch.rand(side, side), torch.rand(side, side)
    torch.mm(a, b)
    return side ** 3 / statistics.median(timed(lambda: torch.mm(a, b)) for _ in range(repeats)) / 1e9


def forward(model: nn.Module, x: torch.Tensor, impl: str) -> torch.Tensor:
    """One eval forward with the given attention formulation."""
    model.set_attention_impl(impl)
    with torch.inference_mode():
        return model(x)


# ----------------------------------------------------------------------- profiled time shares
def region_of_modules(model: nn.Module) -> dict[str, str]:
    """Module name -> share, for the modules whose forward is one region."""
    ffns = [name for name, m in model.named_modules() if isinstance(m, catanet.ConvFFN)]
    regions = {name: "FFN" for name in ffns}
    for name, module in model.named_modules():
        if isinstance(module, (catanet.Attention, catanet.IASA)) or ".irca_attn." in name:
            regions[name] = "attention"
        elif isinstance(module, nn.Conv2d) and not any(name.startswith(f + ".") for f in ffns):
            regions[name] = "convolutions"
    return regions


def in_region(share: str, fn: Callable) -> Callable:
    """``fn`` run inside a fresh ``record_function`` region named after ``share``."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with record_function(f"share:{share}"):
            return fn(*args, **kwargs)
    return wrapped


@contextlib.contextmanager
def regions(model: nn.Module) -> Iterator[None]:
    """Mark every share's code with ``record_function`` regions (module hooks, wrapped helpers)."""
    open_regions: list[record_function] = []

    def enter(share: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            open_regions.append(record_function(f"share:{share}"))
            open_regions[-1].__enter__()
        return hook

    def leave(module: nn.Module, args: tuple, output: object) -> None:
        open_regions.pop().__exit__(None, None, None)

    handles = []
    for name, share in region_of_modules(model).items():
        module = model.get_submodule(name)
        handles += [module.register_forward_pre_hook(enter(share)), module.register_forward_hook(leave)]
    originals = {(catanet, name): getattr(catanet, name) for name in GATHER_FUNCTIONS}
    originals[catanet.TAB, "assign"] = catanet.TAB.assign
    try:
        for (owner, name), fn in originals.items():
            setattr(owner, name, in_region("sort+gather", fn))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for (owner, name), fn in originals.items():
            setattr(owner, name, fn)


def time_shares(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Fraction of one profiled forward (ours) per share: every op's self time goes to the
    innermost region around it ("other" outside all)."""
    forward(model, x, "fast")
    with regions(model), profile() as prof:
        forward(model, x, "fast")
    seconds: Counter[str] = Counter()
    for event in prof.events():
        node = event
        while node is not None and not node.name.startswith("share:"):
            node = node.cpu_parent
        seconds[node.name[len("share:"):] if node is not None else "other"] += event.self_cpu_time_total
    total = sum(seconds.values())
    return {share: seconds[share] / total for share in (*SHARES, "other")}


# ----------------------------------------------------------------------- main
def interleaved(model: nn.Module, side: int, rounds: int
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, list[float]], list[float]]:
    """The seeded input, both formulations' (warm-up) outputs, their times in interleaved
    rounds, and the per-round speed-ups of ``fast`` over ``reference``."""
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(side))
    outs = {impl: forward(model, x, impl) for impl in ("reference", "fast")}  # warm-up
    times: dict[str, list[float]] = {"reference": [], "fast": []}
    for _ in range(rounds):
        for impl in times:
            times[impl].append(timed(lambda: forward(model, x, impl)))
    ratios = [r / f for r, f in zip(times["reference"], times["fast"])]
    return x, outs, times, ratios


def compare(model: nn.Module, side: int, rounds: int) -> None:
    """Interleaved rounds at LR side x side; prints times, speed-up, GMAC/s and shares."""
    x, outs, times, ratios = interleaved(model, side, rounds)
    matmul = matmul_gmacs()
    macs = macs_full(model, (side, side))["total"]
    ref, fast = statistics.median(times["reference"]), statistics.median(times["fast"])
    diff = (outs["fast"] - outs["reference"]).abs().max().item()
    print(f"LR {side}x{side} ({macs / 1e9:.2f} GMAC): authors' {ref:.3f} s "
          f"[{min(times['reference']):.3f}-{max(times['reference']):.3f}], ours {fast:.3f} s "
          f"[{min(times['fast']):.3f}-{max(times['fast']):.3f}], speed-up "
          f"{statistics.median(ratios):.2f}x (median of {rounds} per-round ratios, "
          f"{min(ratios):.2f}-{max(ratios):.2f}), max |diff| {diff:.1e}")
    for label, seconds in (("ours", fast), ("authors'", ref)):
        print(f"  {label}: {macs / seconds / 1e9:.1f} GMAC/s = {macs / seconds / 1e9 / matmul:.0%} "
              f"of a 2048x2048 float32 matmul ({matmul:.1f} GMAC/s in this run)")
    shares = time_shares(model, x)
    print("  ours, share of a profiled forward: "
          + ", ".join(f"{share} {value:.0%}" for share, value in shares.items()))


def run_header(model: str, source: str) -> str:
    """The model and its weights, torch, the CPU and its capability, threads and load."""
    return (f"{model}, {source}; torch {torch.__version__}; CPU {cpu_name()}, capability "
            f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s), "
            f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs at start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128], help="LR sides")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per size")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    if args.rounds < 1 or args.threads < 1 or min(args.sizes) < 1:
        parser.error("--rounds, --threads and --sizes must be positive")
    torch.set_num_threads(args.threads)
    model, source = released_x4()
    print(run_header("CATANet x4 released size", source))
    for side in args.sizes:
        compare(model, side, args.rounds)


if __name__ == "__main__":
    main()
