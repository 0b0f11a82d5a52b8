"""Recovering a pruned model: feature knowledge distillation with the masks held fixed.

Student: the zeroed teacher (``catanet_zeroed.pth``) with its masks applied in every forward.
Teacher: the original model, frozen, in eval mode. Loss per batch:

    w_pix * L1(student, HR) + w_out * L1(student, teacher) + w_feat * sum_blocks D_b

where D_b = mean |s_b - t_b| / mean |t_b| compares block b's output tokens of student and
teacher (relative L1, so that every block weighs the same whatever its feature scale).
Defaults ``w_pix = w_out = 1`` (both image-space L1 of the same scale: the ground truth anchors
the result, the teacher's output is a target the pruned student can match more easily) and
``w_feat = 0.01``. The feature term is a sum of per-block *relative* errors, of order 1 per block
right after pruning, so 0.01 keeps it from dominating the image terms. Measured on the demo
(OPTIN masks at r = 0.5, 150 iterations, validation PSNR; teacher 33.111 dB, zeroed 32.796 dB):
``w_feat`` 0.1 -> 33.050, 0.01 -> 33.064, 0 -> 33.078 dB. In such short runs the feature term
does not help (differences under 0.03 dB); it is kept small rather than off because it is what
transfers the teacher's intermediate representation in longer runs at lower budgets (an
expectation from the distillation literature that this project has not yet measured).

Masks hold exactly, by construction: the student is trained in its rebuilt form (the masked
units do not exist, so nothing can regrow through a bias or a neighbouring weight), which is the
same function and, Adam being elementwise, the same optimisation as training the masked model,
at about 0.6x the step time and memory (``benchmarks/bench_finetune.py``). The chosen weights are
then written back into the full-size layout, masked slices zero, with the masks recorded.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checkpoint import check_same_architecture, load_finite, load_model, save_model
from .data import PatchSampler, folder_digest, load_pairs
from .device import pick_device
from .fileio import file_sha256
from .models import scale_of
from .pruning.adapter import Adapter, block_output_layers
from .pruning.artifacts import masks_of
from .pruning.registry import adapter_for
from .settings import check_sections, check_weights, from_mapping
from .train import LossFn, Trainer, TrainSettings, check_data_section

log = logging.getLogger(__name__)

DEFAULT_DATA = {"train": {"hr": "embedded:train"}, "val": {"hr": "embedded:val"}}


@dataclass
class KDWeights:
    """Weights of the three loss terms (see the module docstring for the defaults)."""

    pix: float = 1.0
    out: float = 1.0
    feat: float = 0.01

    def __post_init__(self) -> None:
        check_weights(asdict(self), "fine-tune loss weight")


def feature_kd_loss(adapter: Adapter, teacher: nn.Module, weights: KDWeights) -> LossFn:
    """The fine-tuning loss as a ``Trainer`` loss function."""
    blocks = block_output_layers(adapter.groups(teacher))

    def loss(student: nn.Module, lr_img: Tensor, hr_img: Tensor) -> tuple[Tensor, dict[str, float]]:
        feats, out = adapter.trajectory(student, lr_img)
        with torch.no_grad():
            t_feats, t_out = adapter.trajectory(teacher, lr_img)
        pix = F.l1_loss(out, hr_img)
        kd_out = F.l1_loss(out, t_out)
        feat = sum(F.l1_loss(feats[j], t_feats[j]) / t_feats[j].abs().mean().clamp(min=1e-8)
                   for j in blocks)
        total = weights.pix * pix + weights.out * kd_out + weights.feat * feat
        return total, {"pix": pix.item(), "kd_out": kd_out.item(), "feat": float(feat.detach())}
    return loss


def finetune(teacher_path: str | Path, student_path: str | Path, config: dict[str, Any],
             out: str | Path, workdir: str | Path, model_config: dict[str, Any] | None = None,
             progress: bool = True, fresh_on_change: bool = False) -> dict[str, Any]:
    """Fine-tune the masked student as ``config`` says; write the chosen model to ``out``.

    A run left in ``workdir`` is resumed only if it is this run (same settings, loss weights,
    teacher and student files, data); otherwise it is refused or, with ``fresh_on_change``,
    restarted (:class:`srprune.train.Trainer`).
    """
    check_sections(config, ("train", "loss", "data", "device"), (), "fine-tune settings")
    settings = TrainSettings.from_dict(config.get("train", {}))
    weights = from_mapping(KDWeights, config.get("loss", {}), "fine-tune loss")
    data = check_data_section(config.get("data", DEFAULT_DATA), "fine-tune settings")
    device = pick_device(config.get("device", "auto"))
    teacher = load_finite(teacher_path, **(model_config or {})).to(device).eval()
    teacher.requires_grad_(False)
    student = load_finite(student_path).to(device)
    check_same_architecture(student, teacher, student_path, teacher_path)
    masks = {name: mask.to(device) for name, mask in masks_of(student, student_path).items()}
    adapter = adapter_for(student)
    adapter.check_masks(student, masks)
    adapter.zero_units(student, masks)
    small = adapter.rebuild(student, masks).train()
    scale = scale_of(student)
    sampler = PatchSampler(load_pairs(scale=scale, **data["train"]), scale=scale,
                           crop_size=settings.crop_size, batch_size=settings.batch_size,
                           seed=settings.seed)
    meta = {"stage": "finetuned", "loss_weights": asdict(weights),
            "train_settings": asdict(settings), "teacher": str(teacher_path),
            "student": str(student_path),
            **{k: v for k, v in student.checkpoint_meta.items()
               if k in ("method", "mac_constraint", "achieved_mac_ratio", "teacher_sha256",
                        "groups", "units")}}
    fingerprint = {"teacher": file_sha256(teacher_path), "student": file_sha256(student_path),
                   "loss weights": asdict(weights), "model_config": model_config or {},
                   "data": {k: folder_digest(v) for k, v in data.items()}}
    trainer = Trainer(small, feature_kd_loss(adapter, teacher, weights), sampler,
                      list(load_pairs(scale=scale, **data["val"])), scale, settings, workdir,
                      meta=meta, fingerprint=fingerprint, fresh_on_change=fresh_on_change)
    summary = trainer.run(progress=progress)
    chosen = load_model(trainer.output_checkpoint())
    adapter.write_back(student, chosen, masks)
    save_model(student, out, {**chosen.checkpoint_meta,
                              "masks": {k: v.cpu() for k, v in masks.items()}})
    return summary
