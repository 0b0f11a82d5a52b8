"""One fine-tuning step of CATANet x4: dense student, masked student, rebuilt (smaller) student.

A step is what ``srprune finetune`` runs per iteration: forward of the student, forward of the
frozen teacher (eval mode, no grad), the feature-KD loss (:func:`srprune.finetune.feature_kd_loss`,
default weights), backward, one Adam step, and for the masked student the re-zeroing of the
masked units (the Trainer's ``step_hook``). Batch ``--batch`` of ``--crop`` x ``--crop`` LR crops
(default 8 of 48x48, HR 192x192; random pixels, seeded: the cost of CATANet does not depend on
the content, its token groups have fixed sizes).

Model: the released-size CATANet x4, random weights (seeded) with every TAB's centres set
(``initted`` True), as the teacher. Students:

* ``dense``: a copy of the teacher, no masks;
* ``masked``: the copy with the masks of r = ``--budget`` applied (``set_masks``) and the masked
  units zeroed; the masks are chosen by the knapsack of :mod:`srprune.pruning.selection` from magnitude
  scores under the full-MAC budget at the adapter's reference LR size;
* ``rebuilt``: ``adapter.rebuild(masked student, masks)``, the physically smaller model.

Step time: the three students are built in one process and stepped in turn (dense, masked,
rebuilt, dense, ...) after ``--warmup`` warm-up steps each, so that any drift of the machine's
load hits all of them alike; the median of ``--steps`` steps is reported, and the ratio to the
dense student is the median over rounds of each round's ratio (paired, robust to load drift).

Peak memory: each variant runs in a fresh child process (``--variant NAME``), since in one
process memory freed by one student stays resident (malloc arenas) and would hide the next one's
peak. The child builds the teacher and its student, then takes its baseline; on CPU it resets
the kernel's peak-RSS mark (``/proc/self/clear_refs``, Linux), runs the warm-up and one more
step, and reports VmHWM - baseline RSS: everything the step holds at its peak (activations kept
for backward, gradients, Adam's two moment buffers, temporaries), the models and inputs
excluded. If the mark cannot be reset it falls back to ``ru_maxrss`` - baseline and says so (an
underestimate if the setup had peaked higher than the step). On CUDA it uses
``torch.cuda.max_memory_allocated`` - ``memory_allocated`` at the baseline (tensors only, not the
caching allocator's reserve). "setup MB" is the baseline itself (interpreter, torch, teacher and
student, inputs).

    OMP_NUM_THREADS=1 python benchmarks/bench_finetune.py [--steps 4] [--warmup 1] [--batch 8]
        [--crop 48] [--budget 0.5] [--threads N] [--device cpu|cuda|auto] [--no-memory]
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from _common import random_released_x4, set_threads
from srprune.complexity import count_params, macs_full
from srprune.finetune import KDWeights, feature_kd_loss
from srprune.pruning.adapter import UNIT_KINDS_DEFAULT, full_kept, groups_of_kinds, kept_counts
from srprune.pruning.catanet import CATANetAdapter
from srprune.pruning.selection import Selector

VARIANTS = ("dense", "masked", "rebuilt")
ADAPTER = CATANetAdapter()


def teacher_x4(seed: int = 0) -> nn.Module:
    """Released-size CATANet x4, seeded random weights, centres set; frozen, eval mode."""
    return random_released_x4(seed).requires_grad_(False)


def masks_at(teacher: nn.Module, budget: float) -> dict[str, Tensor]:
    groups = groups_of_kinds(ADAPTER.groups(teacher), UNIT_KINDS_DEFAULT)
    lr_size = ADAPTER.reference_lr_size(teacher)
    scores = {g.name: ADAPTER.unit_magnitude(teacher, g) for g in groups}
    selector = Selector(groups, scores, lambda kept: ADAPTER.macs(teacher, kept, lr_size),
                        distortion_scores=False)
    return selector.select(budget, "knapsack")[0].masks


@dataclass
class Variant:
    name: str
    student: nn.Module
    step: Callable[[], float]
    times: list[float] = field(default_factory=list)


def student_of(name: str, teacher: nn.Module, masks: dict[str, Tensor]) -> nn.Module:
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    if name == "dense":
        return student
    ADAPTER.zero_units(student, masks)
    if name == "masked":
        ADAPTER.set_masks(student, masks)
        return student
    return ADAPTER.rebuild(student, masks).train()


def make_variant(name: str, teacher: nn.Module, masks: dict[str, Tensor], lr: Tensor,
                 hr: Tensor) -> Variant:
    device = lr.device
    student = student_of(name, teacher, masks).to(device)
    loss_fn = feature_kd_loss(ADAPTER, teacher, KDWeights())
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-4, betas=(0.9, 0.99))
    device_masks = {k: v.to(device) for k, v in masks.items()}

    def step() -> float:
        """One training step; returns its wall time in seconds."""
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = loss_fn(student, lr, hr)
        loss.backward()
        optimizer.step()
        if name == "masked":  # what the Trainer's step_hook does during fine-tuning
            ADAPTER.zero_units(student, device_masks)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return Variant(name, student, step)


def batch(args: argparse.Namespace, device: torch.device) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(123)
    lr = torch.rand(args.batch, 3, args.crop, args.crop, generator=gen)
    hr = torch.rand(args.batch, 3, 4 * args.crop, 4 * args.crop, generator=gen)
    return lr.to(device), hr.to(device)


# --------------------------------------------------------------------------- memory (child)
def _proc_status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes (Linux)."""
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        return True
    except OSError:
        return False


