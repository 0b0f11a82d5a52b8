"""``srprune.figures``: the crop chosen, the visual comparison and the recovery plot."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import srprune
from srprune.cli import main
from srprune.compare import MissingResultError, ResultFormatError
from srprune.data import read_image
from srprune.data import load_pairs
from srprune.evaluate import evaluate_spec, model_upscaler
from srprune.layout import RunPaths
from srprune.figures import (Crop, VisualInputs, best_window, choose_crop, plot_recovery,
                             read_recovery, visual_comparison, window_sums)
from srprune.metrics import psnr_y
from srprune.models import create_model

PNG = b"\x89PNG\r\n\x1a\n"
TINY = dict(dim=8, block_num=1, qk_dim=8, mlp_dim=8, heads=2, patch_size=[8], num_tokens=[4],
            group_size=[16], n_iters=[2], upscale=2)


def test_window_sums_equal_brute_force():
    values = np.random.default_rng(0).normal(size=(7, 9))
    sums = window_sums(values, 3)
    assert sums.shape == (5, 7)
    for y in range(5):
        for x in range(7):
            assert sums[y, x] == pytest.approx(values[y:y + 3, x:x + 3].sum())


def planted(name: str, seed: int, box: tuple[int, int, int, int], noise: int):
    """``(name, teacher, bicubic, hr)``: a perfect teacher, a bicubic wrong only inside ``box``."""
    rng = np.random.default_rng(seed)
    hr = rng.integers(60, 190, (40, 48, 3), dtype=np.uint8)
    bicubic = hr.copy()
    top, left, h, w = box
    bicubic[top:top + h, left:left + w] += np.uint8(noise)
    return name, hr.copy(), bicubic, hr


def test_the_crop_is_where_the_teacher_most_improves_on_bicubic():
    _, teacher, bicubic, hr = planted("a", 0, (20, 13, 8, 8), 30)
    assert best_window(teacher, bicubic, hr, 8, border=2)[1:] == (20, 13)
    _, teacher, bicubic, hr = planted("a", 0, (0, 0, 8, 8), 30)
    gain, top, left = best_window(teacher, bicubic, hr, 8, border=2)
    assert (top, left) == (2, 2) and gain > 0       # inside the border that scoring ignores
    weak, strong = planted("weak", 1, (5, 5, 8, 8), 5), planted("strong", 2, (10, 30, 8, 8), 40)
    assert choose_crop([weak, strong], 8, 2) == Crop("strong", 10, 30, 8, 8)
    assert choose_crop([weak], 200, 2) == Crop("weak", 2, 2, 36, 36)   # clipped to the image


@pytest.fixture()
def results(tmp_path, make_images):
    """A results/<run> folder: teacher and bicubic evaluated with saved images, two rebuilt models."""
    hr = make_images(tmp_path / "hr", 2, (24, 28))
    root = tmp_path / "run"
    torch.manual_seed(0)
    srprune.save_model(create_model("catanet", **TINY), tmp_path / "teacher.pth")
    for who, model in (("teacher", str(tmp_path / "teacher.pth")), ("bicubic", "bicubic")):
        record = evaluate_spec(model, str(hr), 2, progress=False, save_images=str(root / who),
                               image_suffix=who)
        (root / "eval").mkdir(parents=True, exist_ok=True)
        (root / "eval" / f"{who}_mine.json").write_text(json.dumps(record))
    macs = json.loads((root / "eval/teacher_mine.json").read_text())["macs_full"]
    for i, budget in enumerate(("0.7", "0.5")):
        folder = root / "optin" / budget
        folder.mkdir(parents=True)
        torch.manual_seed(i + 1)
        srprune.save_model(create_model("catanet", **TINY), folder / "catanet_rebuilt.pth")
        (folder / "eval_rebuilt_mine.json").write_text(json.dumps({"macs_full": macs * float(budget)}))
    return root, hr


def upscaler(path, lr):
    return model_upscaler(srprune.load_model(path))(lr)


def test_visual_comparison_labels_crop_psnr_and_mac_ratio(results, tmp_path):
    root, hr_dir = results
    pairs = list(load_pairs(str(hr_dir), 2))
    out = tmp_path / "visual.png"
    record = visual_comparison(root, "mine", VisualInputs(pairs, 2, upscaler), out, crop_size=8)
    assert out.read_bytes()[:8] == PNG
    crop = record["crop"]
    assert (crop.height, crop.width) == (8, 8) and crop.image in {"im0", "im1"}
    hr = dict((n, h) for n, _, h in pairs)[crop.image]
    teacher = read_image(root / "teacher" / f"{crop.image}_teacher.png")
    panels = record["panels"]
    assert list(panels) == ["HR", "bicubic", "teacher", "optin r=0.7", "optin r=0.5"]
    assert panels["teacher"] == {"psnr": pytest.approx(psnr_y(crop.of(teacher), crop.of(hr), 0)),
                                 "mac_ratio": 1.0}
    assert panels["optin r=0.5"]["mac_ratio"] == pytest.approx(0.5)
    assert panels["optin r=0.7"]["mac_ratio"] == pytest.approx(0.7)
    rebuilt = upscaler(root / "optin/0.5/catanet_rebuilt.pth",
                       dict((n, lr) for n, lr, _ in pairs)[crop.image])
    assert panels["optin r=0.5"]["psnr"] == pytest.approx(psnr_y(crop.of(rebuilt), crop.of(hr), 0))
    assert panels["bicubic"]["mac_ratio"] is None and panels["HR"]["psnr"] is None

    given = visual_comparison(root, "mine", VisualInputs(pairs, 2, upscaler), out,
                              Crop("im1", 3, 4, 10, 12), layout={"optin": ["0.5"]})
    assert given["crop"] == Crop("im1", 3, 4, 10, 12) and len(given["panels"]) == 4
    one_image = visual_comparison(root, "mine", VisualInputs(pairs, 2, upscaler), out,
                                  image="im0", crop_size=6)
    assert one_image["crop"].image == "im0"


def test_visual_comparison_errors_name_the_problem(results, tmp_path):
    root, hr_dir = results
    inputs = VisualInputs(list(load_pairs(str(hr_dir), 2)), 2, upscaler)
    with pytest.raises(ValueError, match="does not fit image 'im0' of 24x28"):
        visual_comparison(root, "mine", inputs, tmp_path / "v.png", Crop("im0", 20, 0, 8, 8))
    with pytest.raises(ValueError, match="'nope' is not in data set mine"):
        visual_comparison(root, "mine", inputs, tmp_path / "v.png", image="nope")
    record = json.loads((root / "eval/teacher_mine.json").read_text())
    del record["images"]
    (root / "eval/teacher_mine.json").write_text(json.dumps(record))
    with pytest.raises(ResultFormatError, match="records no saved SR images"):
        visual_comparison(root, "mine", inputs, tmp_path / "v.png")
    with pytest.raises(MissingResultError, match="bicubic_other.json"):
        (root / "eval/teacher_other.json").write_text(json.dumps({"images": {"dir": "x", "suffix": "y"}}))
        visual_comparison(root, "other", inputs, tmp_path / "v.png")


def test_visual_command(results, tmp_path, capsys):
    root, hr_dir = results
    out = tmp_path / "v.png"
    assert main(["visual", "--results", str(root), "--dataset", "mine", "--hr", str(hr_dir),
                 "--scale", "2", "--image", "im1", "--box", "2,3,8,9", "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    assert "image im1, crop 8x9 at (2, 3)" in capsys.readouterr().out
    assert main(["visual", "--results", str(root), "--dataset", "mine", "--hr", str(hr_dir),
                 "--scale", "2", "--box", "2,3,8,9", "--out", str(out)]) == 2
    assert "--box needs --image" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["visual", "--results", str(root), "--dataset", "mine", "--hr", str(hr_dir),
              "--scale", "2", "--image", "im1", "--box", "2,3,0,9", "--out", str(out)])
    assert "TOP,LEFT,HEIGHT,WIDTH" in capsys.readouterr().err


def write_log(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("iter", "lr", "loss", "val_psnr", "seconds"))
        writer.writerows(rows)


def test_recovery_plot_reads_every_fine_tuning_log(tmp_path, capsys):
    for method in ("optin", "random"):
        for budget in ("0.7", "0.5"):
            write_log(Path(RunPaths(str(tmp_path), "catanet").finetune_log(method, budget)),
                      [(0, "", "", "30.5", "0.0"), (1, "1e-4", "0.1", "", "1.0"),
                       (2, "1e-4", "0.09", "30.9", "2.0")])
    assert read_recovery(tmp_path / "optin/0.5/finetune_log.csv") == ([0, 2], [30.5, 30.9])
    assert main(["plot-recovery", "--results", str(tmp_path), "--out",
                 str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "r.png").read_bytes()[:8] == PNG
    with pytest.raises(MissingResultError, match="magnitude/0.5/finetune_log.csv"):
        plot_recovery(tmp_path, tmp_path / "r.png", {"magnitude": ["0.5"]})
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ResultFormatError, match="iter and val_psnr"):
        read_recovery(tmp_path / "bad.csv")
