"""Training loop: schedule, validation bookkeeping, exact resume after an interruption."""
from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch

from srprune.data import PatchSampler
from srprune.models import create_model
from srprune.train import Trainer, TrainSettings, WorkdirError, l1_loss, lr_at, work_lock

TINY = dict(dim=8, block_num=1, qk_dim=8, mlp_dim=8, heads=2, patch_size=[8], num_tokens=[4],
            group_size=[16], n_iters=[2], upscale=2)


def pairs(n=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lr = rng.integers(0, 256, (14, 16, 3), dtype=np.uint8)
        out.append((f"img{i}", lr, np.kron(lr, np.ones((2, 2, 1), dtype=np.uint8))))
    return out


def make_trainer(workdir, settings, loss=l1_loss):
    torch.manual_seed(0)
    model = create_model("catanet", **TINY)
    sampler = PatchSampler(pairs(), scale=2, crop_size=8, batch_size=2, seed=settings.seed)
    return Trainer(model, loss, sampler, pairs(1, seed=9), 2, settings, workdir)


class Interrupt(Exception):
    pass


def dies_at(call, loss):
    """``loss`` that raises on its ``call``-th use, as if the run were killed mid-step."""
    calls = {"n": 0}

    def wrapped(*args):
        calls["n"] += 1
        if calls["n"] == call:
            raise Interrupt
        return loss(*args)
    return wrapped


def test_resume_after_kill_gives_the_same_weights(tmp_path):
    settings = TrainSettings(iters=7, batch_size=2, crop_size=8, val_every=3, save_every=2,
                             warmup_iters=2, lr=1e-3)
    straight = make_trainer(tmp_path / "a", settings)
    straight.run(progress=False)

    # killed inside step 5; the state was last saved after step 4
    interrupted = make_trainer(tmp_path / "b", settings, loss=dies_at(5, l1_loss))
    with pytest.raises(Interrupt):
        interrupted.run(progress=False)
    resumed = make_trainer(tmp_path / "b", settings)
    assert resumed.resume() and resumed.iteration == 4
    resumed.run(progress=False)

    for (name, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    rows = list(csv.DictReader(open(tmp_path / "b/log.csv")))
    assert [int(r["iter"]) for r in rows] == list(range(0, 8))   # no duplicated rows
    assert rows[0]["val_psnr"] and not rows[0]["loss"]          # the starting model's PSNR
    assert resumed.best_psnr == straight.best_psnr
    for name in ("best.pth", "last.pth", "state.pth"):
        assert (tmp_path / "b" / name).exists()


def test_resume_refuses_changed_settings(tmp_path):
    settings = TrainSettings(iters=2, batch_size=2, crop_size=8, val_every=2, save_every=1)
    make_trainer(tmp_path, settings).run(progress=False)
    changed = make_trainer(tmp_path, TrainSettings(iters=2, batch_size=2, crop_size=8, val_every=2,
                                                   save_every=1, lr=1e-2))
    with pytest.raises(ValueError, match=r"other training settings \(lr\)"):
        changed.resume()


def test_training_reduces_the_loss(tmp_path):
    settings = TrainSettings(iters=30, batch_size=2, crop_size=8, val_every=30, save_every=30,
                             lr=2e-3)
    trainer = make_trainer(tmp_path, settings)
    trainer.run(progress=False)
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "log.csv")) if r["loss"]]
    assert np.mean(losses[-5:]) < np.mean(losses[:5])


def test_schedules():
    cosine = TrainSettings(iters=100, lr=1.0, min_lr=0.0, warmup_iters=10)
    assert lr_at(cosine, 0) == pytest.approx(0.1)
    assert lr_at(cosine, 9) == pytest.approx(1.0)
    assert lr_at(cosine, 10) == pytest.approx(1.0)
    assert lr_at(cosine, 55) == pytest.approx(0.5)
    step = TrainSettings(iters=100, lr=1.0, schedule="multistep", milestones=[50, 80], gamma=0.1)
    assert [lr_at(step, i) for i in (0, 49, 50, 80)] == pytest.approx([1.0, 1.0, 0.1, 0.01])
    with pytest.raises(ValueError, match="schedule"):
        TrainSettings(schedule="linear")
    with pytest.raises(ValueError, match="unknown training settings"):
        TrainSettings.from_dict({"iterations": 3})


def test_numbers_written_as_yaml_text_are_accepted():
    settings = TrainSettings.from_dict({"lr": "1e-4", "min_lr": "1e-6", "betas": ["0.9", 0.99]})
    assert settings.lr == 1e-4 and settings.min_lr == 1e-6 and settings.betas == (0.9, 0.99)
    with pytest.raises(ValueError, match="lr must be a number"):
        TrainSettings(lr="fast")


def assert_same_weights(a, b):
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name


def test_a_work_folder_of_another_run_is_refused_or_restarted(tmp_path):
    """A stale state used to be resumed whatever the loss or data: its old weights came back."""
    settings = TrainSettings(iters=4, batch_size=2, crop_size=8, val_every=2, save_every=2)
    first = make_trainer(tmp_path / "w", settings)
    first.fingerprint = {"loss weights": {"feat": 0.01}}
    first.run(progress=False)
    other = make_trainer(tmp_path / "w", settings, loss=dies_at(99, l1_loss))
    other.fingerprint = {"loss weights": {"feat": 0.1}}
    with pytest.raises(WorkdirError, match="another loss weights"):
        other.run(progress=False)
    other.fresh_on_change = True
    other.run(progress=False)
    assert other.loss_fn.__name__ == "wrapped" and other.iteration == 4
    rows = list(csv.DictReader(open(tmp_path / "w/log.csv")))
    assert [int(r["iter"]) for r in rows] == [0, 1, 2, 3, 4]   # a fresh log, not a resumed one
    straight = make_trainer(tmp_path / "s", settings)
    straight.run(progress=False)
    assert_same_weights(other, straight)


def test_raising_iters_continues_only_where_exact(tmp_path):
    step = dict(batch_size=2, crop_size=8, val_every=2, save_every=2, lr=1e-3,
                schedule="multistep", milestones=[3], gamma=0.5)
    make_trainer(tmp_path / "a", TrainSettings(iters=4, **step)).run(progress=False)
    longer = make_trainer(tmp_path / "a", TrainSettings(iters=6, **step))
    assert longer.resume() and longer.iteration == 4
    longer.run(progress=False)
    straight = make_trainer(tmp_path / "b", TrainSettings(iters=6, **step))
    straight.run(progress=False)
    assert_same_weights(longer, straight)
    assert longer.best_iter == straight.best_iter

    cosine = dict(batch_size=2, crop_size=8, val_every=2, save_every=2)
    make_trainer(tmp_path / "c", TrainSettings(iters=4, **cosine)).run(progress=False)
    with pytest.raises(WorkdirError, match="iters 4 -> 6 cannot continue exactly"):
        make_trainer(tmp_path / "c", TrainSettings(iters=6, **cosine)).resume()


def test_a_second_run_on_a_locked_work_folder_refuses(tmp_path):
    settings = TrainSettings(iters=2, batch_size=2, crop_size=8, val_every=2, save_every=2)
    (tmp_path / "w").mkdir()
    with work_lock(tmp_path / "w"):
        with pytest.raises(WorkdirError, match=f"in use by another run \\(process {os.getpid()}\\)"):
            make_trainer(tmp_path / "w", settings).run(progress=False)
    assert not (tmp_path / "w/state.pth").exists()
    make_trainer(tmp_path / "w", settings).run(progress=False)   # free again afterwards
