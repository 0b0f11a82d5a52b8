"""The `srprune` command: subcommands, teacher training end to end."""
from __future__ import annotations

import subprocess
import sys

import torch
import yaml

import srprune
from srprune.cli import main


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "srprune.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("train", "evaluate", "score-units", "gather-scores", "search-masks",
                    "export-zeroed", "compensate", "finetune", "rebuild", "inspect", "compare", "export-data"):
        assert command in out


def test_train_command_writes_a_self_describing_model(tmp_path, capsys, make_images):
    make_images(tmp_path / "train", 2, (48, 48), seed=0)
    make_images(tmp_path / "val", 1, (32, 32), seed=1)
    config = {
        "scale": 2, "device": "cpu",
        "model": dict(dim=8, block_num=1, qk_dim=8, mlp_dim=8, heads=2, patch_size=[8],
                      num_tokens=[4], group_size=[16], n_iters=[2]),
        "data": {"train": {"hr": str(tmp_path / "train")}, "val": {"hr": str(tmp_path / "val")}},
        "train": {"iters": 4, "batch_size": 2, "crop_size": 8, "val_every": 2, "save_every": 2},
    }
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "teacher.pth"
    assert main(["train", "--config", str(tmp_path / "cfg.yaml"), "--out", str(out), "--quiet"]) == 0
    assert "best validation PSNR" in capsys.readouterr().out
    model = srprune.load_model(out)
    assert model.cfg.upscale == 2 and model.cfg.dim == 8
    assert model.checkpoint_meta["stage"] == "train" and "val_psnr" in model.checkpoint_meta
    with torch.no_grad():
        assert model(torch.rand(1, 3, 10, 10)).shape == (1, 3, 20, 20)


def test_export_data(tmp_path, capsys):
    assert main(["export-data", "--split", "val", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut.png", "coffee.png"]


def test_bad_config_is_reported(tmp_path):
    (tmp_path / "bad.yaml").write_text("- a list\n")
    try:
        main(["train", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "o.pth")])
    except SystemExit as exit_:
        assert "must hold a mapping" in str(exit_)
    else:
        raise AssertionError("a non-mapping config must be refused")
