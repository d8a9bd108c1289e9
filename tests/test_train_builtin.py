"""Smoke run of the built-in model's training: loss falls, checkpoints resume, the export loads offline."""

from __future__ import annotations

import csv
import json

from training.train_builtin import main


def read_losses(path):
    with open(path) as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh)]


def test_short_training_lowers_loss_resumes_and_exports(tmp_path):
    work, out = tmp_path / "work", tmp_path / "model"
    common = ["--work-dir", str(work), "--out", str(out), "--vae-batch", "8", "--batch", "8",
              "--num-scenes", "64", "--snapshot-minutes", "100", "--threads", "2",
              "--foreground-weight", "3", "--min-snr-minutes", "0.02", "--decay-minutes", "0.05",
              "--caption-noise", "0.5", "--caption-shuffle", "0.5", "--high-noise-share", "0.3"]
    main(common + ["--vae-minutes", "5", "--vae-steps", "12", "--unet-minutes", "0.05"])
    vae = read_losses(work / "vae_loss.csv")
    assert len(vae) == 12 and sum(vae[-3:]) < sum(vae[:3])
    state = json.loads((work / "state.json").read_text())
    first_steps = state["unet_step"]
    assert first_steps >= 1 and (out / "model_index.json").exists()

    more = state["unet_seconds"] / 60 + 0.05  # the first piece may overrun its 3 s on a slow or busy machine
    main(common + ["--vae-minutes", "5", "--vae-steps", "12", "--unet-minutes", f"{more:.4f}",
                   "--position-pairs", "2"])
    state = json.loads((work / "state.json").read_text())
    assert state["unet_step"] > first_steps
    assert [p["command"].endswith("--position-pairs 2") for p in state["pieces"]] == [False, True]
    assert len(read_losses(work / "unet_loss.csv")) == state["unet_step"]
    assert len(read_losses(work / "vae_loss.csv")) == len(vae)  # the VAE phase was not repeated

    import torch
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(out, torch_dtype=torch.float32, local_files_only=True)
    image = pipe("a red circle", num_inference_steps=2, width=128, height=128).images[0]
    assert image.size == (128, 128)

    # a new run can start from this model's VAE: no VAE training, its minutes carried over
    work2 = tmp_path / "work2"
    main(["--work-dir", str(work2), "--out", str(tmp_path / "model2"), "--vae-from", str(out), "--batch", "8",
          "--num-scenes", "64", "--snapshot-minutes", "100", "--unet-minutes", "0.03"])
    second = json.loads((work2 / "state.json").read_text())
    assert second["vae_imported"] is True and second["vae_seconds"] == state["vae_seconds"]
    assert not (work2 / "vae_loss.csv").exists() and second["unet_step"] >= 1


def test_foreground_masks_cover_each_object():
    from training.train_builtin import foreground_masks
    from training.world import sample_scene

    seeds = list(range(40))
    masks = foreground_masks([sample_scene(s) for s in seeds], 16)
    for seed, mask in zip(seeds, masks):
        scene = sample_scene(seed)
        assert 0 < mask.mean() < 0.8
        for obj in scene.objects:
            assert mask[int(obj.centre[1] // 8), int(obj.centre[0] // 8)] == 1



def test_position_pairs_differ_only_in_the_position(tmp_path):
    import random

    import torch

    from training import builtin_model as bm
    from training.train_builtin import PositionPairs, Trainer, parse_args

    args = parse_args(["--work-dir", str(tmp_path), "--position-pairs", "3", "--caption-noise", "0.5",
                       "--caption-shuffle", "0.5"])
    trainer = Trainer(args)
    pairs = PositionPairs(list(range(200)), bm.make_vae().eval(), 1.0)
    n = 10
    lat, noise = torch.zeros(n, 4, 16, 16), torch.randn(n, 4, 16, 16)
    caps, masks, t = [""] * n, torch.zeros(n, 16, 16), torch.arange(n)
    trainer.put_position_pairs(pairs, random.Random(0), lat, caps, masks, noise, t)
    assert caps[:4] == [""] * 4 and lat[:4].abs().sum() == 0  # the rest of the batch is left alone
    positions = {"left", "right", "top", "bottom"}
    for k in range(4, n, 2):
        first, second = caps[k].split(), caps[k + 1].split()
        changed = [(a, b) for a, b in zip(first, second) if a != b]
        assert len(first) == len(second) and len(changed) == 1 and set(changed[0]) <= positions
        assert torch.equal(noise[k], noise[k + 1]) and t[k] == t[k + 1]
        assert not torch.equal(lat[k], lat[k + 1]) and not torch.equal(masks[k], masks[k + 1])


def test_high_noise_share_moves_that_share_of_timesteps_to_the_noisiest_40_percent():
    import torch

    from training.noise_levels import sample_timesteps

    torch.manual_seed(0)
    uniform = sample_timesteps(20_000, 1000)
    biased = sample_timesteps(20_000, 1000, high_noise_share=0.3)
    assert uniform.min() >= 0 and biased.max() < 1000
    assert abs((uniform >= 600).float().mean().item() - 0.4) < 0.02
    assert abs((biased >= 600).float().mean().item() - (0.3 + 0.7 * 0.4)) < 0.02
