"""LoRA trainer on a tiny SD pipeline built from configs: loss falls, files load, stop/resume, NaN, kill -9."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from training.lora_trainer import LoraTrainer, LoraTrainingConfig, TrainingSample, list_checkpoints
from training.world import concept_scene, render

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> Path:
    from tests.tiny_models import tiny_sd_pipeline

    root = tmp_path_factory.mktemp("lora-base")
    pipe = tiny_sd_pipeline(root / "tok")
    pipe.save_pretrained(root / "model")
    return root / "model"


@pytest.fixture(scope="module")
def star_samples(tmp_path_factory) -> list[TrainingSample]:
    root = tmp_path_factory.mktemp("stars")
    samples = []
    for seed in range(6):
        scene = concept_scene(seed, "star")
        path = root / f"{seed}.png"
        render(scene, 64).save(path)
        samples.append(TrainingSample(str(path), scene.caption))
    return samples


def config(base: Path, **kw) -> LoraTrainingConfig:
    values = dict(base_model=str(base), name="stars", rank=4, alpha=4, learning_rate=5e-3, max_steps=40,
                  batch_size=2, resolution=64, seed=3, checkpoint_every=10, validation_every=0)
    values.update(kw)
    return LoraTrainingConfig(**values)


def lora_changes_output(base: Path, lora_path: str) -> bool:
    """Does diffusers' own `load_lora_weights` take the file, and does it change the same-seed image?"""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, width=64, height=64, output_type="np")
    before = pipe("a star", generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(Path(lora_path).parent), weight_name=Path(lora_path).name)  # offline-safe form
    after = pipe("a star", generator=torch.Generator().manual_seed(0), **kwargs).images
    return np.abs(after - before).mean() > 1e-4


def test_training_lowers_loss_and_writes_a_loadable_lora(tiny_base, star_samples, tmp_path):
    from safetensors import safe_open

    events = []
    trainer = LoraTrainer(config(tiny_base, max_steps=60, validation_every=30, validation_prompts=["a star"],
                                 validation_steps=2),
                          star_samples, tmp_path / "run", events.append)
    done = trainer.run()
    assert done.kind == "done" and done.step == 60
    losses = [loss for _, loss in trainer.loss_history]
    assert np.mean(losses[-15:]) < np.mean(losses[:15])
    assert [e.step for e in events if e.kind == "validation"] == [30, 60]
    with safe_open(done.path, framework="pt") as fh:
        meta = fh.metadata()
    assert meta["ss_steps"] == "60" and meta["ss_network_dim"] == "4" and meta["ss_num_train_images"] == "6"

    assert lora_changes_output(tiny_base, done.path)


def test_stop_then_resume_continues_steps_and_curve(tiny_base, star_samples, tmp_path):
    stop = threading.Event()
    run_dir = tmp_path / "run"

    def stop_at_15(event):
        if event.kind == "step" and event.step == 15:
            stop.set()

    first = LoraTrainer(config(tiny_base), star_samples, run_dir, stop_at_15).run(stop)
    assert first.kind == "stopped" and first.step == 15
    assert [p.name for p in list_checkpoints(run_dir)][-1] == "step-000015"
    (run_dir / "checkpoints" / "step-000016.tmp").mkdir()  # an incomplete checkpoint is skipped
    resumed = LoraTrainer(config(tiny_base), star_samples, run_dir)
    result = resumed.run()
    assert result.kind == "done" and result.step == 40
    assert [s for s, _ in resumed.loss_history] == list(range(1, 41))


def test_nan_loss_stops_cleanly_and_keeps_last_checkpoint(tiny_base, star_samples, tmp_path, monkeypatch):
    from training import lora_trainer

    real = lora_trainer.weighted_mse
    calls = {"n": 0}
    me = threading.get_ident()

    def flaky(*args, **kwargs):
        if threading.get_ident() == me:  # count only this test's training steps
            calls["n"] += 1
        return real(*args, **kwargs) * (float("nan") if calls["n"] >= 13 else 1.0)

    monkeypatch.setattr(lora_trainer, "weighted_mse", flaky)
    result = LoraTrainer(config(tiny_base), star_samples, tmp_path / "run").run()
    assert result.kind == "error" and "nan" in result.message.lower() and "step 10" in result.message
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["step-000010"]