def measure_memory(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """Run in a fresh process: setup baseline and peak above it over warm-up + one step."""
    teacher = teacher_x4()
    masks = masks_at(teacher, args.budget)
    teacher.to(device)
    lr, hr = batch(args, device)
    variant = make_variant(args.variant, teacher, masks, lr, hr)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(args.warmup + 1):
            variant.step()
        peak = torch.cuda.max_memory_allocated(device)
        return {"setup": base, "peak_above_setup": peak - base,
                "method": "torch.cuda.max_memory_allocated"}
    base = _proc_status()["VmRSS"]
    reset = _reset_peak_rss()
    for _ in range(args.warmup + 1):
        variant.step()
    if reset:
        peak, method = _proc_status()["VmHWM"], "VmHWM after clear_refs"
    else:
        peak, method = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"
    return {"setup": base, "peak_above_setup": peak - base, "method": method}


def memory_in_child(name: str, args: argparse.Namespace) -> dict[str, object]:
    command = [sys.executable, str(Path(__file__).resolve()), "--variant", name,
               "--warmup", str(args.warmup), "--batch", str(args.batch), "--crop", str(args.crop),
               "--budget", str(args.budget), "--threads", str(args.threads),
               "--device", args.device]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child for {name} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main
def pick(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per variant first")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=48, help="LR crop side (HR is 4x)")
    parser.add_argument("--budget", type=float, default=0.5, help="mac_constraint r of the masks")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory children")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # memory child
    args = parser.parse_args()
    threads_line = set_threads(args.threads)
    device = pick(args.device)
    if args.variant:
        print(json.dumps(measure_memory(args, device)))
        return

    teacher = teacher_x4()
    masks = masks_at(teacher, args.budget)
    teacher.to(device)
    lr, hr = batch(args, device)
    variants = [make_variant(name, teacher, masks, lr, hr) for name in VARIANTS]
    kept = kept_counts(masks)
    groups = groups_of_kinds(ADAPTER.groups(teacher), UNIT_KINDS_DEFAULT)
    ref = ADAPTER.reference_lr_size(teacher)
    ratio = ADAPTER.macs(teacher, kept, ref) / ADAPTER.macs(teacher, full_kept(groups), ref)
    print(f"CATANet x4 released size, random weights (seeded), centres set; {threads_line}; "
          f"device {device}")
    print(f"step = student fwd + frozen teacher fwd (eval) + feature-KD loss + backward + Adam"
          f"; batch {args.batch} x 3 x {args.crop}x{args.crop} LR, "
          f"HR {4 * args.crop}x{4 * args.crop}")
    by_kind = {kind: (sum(kept[g.name] for g in groups if g.kind == kind),
                      sum(g.count for g in groups if g.kind == kind))
               for kind in ("head", "neuron")}
    print(f"masks: magnitude scores, knapsack selection at r = {args.budget}: kept "
          + ", ".join(f"{k} of {n} {kind}s" for kind, (k, n) in by_kind.items())
          + f"; full-MAC ratio {ratio:.4f} at LR {ref[0]}x{ref[1]}")
    started = time.perf_counter()
    for _ in range(args.warmup):
        for v in variants:
            v.step()
    for _ in range(args.steps):
        for v in variants:
            v.times.append(v.step())
    timing_s = time.perf_counter() - started
    memory = {}
    if not args.no_memory:
        for v in variants:
            memory[v.name] = memory_in_child(v.name, args)
    print(f"step time: median of {args.steps} interleaved steps after {args.warmup} warm-up "
          f"(timing phase {timing_s:.0f} s); vs dense: median over rounds of the step's time "
          f"over the dense step of the same round")
    if memory:
        print(f"memory: a fresh process per variant, {next(iter(memory.values()))['method']}; "
              f"peak = above the setup baseline (see the docstring)")
    macs_head = f"MACs@{args.crop} (G)"
    print(f"{'variant':<8} {'params':>9} {'nonzero':>9} {macs_head:>12} {'step (s)':>9} "
          f"{'min-max (s)':>13} {'vs dense':>9} {'peak MB':>9} {'setup MB':>9}")
    for v in variants:
        params = count_params(v.student)
        macs = macs_full(v.student, (args.crop, args.crop))["total"]
        median = statistics.median(v.times)
        paired = statistics.median(t / d for t, d in zip(v.times, variants[0].times))
        mem = memory.get(v.name)
        peak = f"{mem['peak_above_setup'] / 2**20:9.0f}" if mem else f"{'-':>9}"
        setup = f"{mem['setup'] / 2**20:9.0f}" if mem else f"{'-':>9}"
        spread = f"{min(v.times):.2f}-{max(v.times):.2f}"
        print(f"{v.name:<8} {params['total']:>9,} {params['nonzero']:>9,} {macs / 1e9:>12.3f} "
              f"{median:>9.2f} {spread:>13} {paired:>8.2f}x {peak} {setup}")
    print(f"MACs: srprune.complexity.macs_full at one {args.crop}x{args.crop} input (the masked "
          f"student multiplies masked units by 0, so it does the dense arithmetic)")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
