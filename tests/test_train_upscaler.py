"""The built-in upscaler's trainer (training/train_upscaler.py) and the shipped file in assets/builtin-upscaler."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training import train_upscaler as tu

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "builtin-upscaler" / tu.WEIGHTS_FILE
TINY = ["--num-feat", "8", "--num-conv", "2", "--pool", "2", "--patch", "16", "--batch", "2", "--eval-minutes", "0",
        "--no-export", "--checkpoint-minutes", "0", "--warmup", "2"]


def test_pool_is_512_renders_and_their_area_downscales():
    hr, lr = tu.render_pool([tu.TRAIN_SEEDS, tu.TRAIN_SEEDS + 1])
    assert hr.shape == (2, 3, 512, 512) and lr.shape == (2, 3, 128, 128)
    assert hr.dtype == lr.dtype == torch.uint8
    assert (F.avg_pool2d(hr.float(), 4) - lr.float()).abs().max() <= 0.5


def test_pair_maker_gives_aligned_patches():
    hr, lr = tu.render_pool([tu.TRAIN_SEEDS + 7])
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        lo, hi = tu.make_pair(hr[0], lr[0], gen, patch=24, degrade_input=False)
        assert lo.shape == (3, 24, 24) and hi.shape == (3, 96, 96)
        # the low-res patch is the x4 area downscale of the high-res one (turns, flips, channel order alike)
        assert (F.avg_pool2d(hi[None], 4)[0] - lo).abs().max() <= 0.5 / 255 + 1e-6
    lo, hi = tu.make_pair(hr[0], lr[0], gen, patch=24)
    assert lo.shape == (3, 24, 24) and hi.shape == (3, 96, 96)
    assert 0 <= lo.min() and lo.max() <= 1


def test_degrade_keeps_size_and_softens():
    _, lr = tu.render_pool([tu.TRAIN_SEEDS + 3])
    gen = torch.Generator().manual_seed(1)
    soft = tu.degrade(lr[0], gen, blur=1.0, noise=0.0, jpeg_share=1.0)
    assert soft.shape == lr[0].shape and soft.dtype == torch.uint8
    assert not torch.equal(soft, lr[0])


def test_one_training_step_lowers_the_loss_on_a_fixed_batch():
    hr, lr = tu.render_pool([tu.TRAIN_SEEDS + 11, tu.TRAIN_SEEDS + 12])
    lo, hi = tu.make_batch(hr, lr, torch.Generator().manual_seed(2), batch=4, patch=16)
    model = tu.make_model(8, 2, seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)  # small: a first-order step
    with torch.no_grad():
        before = tu.loss_fn(model(lo), hi).item()
    tu.train_step(model, opt, lo, hi)
    with torch.no_grad():
        after = tu.loss_fn(model(lo), hi).item()
    assert after < before


def _run(work: Path, steps: int) -> tu.Trainer:
    trainer = tu.Trainer(tu.parse_args(["--work-dir", str(work), "--steps", str(steps), *TINY]))
    trainer.train()
    return trainer


def test_resume_continues_exactly_and_survives_a_kill(tmp_path, monkeypatch):
    straight = _run(tmp_path / "straight", 4)
    step, calls = tu.train_step, []

    def killed_at_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    monkeypatch.setattr(tu, "train_step", killed_at_third_step)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "pieces", 4)
    monkeypatch.setattr(tu, "train_step", step)
    # a kill mid-write leaves a half-written temp checkpoint and log rows past the last checkpoint
    (tmp_path / "pieces" / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")
    with open(tmp_path / "pieces" / "loss.csv", "a", newline="") as fh:
        csv.writer(fh).writerow([99, "1.0", "0.5", "0.001"])
    resumed = tu.Trainer(tu.parse_args(["--work-dir", str(tmp_path / "pieces"), "--steps", "4", *TINY]))
    assert resumed.state["step"] == 2
    assert [r["step"] for r in tu.read_rows(tmp_path / "pieces" / "loss.csv")] == ["1", "2"]
    resumed.train()
    assert resumed.state["step"] == straight.state["step"] == 4
    assert torch.equal(resumed.gen.get_state(), straight.gen.get_state())
    for key, value in straight.model.state_dict().items():
        assert torch.allclose(resumed.model.state_dict()[key], value, atol=1e-6), key


@pytest.mark.skipif(not SHIPPED.exists(), reason="no shipped upscaler")
def test_shipped_upscaler_loads_with_spandrel_and_beats_lanczos():
    desc = tu.load_with_spandrel(SHIPPED)
    assert desc.scale == 4 and desc.architecture.id == "Compact"
    assert SHIPPED.stat().st_size < 2 * 2**20
    scores = tu.evaluate(desc.model.eval(), *tu.heldout_set(4), with_ssim=False)
    assert scores["model"]["psnr"] > scores["lanczos"]["psnr"]
