"""Running the Snakemake workflow from the tests: a copy of its files, tiny teachers and
configs, and reading ``snakemake -n`` output (tests/test_workflow.py, tests/cluster/)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

import srprune
from srprune.models import create_model

ROOT = Path(__file__).resolve().parents[1]


def snakemake(*args, cwd):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


WORKFLOW_FILES = ("Snakefile", "rules", "config", "profiles", "report", "envs",
                  "workflow/srprune/layout.py")  # the Snakefile loads layout.py by path


def copy_workflow(dest: Path) -> Path:
    """The workflow files (not results) copied into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src, target = ROOT / name, dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, target)
    return dest


def write_config(root: Path, config: dict, name: str = "config/config.yaml") -> Path:
    (root / name).write_text(yaml.safe_dump(config))
    return root / name


def default_config() -> dict:
    return yaml.safe_load((ROOT / "config/config.yaml").read_text())


def dry_run(*args, cwd=ROOT) -> str:
    """The output of a successful ``snakemake -n`` (a failure shows its end)."""
    result = snakemake("-n", *args, cwd=cwd)
    text = result.stdout + result.stderr
    assert result.returncode == 0, text[-3000:]
    return text


def jobs_of(plan: str) -> dict[str, list[str]]:
    """``{rule: [each job's block of the dry-run output]}`` (local rules too)."""
    jobs: dict[str, list[str]] = {}
    for block in re.split(r"^(?=(?:local)?rule \w+:$)", plan, flags=re.M)[1:]:
        name = re.match(r"(?:local)?rule (\w+):", block).group(1)
        jobs.setdefault(name, []).append(block)
    return jobs


def resources_of(block: str) -> dict[str, str]:
    line = next((line for line in block.splitlines() if "resources:" in line), "resources:")
    pairs = (item.split("=", 1) for item in line.split("resources:", 1)[1].split(", ") if item)
    return {key.strip(): value for key, value in pairs}


def tiny_teacher(path: Path, blocks: int = 1) -> None:
    """An x2 CATANet of ``blocks`` tiny blocks saved at ``path``."""
    torch.manual_seed(0)
    teacher = create_model("catanet", dim=8, block_num=blocks, qk_dim=8, mlp_dim=8, heads=2,
                           patch_size=[8] * blocks, num_tokens=[4] * blocks,
                           group_size=[16] * blocks, n_iters=[2] * blocks, upscale=2)
    srprune.save_model(teacher, path)


def tiny_swinir_teacher(path: Path) -> None:
    """A one-group, two-layer x2 SwinIR (window 4, so shifted windows too) saved at ``path``."""
    torch.manual_seed(0)
    teacher = create_model("swinir", upscale=2, img_size=8, window_size=4, embed_dim=8,
                           depths=[2], num_heads=[2], mlp_ratio=1.0)
    srprune.save_model(teacher, path)


def tiny_config(root: Path, teacher: str, images: str, methods: list[str],
                budgets: list[float], train: dict) -> dict:
    """config/config.yaml of ``root`` rewritten for a tiny run named ``tiny`` on ``images``."""
    config = yaml.safe_load((root / "config/config.yaml").read_text())
    config.update(run="tiny", teacher={"weights_path": teacher}, datasets={"mine": {"hr": images}})
    config["prune"].update(methods=methods, budgets=budgets,
                           calibration={"hr": images, "num_crops": 2, "crop_size": 8})
    config["prune"]["optin"].update(num_crops=2, crop_size=8)
    config["finetune"] = {"device": "cpu", "train": {"crop_size": 8, **train},
                          "data": {"train": {"hr": images}, "val": {"hr": images}}}
    write_config(root, config)
    return config
