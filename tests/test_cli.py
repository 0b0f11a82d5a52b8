"""The `srprune` command: subcommands, teacher training end to end."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path
import sys

import pytest
import torch
import yaml

import srprune
from srprune.cli import main


def test_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "srprune.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for command in ("train", "evaluate", "score-units", "gather-scores", "search-masks",
                    "export-zeroed", "compensate", "finetune", "rebuild", "inspect", "time-models",
                    "compare", "export-data"):
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


def _bad_inputs(root):
    """(argv, what the one-line message must say) per class of bad input."""
    hr, tiny, model = str(root / "hr"), str(root / "tiny"), str(root / "teacher.pth")
    score = ["score-units", "--teacher", model, "--out", str(root / "s.pth")]
    evaluate = ["evaluate", "--model", "bicubic", "--hr", hr, "--scale", "2"]
    finetune = ["finetune", "--teacher", model, "--student", model, "--out", str(root / "f.pth")]
    train = ["train", "--out", str(root / "t.pth"), "--config"]
    return [
        (evaluate + ["--device", "gpu"], "argument --device: device must be cpu, cuda"),
        (score + ["--crop-size", "0"], "argument --crop-size: must be >= 1, got 0"),
        (score + ["--num-crops", "0"], "argument --num-crops: must be >= 1"),
        (score + ["--max-batch", "0"], "argument --max-batch: must be >= 1"),
        (score + ["--tokens", "0"], "argument --tokens: must be >= 1"),
        (score + ["--lam", "nan"], "argument --lam: must be a finite number"),
        (evaluate + ["--lr", hr, "--filename-tmpl", "x2"], "filename_tmpl must hold exactly one"),
        (evaluate + ["--model-config", "{heads: [4"], "--model-config is not valid YAML"),
        (train + [str(root / "no_scale.yaml")], "the train config lacks ['scale']"),
        (train + [str(root / "no_data.yaml")], "the train config lacks ['data']"),
        (finetune + ["--settings", "{trian: {iters: 5}}"],
         "unknown fine-tune settings keys ['trian']"),
        (finetune + ["--settings", "{loss: {pix: -1}}"],
         "fine-tune loss weight pix must be a finite number >= 0"),
        (["compare", "--results", str(root / "empty"), "--out", str(root / "c")],
         "missing result file"),
        (["compare", "--results", str(root / "partial"), "--out", str(root / "c")],
         "bicubic_x.json"),
        (["evaluate", "--model", "bicubic", "--hr", tiny, "--scale", "4"],
         "too small for x4 scoring (a 4-pixel border cropped, then SSIM's 11x11 window), which "
         f"needs sides of at least 19 pixels after modcrop: {tiny}/im0.png (0x0)"),
        (evaluate[:-4] + ["--dataset", f"A={hr}", "--dataset", f"A={tiny}", "--scale", "2"],
         f"argument --dataset: data set 'A' is given twice ({hr} and {tiny})"),
        (evaluate + ["--dataset", f"main={tiny}"], "is the data set 'main' next to --dataset"),
        (evaluate[:-4] + ["--lr", hr, "--dataset", f"a={hr}", "--scale", "2"],
         "--lr and --filename-tmpl describe the --hr data set, and no --hr is given"),
        (["compare", "--results", hr, "--out", str(root / "c"), "--datasets", "a", "b", "a"],
         "argument --datasets: a given more than once"),
        (["compare", "--results", hr, "--out", str(root / "c"), "--methods", "optin", "optin"],
         "argument --methods: optin given more than once"),
    ]


@pytest.fixture()
def bad_input_files(tmp_path, make_images):
    make_images(tmp_path / "hr", 1, (16, 16))
    make_images(tmp_path / "tiny", 1, (3, 3))
    (tmp_path / "no_scale.yaml").write_text("data: {train: {hr: x}, val: {hr: y}}\n")
    (tmp_path / "no_data.yaml").write_text("scale: 2\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "partial/eval").mkdir(parents=True)
    (tmp_path / "partial/eval/teacher_x.json").write_text(json.dumps(
        {"psnr": 30.0, "ssim": 0.9, "params": 1, "params_nonzero": 1, "macs_thop": 1,
         "macs_full": 1}))
    return tmp_path


@pytest.mark.parametrize("case", range(len(_bad_inputs(Path(".")))))
def test_bad_input_is_one_line_with_exit_code_2(bad_input_files, capsys, case):
    argv, expected = _bad_inputs(bad_input_files)[case]
    try:
        code = main(argv)
    except SystemExit as exit_:   # refused while parsing the command line
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert code == 2 and expected in lines[-1], err     # (a progress bar may come before)
    assert sum("error" in line for line in lines) == 1 and "Traceback" not in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--model", "bicubic", "--hr", "x", "--scale", "2", "--device", "cuda"])
    assert exit_.value.code == 2 and "CUDA is not available" in capsys.readouterr().err


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``srprune ARGS`` in a new process, its stderr a pipe (as in a Snakemake log)."""
    return subprocess.run([sys.executable, "-m", "srprune.cli", *args], capture_output=True,
                          text=True)


def test_quiet_and_verbose(tmp_path, make_images):
    hr = str(make_images(tmp_path / "hr", 2, (16, 16)))
    command = ("evaluate", "--model", "bicubic", "--hr", hr, "--scale", "2")
    default = run_cli(*command)
    assert default.returncode == 0 and "PSNR" in default.stdout
    assert "evaluate: 100% 2/2 img" in default.stderr and "\r" not in default.stderr
    assert "DEBUG" not in default.stderr
    for quiet in (("--quiet", *command), (*command, "-q")):
        result = run_cli(*quiet)
        assert result.returncode == 0 and "PSNR" in result.stdout   # the result is still printed
        assert result.stderr == ""                                   # no bar, no info
    verbose = run_cli(*command, "--verbose")
    assert "DEBUG srprune: srprune evaluate with" in verbose.stderr
    assert "DEBUG PIL" not in verbose.stderr                         # other libraries stay quiet
    both = run_cli("--quiet", *command, "--verbose")
    assert both.returncode != 0 and "exclude each other" in both.stderr


def test_every_command_takes_quiet_and_verbose():
    from srprune.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"evaluate", "train", "finetune", "visual", "plot-recovery"} <= set(commands)
    for name, sub in commands.items():
        assert {"-q", "--quiet", "-v", "--verbose"} <= set(sub._option_string_actions), name