KILL_SCRIPT = """
import sys, json
from pathlib import Path
sys.path.insert(0, {root!r})
from training.lora_trainer import LoraTrainer, LoraTrainingConfig, TrainingSample
cfg = LoraTrainingConfig(**json.loads({cfg!r}))
samples = [TrainingSample(**s) for s in json.loads({samples!r})]
def show(e):
    if e.kind == "checkpoint":
        print("CK", e.step, flush=True)
LoraTrainer(cfg, samples, Path({run!r}), show).run()
"""


def test_kill_during_training_then_resume(tiny_base, star_samples, tmp_path):
    from dataclasses import asdict

    cfg = config(tiny_base, max_steps=400, checkpoint_every=5)
    run_dir = tmp_path / "run"
    script = KILL_SCRIPT.format(root=str(ROOT), cfg=json.dumps(asdict(cfg)),
                                samples=json.dumps([asdict(s) for s in star_samples]), run=str(run_dir))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    seen = 0
    deadline = time.time() + 240
    while seen < 2 and time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("CK"):
            seen += 1
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert seen == 2
    checkpoints = list_checkpoints(run_dir)
    assert len(checkpoints) >= 2 and checkpoints[-1].name >= "step-000010", "the acknowledged checkpoints survive"
    last = int(checkpoints[-1].name.split("-")[1])
    resumed = LoraTrainer(config(tiny_base, max_steps=last + 5, checkpoint_every=5), star_samples, run_dir)
    result = resumed.run()
    assert result.kind == "done" and result.step == last + 5
    assert resumed.loss_history[0][0] == 1 and len(resumed.loss_history) == last + 5


def test_regularization_share_mixes_prior_images_into_batches(tiny_base, star_samples):
    import random

    prior = star_samples[:3]
    images = [(None, None, (64, 64))] * (len(star_samples) + len(prior))
    n = len(star_samples)
    only_data = LoraTrainer(config(tiny_base, batch_size=8), star_samples, Path("unused"), regularization=prior)
    assert all(i < n for _ in range(20) for i in only_data._pick(random.Random(0), images))
    mixed = LoraTrainer(config(tiny_base, batch_size=8, regularization_share=0.5), star_samples, Path("unused"),
                        regularization=prior)
    picks = [i for seed in range(50) for i in mixed._pick(random.Random(seed), images)]
    share = sum(i >= n for i in picks) / len(picks)
    assert 0.35 < share < 0.65


def test_prior_distillation_aims_regularization_rows_at_the_base_models_own_prediction(tiny_base, star_samples):
    trainer = LoraTrainer(config(tiny_base, prior_distillation=True), star_samples, Path("unused"))
    pipe = trainer._load()
    with torch.no_grad():  # a LoRA that already changes the output (peft starts the up matrices at zero)
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    gen = torch.Generator().manual_seed(0)
    noisy, target = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([10, 500, 900])
    ids = pipe.tokenizer(["a star"] * 3, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         return_tensors="pt").input_ids
    ctx = pipe.text_encoder(ids)[0]
    prior = torch.tensor([False, True, True])
    with torch.no_grad():
        with_lora = pipe.unet(noisy, t, ctx).sample
        pipe.unet.disable_adapters()
        base = pipe.unet(noisy, t, ctx).sample
        pipe.unet.enable_adapters()
    assert not torch.allclose(with_lora, base, atol=1e-4)

    got = trainer._distilled_target(pipe, target, noisy, t, ctx, prior)
    assert torch.equal(got[0], target[0]), "dataset rows keep the true noise"
    assert torch.allclose(got[1:], base[1:], atol=1e-5), "regularization rows aim at the base model"
    with torch.no_grad():
        assert torch.allclose(pipe.unet(noisy, t, ctx).sample, with_lora, atol=1e-5), "the LoRA is back on"
    plain = LoraTrainer(config(tiny_base), star_samples, Path("unused"))
    assert plain._distilled_target(pipe, target, noisy, t, ctx, prior) is target


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tiny_base, star_samples, tmp_path, monkeypatch):
    import errno

    import safetensors.torch

    real = safetensors.torch.save_file
    writes = {"n": 0}

    def fill_disk_on_second_checkpoint(tensors, filename, *args, **kwargs):
        if "step-000020.tmp" in str(filename):
            writes["n"] += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", fill_disk_on_second_checkpoint)
    events = []
    result = LoraTrainer(config(tiny_base, max_steps=30), star_samples, tmp_path / "run", events.append).run()
    assert writes["n"] == 1 and result.kind == "error"
    assert "No space left on device" in result.message and "step-000010" in result.message
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["step-000010"]  # no partial folder
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    resumed = LoraTrainer(config(tiny_base, max_steps=30), star_samples, tmp_path / "run").run()
    assert resumed.kind == "done" and resumed.step == 30


