"""Training loop shared by teacher training and (later) fine-tuning.

Adam, a stateless learning-rate schedule (linear warm-up, then cosine or multistep), periodic
validation PSNR (and that of the starting model, logged as iteration 0), the last and the best model kept, a CSV log, and exact resume: the training
state (model, optimizer, sampler and torch RNG, iteration, best PSNR) is written atomically every
``save_every`` iterations, and a killed run continues from it to the same final weights as an
uninterrupted run with the same seed.

A resume must continue the *same* run: the state records the settings and a fingerprint of
everything else that defines the run (the caller's: checksums of the models, loss weights, data);
any difference refuses the resume with the reasons (or, with ``fresh_on_change``, starts afresh).
Raising ``iters`` continues where that is exact (a multistep schedule, whose learning rates do not
depend on ``iters``, and no extra end-of-run validation that could have changed the best model).
A lock on the work folder keeps two runs from sharing it.
"""
from __future__ import annotations

import csv
import errno
import fcntl
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from .checkpoint import read_checkpoint, save_model
from .data import Pair, PatchSampler, folder_digest, load_pairs
from .device import pick_device
from .evaluate import score_model
from .fileio import save_torch
from .progress import progress_bar
from .settings import check_sections, from_mapping

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Tensor, Tensor], tuple[Tensor, dict[str, float]]]
LOG_FIELDS = ("iter", "lr", "loss", "val_psnr", "seconds")
RESUMABLE_CHANGES = ("val_every", "save_every", "keep")  # settings a resumed run may change
RUN_FILES = ("state.pth", "last.pth", "best.pth", "log.csv")  # what a fresh start removes


class WorkdirError(ValueError):
    """A work folder that holds another run, or that another process is using."""


@dataclass
class TrainSettings:
    """Optimisation settings; every field can be set from the YAML config."""

    iters: int = 20000
    batch_size: int = 16
    crop_size: int = 48           # LR crop side
    lr: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = 0.0
    schedule: str = "cosine"      # cosine | multistep
    warmup_iters: int = 0
    min_lr: float = 1e-6          # cosine floor
    milestones: list[int] = field(default_factory=list)  # multistep
    gamma: float = 0.5            # multistep factor
    grad_clip: float = 0.0        # 0: off
    val_every: int = 1000
    save_every: int = 500
    seed: int = 0
    keep: str = "best"            # which model becomes the output: best | last

    def __post_init__(self) -> None:
        for name in ("lr", "min_lr", "gamma", "weight_decay", "grad_clip"):
            setattr(self, name, _number(name, getattr(self, name)))  # YAML reads 1e-4 as text
        self.betas = tuple(_number("betas", b) for b in self.betas)
        if self.schedule not in ("cosine", "multistep"):
            raise ValueError(f"schedule must be 'cosine' or 'multistep', got {self.schedule!r}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")
        for name in ("iters", "batch_size", "crop_size", "val_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainSettings":
        return from_mapping(cls, values, "training settings")


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"training setting {name} must be a number, got {value!r}") from None


def lr_at(s: TrainSettings, it: int) -> float:
    """Learning rate for iteration ``it`` (0-based)."""
    if it < s.warmup_iters:
        return s.lr * (it + 1) / s.warmup_iters
    if s.schedule == "multistep":
        return s.lr * s.gamma ** sum(it >= m for m in s.milestones)
    progress = (it - s.warmup_iters) / max(1, s.iters - s.warmup_iters)
    return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1 + math.cos(math.pi * progress))


