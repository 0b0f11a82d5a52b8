"""`srprune evaluate`: published numbers on Set5, JSON contents, clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import skimage.io

from srprune.cli import main
from srprune.evaluate import evaluate_spec


def set5(shared_dir, scale):
    root = shared_dir / "data/Set5"
    return dict(hr=str(root / "HR"), lr=str(root / f"LR_bicubic/X{scale}"),
                filename_tmpl=f"{{}}x{scale}")


@pytest.mark.parametrize("scale,published", [(2, 33.66), (3, 30.39), (4, 28.42)])
def test_bicubic_matches_published_set5(shared_dir, tmp_path, scale, published, capsys):
    data = set5(shared_dir, scale)
    out = tmp_path / "bicubic.json"
    code = main(["evaluate", "--model", "bicubic", "--hr", data["hr"], "--lr", data["lr"],
                 "--filename-tmpl", data["filename_tmpl"], "--scale", str(scale), "--json", str(out)])
    assert code == 0
    result = json.loads(out.read_text())
    assert abs(result["psnr"] - published) <= 0.02
    assert len(result["per_image"]) == 5 and result["params"] == 0
    assert "PSNR" in capsys.readouterr().out


def test_third_party_x4_checkpoint_on_set5(shared_dir):
    result = evaluate_spec(str(shared_dir / "weights/catanet_x4_third_party.pth"), scale=4,
                           progress=False, **set5(shared_dir, 4))
    assert abs(result["psnr"] - 31.72) <= 0.02
    assert abs(result["ssim"] - 0.8899) <= 0.001
    assert result["params"] == 535_195
    assert result["macs_lr_size"] == [180, 320]
    assert result["macs_full"] > result["macs_thop"] > 0
    assert result["quantized_uint8"] is True
    # the float output scores about as well (the shared README's float figure is 31.725 dB)
    floating = evaluate_spec(str(shared_dir / "weights/catanet_x4_third_party.pth"), scale=4,
                             progress=False, quantize=False, **set5(shared_dir, 4))
    assert abs(floating["psnr"] - 31.725) <= 0.002


def test_errors_are_clear(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["evaluate", "--model", "bicubic", "--hr", str(empty), "--scale", "2"]) == 2
    assert str(empty) in capsys.readouterr().err
    hr = tmp_path / "hr"
    hr.mkdir()
    skimage.io.imsave(hr / "a.png", np.zeros((16, 16, 3), np.uint8), check_contrast=False)
    assert main(["evaluate", "--model", str(tmp_path / "missing.pth"), "--hr", str(hr),
                 "--scale", "2"]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_a_model_that_outputs_nan_is_reported(tmp_path, make_images, caplog):
    import torch

    import srprune
    from srprune.models import create_model

    model = create_model("catanet", dim=8, block_num=1, qk_dim=8, mlp_dim=8, heads=2,
                         patch_size=[8], num_tokens=[4], group_size=[16], n_iters=[2], upscale=2)
    with torch.no_grad():
        model.get_parameter("last_conv.bias").fill_(float("nan"))
    srprune.save_model(model, tmp_path / "nan.pth")
    make_images(tmp_path / "hr", 1, (16, 16))
    with caplog.at_level("WARNING"):
        evaluate_spec(str(tmp_path / "nan.pth"), str(tmp_path / "hr"), 2)
    assert "non-finite values (NaN or inf)" in caplog.text


def test_saved_images_are_the_scored_ones(tmp_path, make_images):
    """--save-images: BasicSR names, uint8 PNGs whose PSNR is the reported one."""
    import torch

    import srprune
    from srprune.cli import main as cli_main
    from srprune.data import read_image
    from srprune.data import load_pairs
    from srprune.evaluate import evaluate_many
    from srprune.metrics import psnr_y
    from srprune.models import create_model

    torch.manual_seed(0)
    srprune.save_model(create_model("catanet", dim=8, block_num=1, qk_dim=8, mlp_dim=8, heads=2,
                                    patch_size=[8], num_tokens=[4], group_size=[16], n_iters=[2],
                                    upscale=2), tmp_path / "net.pth")
    hr = make_images(tmp_path / "hr", 2, (22, 26))
    result = evaluate_spec(str(tmp_path / "net.pth"), str(hr), 2, progress=False,
                           save_images=str(tmp_path / "sr"))
    assert result["images"]["suffix"] == "net"
    for (name, _, hr_img), row in zip(load_pairs(str(hr), 2), result["per_image"]):
        sr = read_image(tmp_path / "sr" / f"{name}_net.png")
        assert sr.dtype == np.uint8 and sr.shape == hr_img.shape       # whole image, not cropped
        assert psnr_y(sr, hr_img, 2) == row["psnr"]
    both = evaluate_many("bicubic", {"a": str(hr), "b": str(hr)}, 2, progress=False,
                         save_images=str(tmp_path / "many"), image_suffix="x2")
    assert both["datasets"]["b"]["images"]["dir"] == str(tmp_path / "many" / "b")
    assert sorted(p.name for p in (tmp_path / "many" / "a").iterdir()) == ["im0_x2.png", "im1_x2.png"]
    with pytest.raises(ValueError, match="cannot go with --float-output"):
        evaluate_spec("bicubic", str(hr), 2, quantize=False, save_images=str(tmp_path / "f"))
    assert cli_main(["evaluate", "--model", "bicubic", "--hr", str(hr), "--scale", "2",
                     "--save-images", str(tmp_path / "c"), "--image-suffix", "a/b"]) == 2


def test_image_outputs_are_checked_before_any_image_is_scored(tmp_path, make_images):
    from srprune.evaluate import evaluate_many

    hr = make_images(tmp_path / "hr", 2, (22, 26))
    out = tmp_path / "many"
    out.mkdir()
    (out / "b").write_text("a file where data set b's images go")
    with pytest.raises(ValueError, match=f"{out / 'b'} is a file; give a folder path"):
        evaluate_many("bicubic", {"a": str(hr), "b": str(hr)}, 2, progress=False,
                      save_images=str(out), image_suffix="x2")
    (tmp_path / "sr" / "im1_x2.png").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"im1_x2.png exist as folders, where the SR images go"):
        evaluate_spec("bicubic", str(hr), 2, progress=False, save_images=str(tmp_path / "sr"),
                      image_suffix="x2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in (tmp_path / "sr").iterdir()) == ["im1_x2.png"]


def test_a_small_image_is_named_before_any_image_is_scored(tmp_path, make_images, capsys):
    hr = make_images(tmp_path / "hr", 2, (40, 40))
    skimage.io.imsave(hr / "small.png", np.zeros((16, 44, 3), np.uint8), check_contrast=False)
    assert main(["evaluate", "--model", "bicubic", "--hr", str(hr), "--scale", "4",
                 "--save-images", str(tmp_path / "sr")]) == 2
    err = capsys.readouterr().err
    assert "1 of 3 images are too small for x4 scoring" in err
    assert f"{hr / 'small.png'} (16x44)" in err
    assert not (tmp_path / "sr").exists()  # nothing scored, nothing written