def test_caption_dropout_empties_that_share_of_captions(tiny_base, star_samples):
    import random

    idx = list(range(len(star_samples))) * 20
    dropped = LoraTrainer(config(tiny_base, caption_dropout=0.5), star_samples, Path("unused"))
    captions = dropped._captions(idx, random.Random(0))
    assert 0.35 < captions.count("") / len(captions) < 0.65
    assert set(captions) - {""} <= {s.caption for s in star_samples}
    kept = LoraTrainer(config(tiny_base), star_samples, Path("unused"))
    assert kept._captions(idx, random.Random(0)) == [star_samples[i].caption for i in idx]


def test_caption_variants_each_train_and_plain_captions_keep_the_random_stream(tiny_base, star_samples):
    """A caption holding several phrasings ("|" or one per line) trains on each of them, picked at random; a
    plain caption is used as is and draws nothing from the random stream."""
    from training.captions import caption_variants, join_variants, mirror_caption, pick_variant

    assert caption_variants(" a red star |a star, red\n\n red star on blue | ") == [
        "a red star", "a star, red", "red star on blue"]
    assert caption_variants("a red star") == ["a red star"] and caption_variants("  ") == []
    assert caption_variants(join_variants(["a red star", "star, red"])) == ["a red star", "star, red"]
    rng = random.Random(5)
    assert pick_variant("a red star", rng) == "a red star" and rng.random() == random.Random(5).random()
    varied = [TrainingSample(s.image_path, f"{s.caption} | {s.caption}, again\n{s.caption} too")
              for s in star_samples]
    trainer = LoraTrainer(config(tiny_base), varied, Path("unused"))
    idx = list(range(len(varied))) * 30
    seen = {}
    for i, caption in zip(idx, trainer._captions(idx, random.Random(0))):
        seen.setdefault(i, set()).add(caption)
    assert all(seen[i] == set(caption_variants(varied[i].caption)) for i in seen)
    mirrored = trainer._captions(idx[:len(varied)], random.Random(1), [True] * len(varied))
    assert all(c in {mirror_caption(v) for v in caption_variants(varied[i].caption)} for i, c in enumerate(mirrored))


def test_trigger_embedding_starts_from_the_chosen_words(tiny_base):
    from diffusers import StableDiffusionPipeline

    from training.lora_trainer import TriggerEmbedding

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False)
    table = pipe.text_encoder.get_input_embeddings().weight.detach().clone()
    embedding = TriggerEmbedding(pipe, "star", init="red circle")
    start = table[pipe.tokenizer("red circle", add_special_tokens=False).input_ids].mean(0)
    assert torch.allclose(embedding.vector()[0], start)
    assert pipe.tokenizer.convert_tokens_to_ids("<star>") == embedding.id