class Trainer:
    """Runs ``loss_fn`` over batches of ``sampler`` with resume, validation and logging.

    Files in ``workdir``: ``state.pth`` (resume), ``last.pth``, ``best.pth``, ``log.csv``.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, sampler: Any, val_pairs: Sequence[Pair],
                 scale: int, settings: TrainSettings, workdir: str | Path,
                 meta: dict[str, Any] | None = None, fingerprint: dict[str, Any] | None = None,
                 fresh_on_change: bool = False):
        self.model, self.loss_fn, self.sampler = model, loss_fn, sampler
        self.val_pairs, self.scale, self.s = val_pairs, scale, settings
        self.workdir = Path(workdir)
        self.meta = dict(meta or {})
        self.fingerprint = dict(fingerprint or {})
        self.fresh_on_change = fresh_on_change
        self.device = next(model.parameters()).device
        self.optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=settings.betas,
                                          weight_decay=settings.weight_decay)
        self.iteration = 0
        self.best_psnr = -math.inf
        self.best_iter = -1

    # ------------------------------------------------------------------ state
    @property
    def state_path(self) -> Path:
        return self.workdir / "state.pth"

    def _state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "sampler": self.sampler.state_dict(), "torch_rng": torch.get_rng_state(),
                "iteration": self.iteration, "best_psnr": self.best_psnr,
                "best_iter": self.best_iter, "settings": asdict(self.s),
                "fingerprint": self.fingerprint}

    def resume(self) -> bool:
        """Load ``state.pth`` if present; True when a run was resumed."""
        if not self.state_path.exists():
            return False
        state = read_checkpoint(self.state_path)
        reasons = self._differences(state)
        if reasons and not self.fresh_on_change:
            raise WorkdirError(f"{self.workdir} holds another run ({'; '.join(reasons)}); delete "
                               f"it, give another --workdir, or pass --fresh-on-change")
        if reasons:
            log.warning("starting afresh in %s: %s", self.workdir, "; ".join(reasons))
            for name in RUN_FILES:
                (self.workdir / name).unlink(missing_ok=True)
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["torch_rng"])
        self.iteration, self.best_psnr = state["iteration"], state["best_psnr"]
        self.best_iter = state["best_iter"]
        self._trim_log()
        log.info("resumed from %s at iteration %d", self.state_path, self.iteration)
        return True

    def _differences(self, state: dict[str, Any]) -> list[str]:
        """Why ``state`` is not a point of this run (empty when it is)."""
        old = state["settings"]
        changed = sorted(k for k, v in asdict(self.s).items() if k not in RESUMABLE_CHANGES
                         and k != "iters" and old.get(k) != v)
        reasons = [f"other training settings ({', '.join(changed)})"] if changed else []
        recorded = state.get("fingerprint", {})
        differ = sorted(k for k in {*recorded, *self.fingerprint}
                        if recorded.get(k) != self.fingerprint.get(k))
        if differ:
            reasons.append(f"another {', '.join(differ)}")
        if old.get("iters") != self.s.iters and not self._extendable(state):
            reasons.append(f"iters {old.get('iters')} -> {self.s.iters} cannot continue exactly "
                           f"(only a multistep schedule can, before or on an iteration it "
                           f"validated at)")
        return reasons

    def _extendable(self, state: dict[str, Any]) -> bool:
        """Whether continuing ``state`` to the new ``iters`` gives what a straight run gives."""
        old_iters, done = state["settings"]["iters"], state["iteration"]
        extra_validation = done == old_iters and old_iters % self.s.val_every != 0
        return (self.s.schedule == "multistep" and done <= self.s.iters
                and (self.s.keep == "last" or not extra_validation))

    # ------------------------------------------------------------------ loop
    def run(self, progress: bool = True) -> dict[str, Any]:
        """Train to ``settings.iters``; returns a summary (best/last validation PSNR)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        with work_lock(self.workdir):
            return self._run(progress)

    def _run(self, progress: bool) -> dict[str, Any]:
        torch.manual_seed(self.s.seed)
        if not self.resume():
            self._log_start()
        bar = progress_bar(total=self.s.iters, initial=self.iteration, desc="train", unit="it",
                           disable=not progress)
        self.model.train()
        last_psnr, start = math.nan, time.time()
        postfix: dict[str, str] = {}
        while self.iteration < self.s.iters:
            loss, parts = self._step()
            self.iteration += 1
            postfix.update({"loss": f"{loss:.4f}", **{k: f"{v:.4f}" for k, v in parts.items()}})
            psnr = math.nan
            if self.iteration % self.s.val_every == 0 or self.iteration == self.s.iters:
                psnr = last_psnr = self._validate()
                postfix["val_psnr"] = f"{psnr:.3f}"
            self._log(loss, psnr, time.time() - start)
            if self.iteration % self.s.save_every == 0 or self.iteration == self.s.iters:
                save_torch(self._state(), self.state_path)
            bar.set_postfix(postfix, refresh=False)
            bar.update()
        bar.close()
        return {"best_psnr": self.best_psnr, "best_iter": self.best_iter, "last_psnr": last_psnr,
                "iters": self.iteration}

    def _log_start(self) -> None:
        """Log the starting model's validation PSNR as iteration 0 (never taken as the best)."""
        self._log(math.nan, score_model(self.model, self.val_pairs, self.scale, ssim=False)["psnr"],
                  0.0)

    def _step(self) -> tuple[float, dict[str, float]]:
        lr_img, hr_img = (t.to(self.device) for t in self.sampler.sample())
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.s, self.iteration)
        self.optimizer.zero_grad(set_to_none=True)
        loss, parts = self.loss_fn(self.model, lr_img, hr_img)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at iteration {self.iteration}")
        loss.backward()
        if self.s.grad_clip > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
        self.optimizer.step()
        return loss.item(), parts

    def _validate(self) -> float:
        psnr = score_model(self.model, self.val_pairs, self.scale, ssim=False)["psnr"]
        meta = {**self.meta, "iteration": self.iteration, "val_psnr": psnr}
        save_model(self.model, self.workdir / "last.pth", meta)
        if psnr > self.best_psnr:
            self.best_psnr, self.best_iter = psnr, self.iteration
            save_model(self.model, self.workdir / "best.pth", meta)
        return psnr

    def _log(self, loss: float, psnr: float, seconds: float) -> None:
        path = self.workdir / "log.csv"
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.writer(handle)
            if new:
                writer.writerow(LOG_FIELDS)
            lr = f"{lr_at(self.s, self.iteration - 1):.3e}" if self.iteration else ""
            writer.writerow([self.iteration, lr, "" if math.isnan(loss) else f"{loss:.6f}",
                             "" if math.isnan(psnr) else f"{psnr:.4f}", f"{seconds:.1f}"])

    def _trim_log(self) -> None:
        """Drop log rows written after the resumed state (they will be redone)."""
        path = self.workdir / "log.csv"
        if path.exists():
            with open(path, newline="") as handle:
                rows = list(csv.reader(handle))
            kept = rows[:1] + [r for r in rows[1:] if int(r[0]) <= self.iteration]
            with open(path, "w", newline="") as handle:
                csv.writer(handle).writerows(kept)

    def output_checkpoint(self) -> Path:
        """The checkpoint chosen by ``settings.keep``."""
        return self.workdir / ("best.pth" if self.s.keep == "best" else "last.pth")