def test_trigger_embedding_trains_only_its_row_resumes_and_ships_inside_the_lora(tiny_base, star_samples, tmp_path):
    """Pivotal tuning: the trigger word gets a new token whose embedding trains; every other row is unchanged;
    the vector survives stop/resume and is bundled in the LoRA file, which diffusers still loads."""
    from diffusers import StableDiffusionPipeline

    from pipelines.embeddings import load_embedding, trigger_embeddings, use_trigger_tokens

    cfg = config(tiny_base, max_steps=20, trigger_word="star", train_embedding=True, embedding_learning_rate=5e-2)
    stop = threading.Event()
    first = LoraTrainer(cfg, star_samples, tmp_path / "run",
                        lambda e: stop.set() if e.kind == "step" and e.step == 10 else None)
    first.run(stop)
    assert first._captions([0], __import__("random").Random(0))[0].count("<star>") == 1
    saved_at_10 = first.embedding.vector()
    second = LoraTrainer(cfg, star_samples, tmp_path / "run")
    done = second.run()
    assert done.step == 20 and [s for s, _ in second.loss_history] == list(range(1, 21))

    base = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False)
    table = base.text_encoder.get_input_embeddings().weight.detach()
    trained = second.embedding.weight.detach()
    assert torch.equal(trained[:table.shape[0]], table)  # no row of the base vocabulary moved
    init = table[base.tokenizer("star", add_special_tokens=False).input_ids].mean(0)
    assert (trained[second.embedding.id] - init).abs().max() > 1e-3  # the trigger row did
    assert trained[second.embedding.id].norm() <= table.norm(dim=1).max() * 1.0001  # and no louder than any word
    assert not torch.equal(saved_at_10, second.embedding.vector())

    word, vector = load_embedding(done.path)
    assert word == "star" and torch.equal(vector, second.embedding.vector())
    base.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, width=64, height=64, output_type="np")
    before = base("a star", generator=torch.Generator().manual_seed(0), **kwargs).images
    base.load_lora_weights(str(Path(done.path).parent), weight_name=Path(done.path).name)
    vocab = len(base.tokenizer)
    with trigger_embeddings(base, [done.path]) as words:
        prompt = use_trigger_tokens("a red Star, two stars", words)
        assert prompt == "a red <star>, two stars" and len(base.tokenizer) == vocab + 1
        after = base(prompt, generator=torch.Generator().manual_seed(0), **kwargs).images
    assert np.abs(after - before).mean() > 1e-4
    assert len(base.tokenizer) == vocab and "<star>" not in base.tokenizer.get_vocab()  # removed afterwards


def test_embedding_only_steps_train_the_trigger_embedding_alone_first(tiny_base, star_samples, tmp_path):
    """Pivotal tuning's two phases: the first steps move only the trigger embedding; then the LoRA trains over
    its whole schedule (cosine from its full rate), while the embedding's schedule spans the run."""
    from safetensors.torch import load_file

    from pipelines.embeddings import load_embedding

    cfg = config(tiny_base, max_steps=8, trigger_word="star", train_embedding=True, embedding_learning_rate=5e-2,
                 embedding_only_steps=4, lr_scheduler="cosine", checkpoint_every=0)
    stop, rates = threading.Event(), {}

    def on_event(event):
        if event.kind == "step":
            rates[event.step] = event.lr
            if event.step == 4:
                stop.set()

    trainer = LoraTrainer(cfg, star_samples, tmp_path / "pivot", on_event)
    stopped = trainer.run(stop)
    assert stopped.kind == "stopped" and rates[1] == rates[4] == 0.0  # the LoRA's rate, as the Train tab shows it
    assert [trainer._lora_factor(s) for s in (0, 3)] == [0.0, 0.0]
    assert trainer._lora_factor(4) == 1.0 and trainer._schedule(4) == pytest.approx(0.5)  # cosine, half of 8 steps
    ups = [t for k, t in load_file(stopped.path).items() if "lora_B" in k or "lora_up" in k]
    assert len(ups) == 32 and all(float(t.abs().max()) == 0.0 for t in ups)  # the LoRA has not moved yet
    _, vector = load_embedding(stopped.path)
    assert torch.equal(vector, trainer.embedding.vector())
    assert (vector.reshape(-1) - trainer.embedding.start).abs().max() > 1e-3  # the embedding has
    done = LoraTrainer(cfg, star_samples, tmp_path / "pivot").run()  # resumes into the second phase
    ups = [t for k, t in load_file(done.path).items() if "lora_B" in k or "lora_up" in k]
    assert done.kind == "done" and all(float(t.abs().max()) > 0.0 for t in ups)


def test_locon_adapts_the_convolutions_and_still_loads_in_diffusers(tiny_base, star_samples, tmp_path):
    from safetensors import safe_open

    done = LoraTrainer(config(tiny_base, max_steps=8, checkpoint_every=0, train_conv=True), star_samples,
                       tmp_path / "run").run()
    with safe_open(done.path, framework="pt") as fh:
        keys, meta = list(fh.keys()), fh.metadata()
    assert any(".resnets.0.conv1.lora_A" in k for k in keys) and any(".to_q.lora" in k for k in keys)
    assert meta["ss_conv_dim"] == "4"
    assert lora_changes_output(tiny_base, done.path)

    # diffusers loads every trained layer, attention and convolution alike, with the trained values
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file

    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False)
    pipe.load_lora_weights(str(Path(done.path).parent), weight_name=Path(done.path).name, adapter_name="star")
    loaded = get_peft_model_state_dict(pipe.unet, adapter_name="star")
    trained = load_file(str(list_checkpoints(tmp_path / "run")[-1] / "unet_peft.safetensors"))
    assert loaded.keys() == trained.keys() and any(".attn2.to_k." in k for k in loaded)
    assert all(torch.equal(loaded[k], trained[k]) for k in trained)


def test_subject_weight_reads_the_alpha_channel_and_weighs_the_loss(tiny_base, star_samples, tmp_path):
    """...also through the latent cache (plain and mirrored views equal a direct encode)."""
    import random

    from PIL import Image, ImageOps

    from training.lora_trainer import subject_mask

    cutouts = []
    for n, sample in enumerate(star_samples):
        rgba = Image.open(sample.image_path).convert("RGBA")
        alpha = Image.new("L", rgba.size, 0)
        alpha.paste(255, (16, 16, 48, 48))  # the subject: the middle of the picture
        rgba.putalpha(alpha)
        rgba.save(tmp_path / f"{n}.png")
        cutouts.append(TrainingSample(str(tmp_path / f"{n}.png"), sample.caption))
    assert subject_mask(Image.open(star_samples[0].image_path)) is None  # no alpha: even weights
    assert subject_mask(Image.open(cutouts[0].image_path)).getextrema() == (0, 255)

    trainer = LoraTrainer(config(tiny_base, subject_weight=5, flip=True, random_crop=True), cutouts, tmp_path / "r")
    pipe = trainer._load()
    images = [(Image.open(s.image_path).convert("RGB"), subject_mask(Image.open(s.image_path)), (64, 64))
              for s in cutouts]
    latents, weights, _, _ = trainer._batch(pipe, random.Random(0), images)
    assert weights.shape == (2, 1) + latents.shape[-2:]
    h, w = latents.shape[-2:]
    middle, corner = weights[:, 0, h // 2 - 1:h // 2 + 1, w // 2 - 1:w // 2 + 1], weights[:, 0, 0, 0]
    assert torch.allclose(middle, torch.full_like(middle, 5.0)) and torch.allclose(corner, torch.ones_like(corner))
    assert trainer._cache_latents(pipe, images) is None  # random crop needs fresh pixels every step

    cached = LoraTrainer(config(tiny_base, subject_weight=5, flip=True), cutouts, tmp_path / "c")
    cached.latent_cache = cached._cache_latents(pipe, images)
    c_latents, c_weights, _, _ = cached._batch(pipe, random.Random(0), images)
    assert c_latents.shape == latents.shape
    assert torch.allclose(c_weights[:, 0, h // 2, w // 2], torch.full((2,), 5.0))
    plain, mirrored = cached.latent_cache[0]
    direct = cached._encode(pipe, [images[0][0]], [images[0][1]])
    flipped = cached._encode(pipe, [ImageOps.mirror(images[0][0])], [ImageOps.mirror(images[0][1])])
    for got, want in ((plain, direct), (mirrored, flipped)):
        assert all(torch.allclose(part, expected[0], atol=1e-5) for part, expected in zip(got, want))
    unflipped = LoraTrainer(config(tiny_base, subject_weight=5), cutouts, tmp_path / "d")
    assert len(unflipped._cache_latents(pipe, images)[0]) == 1, "without flip no mirrored view is encoded"

    done = LoraTrainer(config(tiny_base, subject_weight=5, max_steps=6, checkpoint_every=0), cutouts,
                       tmp_path / "run").run()
    assert done.kind == "done" and all(np.isfinite(loss) for _, loss in trainer.loss_history + [(0, done.loss)])


def test_convolutions_only_leaves_the_attention_layers_alone(tiny_base, star_samples, tmp_path):
    from safetensors import safe_open

    done = LoraTrainer(config(tiny_base, max_steps=4, checkpoint_every=0, train_conv=True, train_attention=False),
                       star_samples, tmp_path / "run").run()
    with safe_open(done.path, framework="pt") as fh:
        keys = list(fh.keys())
    assert any(".conv1.lora_A" in k for k in keys) and not any(".to_q." in k or ".to_k." in k for k in keys)
    assert lora_changes_output(tiny_base, done.path)


def test_skipped_blocks_get_no_lora_and_the_file_still_loads(tiny_base, star_samples, tmp_path):
    from safetensors import safe_open

    done = LoraTrainer(config(tiny_base, max_steps=2, checkpoint_every=0, train_conv=True,
                              skip_blocks=["up_blocks.1", "mid_block"]), star_samples, tmp_path / "run").run()
    with safe_open(done.path, framework="pt") as fh:
        keys = list(fh.keys())
    assert any("up_blocks.0." in k for k in keys) and any("down_blocks." in k for k in keys)
    assert not any("up_blocks.1." in k or "mid_block." in k for k in keys)
    assert lora_changes_output(tiny_base, done.path)


@pytest.mark.parametrize("embedding", [False, True])
def test_text_encoder_trains_at_its_own_learning_rate_and_ships_in_the_lora(tiny_base, star_samples, tmp_path,
                                                                           embedding):
    """With a trigger embedding too, the resized token table stays out of the LoRA file (diffusers would refuse it)."""
    from safetensors import safe_open

    trainer = LoraTrainer(config(tiny_base, train_text_encoder=True, text_encoder_learning_rate=1e-4, max_steps=3,
                                 checkpoint_every=2, trigger_word="star", train_embedding=embedding),
                          star_samples, tmp_path / "te")
    pipe = trainer._load()
    unet_group, text_group = trainer._param_groups(pipe)[:2]
    assert (unet_group["base_lr"], text_group["base_lr"]) == (5e-3, 1e-4) and len(text_group["params"]) == 40
    done = trainer.run()
    assert done.kind == "done"
    with safe_open(done.path, framework="pt") as fh:
        assert any(k.startswith("text_encoder.") for k in fh.keys())
    assert lora_changes_output(tiny_base, done.path)


def test_mirror_caption_swaps_the_sides_only():
    from training.captions import mirror_caption

    assert mirror_caption("a red star at the left, Right side, LEFT-hand") == "a red star at the right, Left side, RIGHT-hand"
    assert mirror_caption("a bright star leftover, rightly") == "a bright star leftover, rightly"
    assert mirror_caption(mirror_caption("star on the left")) == "star on the left"


@pytest.mark.parametrize("cached", [True, False])
def test_flipped_images_get_mirrored_captions(tiny_base, tmp_path, cached):
    """A flip augmentation mirrors "left" into "right" in the caption of exactly the mirrored images."""
    from PIL import Image, ImageOps

    left = Image.new("RGB", (64, 64), "black")
    left.paste((255, 0, 0), (4, 24, 20, 40))  # a red block at the left
    left.save(tmp_path / "left.png")
    samples = [TrainingSample(str(tmp_path / "left.png"), "a red square at the left")] * 2
    trainer = LoraTrainer(config(tiny_base, flip=True, random_crop=not cached), samples, tmp_path / "r")
    pipe = trainer._load()
    images = [(left, None, (64, 64))] * 2
    if cached:
        trainer.latent_cache = trainer._cache_latents(pipe, images)
    plain, mirrored = (trainer._encode(pipe, [img], [None])[0][0] for img in (left, ImageOps.mirror(left)))
    seen = set()
    for seed in range(8):
        latents, _, captions, _ = trainer._batch(pipe, random.Random(seed), images)
        for latent, caption in zip(latents, captions):
            # the red block's side of the latent tells which view it is
            is_mirrored = (latent - mirrored).abs().mean() < (latent - plain).abs().mean()
            assert caption == ("a red square at the right" if is_mirrored else "a red square at the left")
            seen.add(caption)
    assert len(seen) == 2, "both views occur"


def test_loraplus_puts_the_up_matrices_at_a_multiple_of_the_learning_rate(tiny_base, star_samples, tmp_path):
    trainer = LoraTrainer(config(tiny_base, loraplus_lr_ratio=4, train_text_encoder=True, text_encoder_learning_rate=1e-4,
                                 max_steps=3, checkpoint_every=0), star_samples, tmp_path / "plus")
    pipe = trainer._load()
    groups = trainer._param_groups(pipe)
    assert [g["base_lr"] for g in groups] == [5e-3, 2e-2, 1e-4, 4e-4]
    names = {id(p): n for model in (pipe.unet, pipe.text_encoder) for n, p in model.named_parameters()}
    for group, part in zip(groups, ("lora_A", "lora_B", "lora_A", "lora_B")):
        assert group["params"] and all(f".{part}." in names[id(p)] for p in group["params"])
    trainable = sum(p.requires_grad for m in (pipe.unet, pipe.text_encoder) for p in m.parameters())
    assert sum(len(g["params"]) for g in groups) == trainable
    assert trainer.run().kind == "done"


def test_min_snr_weights_follow_the_formula_and_a_run_trains_with_them(tiny_base, star_samples, tmp_path):
    import torch
    from diffusers import DDPMScheduler

    from training.lora_trainer import min_snr_weights

    t = torch.tensor([0, 250, 500, 999])
    for prediction in ("epsilon", "v_prediction"):
        scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction)
        alphas = scheduler.alphas_cumprod[t]
        snr = alphas / (1 - alphas)
        expected = torch.minimum(snr, torch.tensor(5.0)) / (snr + 1 if prediction == "v_prediction" else snr)
        weights = min_snr_weights(scheduler, t, 5.0)
        assert weights.shape == (4, 1, 1, 1)
        assert torch.allclose(weights.flatten(), expected.float(), rtol=1e-5)
        assert weights[0].item() < weights[2].item(), "the least noisy steps weigh less"
    result = LoraTrainer(config(tiny_base, min_snr_gamma=5, max_steps=4, checkpoint_every=0), star_samples,
                         tmp_path / "snr").run()
    assert result.kind == "done" and lora_changes_output(tiny_base, result.path)


def test_fast_dropout_keeps_each_element_with_probability_1_minus_p_and_scales_it():
    from training.fast_dropout import FastDropout

    drop = FastDropout(0.3)
    x = torch.ones(200_000, requires_grad=True)
    y = drop(x)
    assert abs(float((y == 0).float().mean()) - 0.3) < 0.01
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / 0.7))
    y.sum().backward()
    assert torch.equal(x.grad != 0, y != 0), "the gradient flows through the kept elements only"
    assert torch.equal(drop.eval()(x), x), "eval mode passes the input through"
    with pytest.raises(ValueError, match="dropout rate"):
        FastDropout(1.0)