@contextmanager
def work_lock(workdir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``workdir`` (a second run refuses instead of mixing weights)."""
    path = workdir / "lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise WorkdirError(f"{workdir} is in use by another run (process {owner}); wait for "
                               f"it to end or give another --workdir") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def l1_loss(model: nn.Module, lr_img: Tensor, hr_img: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Plain L1 between the model output and HR."""
    return torch.nn.functional.l1_loss(model(lr_img), hr_img), {}


def check_data_section(data: Any, what: str) -> dict[str, dict[str, Any]]:
    """A ``data`` section with ``train`` and ``val`` folders (``hr``, optional ``lr``, template)."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} data must be a mapping with 'train' and 'val', got {data!r}")
    check_sections(data, ("train", "val"), ("train", "val"), f"{what} data")
    for split, spec in data.items():
        if not isinstance(spec, dict):
            raise ValueError(f"{what} data.{split} must be a mapping with 'hr', got {spec!r}")
        check_sections(spec, ("hr", "lr", "filename_tmpl"), ("hr",), f"{what} data.{split}")
    return data


def train_teacher(config: dict[str, Any], out: str | Path, workdir: str | Path,
                  progress: bool = True, fresh_on_change: bool = False) -> dict[str, Any]:
    """Train a model from scratch with L1 loss as ``config`` says; write the chosen model to out."""
    from .models import DEFAULT_ARCH, create_model

    check_sections(config, ("scale", "arch", "model", "data", "train", "device"),
                   ("scale", "data"), "train config")
    check_data_section(config["data"], "train config")
    scale = int(config["scale"])
    settings = TrainSettings.from_dict(config.get("train", {}))
    torch.manual_seed(settings.seed)
    device = pick_device(config.get("device", "auto"))
    model = create_model(config.get("arch", DEFAULT_ARCH), **{**config.get("model", {}),
                                                           "upscale": scale}).to(device)
    data = config["data"]
    train_pairs = load_pairs(scale=scale, **data["train"])
    sampler = PatchSampler(train_pairs, scale=scale, crop_size=settings.crop_size,
                           batch_size=settings.batch_size, seed=settings.seed)
    val_pairs = list(load_pairs(scale=scale, **data["val"]))
    meta = {"stage": "train", "scale": scale, "train_settings": asdict(settings),
            "data": {k: dict(v) for k, v in data.items()}}
    fingerprint = {"arch": config.get("arch", DEFAULT_ARCH), "model": config.get("model", {}),
                   "scale": scale, "data": {k: folder_digest(v) for k, v in data.items()}}
    trainer = Trainer(model, l1_loss, sampler, val_pairs, scale, settings, workdir, meta=meta,
                      fingerprint=fingerprint, fresh_on_change=fresh_on_change)
    summary = trainer.run(progress=progress)
    best = read_checkpoint(trainer.output_checkpoint())
    save_torch(best, out)
    log.info("wrote %s (%s model, validation PSNR %.3f dB)", out, settings.keep,
             best["meta"]["val_psnr"])
    return summary