def test_lora_dropout_drops_every_lora_layers_input_only_while_training(tiny_base, star_samples, tmp_path):
    from training.fast_dropout import FastDropout

    trainer = LoraTrainer(config(tiny_base, lora_dropout=0.5, train_text_encoder=True, max_steps=4,
                                 checkpoint_every=0), star_samples, tmp_path / "dropout")
    pipe = trainer._load()
    drops = [(f"{i}.{name}", m) for i, model in enumerate((pipe.unet, pipe.text_encoder))
             for name, m in model.named_modules() if name.endswith("lora_dropout.default")]
    assert any(n.startswith("0.") for n, _ in drops) and any(n.startswith("1.") for n, _ in drops)
    assert all(isinstance(m, FastDropout) and m.p == 0.5 for _, m in drops), "every LoRA layer drops half its input"
    ids = pipe.tokenizer(["a red star", "a blue circle"], padding="max_length",
                         max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
    size, channels = pipe.unet.config.sample_size, pipe.unet.config.in_channels
    for training in (True, False):
        trainer._train_mode(pipe, training)
        zeros = {}
        hooks = [m.register_forward_hook(lambda _, __, out, name=name: zeros.update({name: (out == 0).float().mean()}))
                 for name, m in drops]
        with torch.no_grad():
            pipe.unet(torch.randn(2, channels, size, size), torch.tensor([10, 500]), pipe.text_encoder(ids)[0])
        for hook in hooks:
            hook.remove()
        assert set(zeros) == {n for n, _ in drops}, "every LoRA layer ran"
        share = float(sum(zeros.values()) / len(zeros))
        assert (0.4 < share < 0.6) if training else share < 0.01, (training, share)
    result = LoraTrainer(config(tiny_base, lora_dropout=0.5, max_steps=4, checkpoint_every=0), star_samples,
                         tmp_path / "dropout-run").run()
    assert result.kind == "done" and lora_changes_output(tiny_base, result.path)
