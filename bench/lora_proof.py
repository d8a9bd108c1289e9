"""The LoRA proof: teach the built-in model the held-out "star" with a LoRA, score its prompts before and after,
and compare the trainer's step time with a bare peft loop's. Its recipe is PRESETS["new shape"] and the PROOF_*
settings of training/recipes.py; every field of `LoraProofRecipe` has a --lora-* flag of the bench command."""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

from bench.common import line as _line
from pipelines.loras import load_lora_file
from studio.settings import BUILTIN_MODEL_DIR
from training.recipes import (LORA_LAYERS, PRESETS, PROOF_CLASS_PRIOR, PROOF_EMBEDDING_INIT, PROOF_EVAL_PROMPTS,
                              PROOF_IMAGES, PROOF_MINUTES, PROOF_PHRASINGS, PROOF_PRIOR_IMAGES, PROOF_REGULARIZATION_SHARE,
                              PROOF_RESOLUTION, PROOF_WARMUP_STEPS)

NEW_SHAPE = PRESETS["new shape"]
NEW_SHAPE_LAYERS = LORA_LAYERS[NEW_SHAPE["lora_layers"]]  # train_conv / train_attention
PRECISION_DTYPES = {"no": "float32", "bf16": "bfloat16", "fp16": "float16"}  # the dtype a step's matmuls run in


def _bare_lora_steps(base: Path, samples, steps: int, batch: int, rank: int, targets: list[str],
                     dropout: float = 0.0) -> float:
    """Seconds per step of a plain peft + diffusers LoRA loop on the same data (the reference), with peft's own
    LoRA dropout."""
    import numpy as np
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline
    from peft import LoraConfig
    from PIL import Image

    from training.captions import caption_variants

    pipe = StableDiffusionPipeline.from_pretrained(base, torch_dtype=torch.float32)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder):
        m.requires_grad_(False)
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=targets,
                                     lora_dropout=dropout))
    pipe.unet.train()  # peft's LoRA dropout acts in train mode only, as in the studio's trainer
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    images = [torch.from_numpy(np.asarray(Image.open(s.image_path).convert("RGB"), dtype=np.float32) / 127.5 - 1)
              .permute(2, 0, 1) for s in samples]
    times = []
    for step in range(steps):
        t0 = time.perf_counter()
        idx = [(step * batch + i) % len(samples) for i in range(batch)]
        with torch.no_grad():
            lat = pipe.vae.encode(torch.stack([images[i] for i in idx])).latent_dist.sample()
            lat = lat * pipe.vae.config.scaling_factor
        ids = pipe.tokenizer([caption_variants(samples[i].caption)[0] for i in idx], padding="max_length",
                             truncation=True, max_length=pipe.tokenizer.model_max_length,
                             return_tensors="pt").input_ids
        noise = torch.randn_like(lat)
        t = torch.randint(0, 1000, (batch,))
        target = noise_sched.get_velocity(lat, noise, t) if noise_sched.config.prediction_type == "v_prediction" \
            else noise
        pred = pipe.unet(noise_sched.add_noise(lat, noise, t), t, pipe.text_encoder(ids)[0]).sample
        loss = torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


@dataclass
class LoraProofRecipe:
    """How the LoRA proof trains (flags of the bench command; defaults are the measured recipe)."""

    minutes: float = PROOF_MINUTES
    rank: int = NEW_SHAPE["rank"]
    learning_rate: float = NEW_SHAPE["learning_rate"]
    max_steps: int = NEW_SHAPE["max_steps"]  # 0: as many as fit the minutes
    regularization_share: float = PROOF_REGULARIZATION_SHARE
    prior_distillation: bool = False  # regularization rows aim at the base model's own prediction (0.688 / 0.775)
    train_text_encoder: bool = False
    text_encoder_learning_rate: float = 0.0  # 0: the UNet LoRA's rate
    loraplus_lr_ratio: float = 1.0  # LoRA+: the up matrices' learning rate over the down ones'
    caption_dropout: float = 0.0
    flip: bool = False  # mirrored views too ("left"/"right" swapped in their captions)
    train_conv: bool = NEW_SHAPE_LAYERS["train_conv"]  # LoCon: convolutions and feed-forward layers too
    train_attention: bool = NEW_SHAPE_LAYERS["train_attention"]  # attention projections (off keeps the others)
    train_embedding: bool = NEW_SHAPE["train_embedding"]  # pivotal tuning of the trigger word "star"
    embedding_learning_rate: float = NEW_SHAPE["embedding_learning_rate"]
    embedding_init: str = PROOF_EMBEDDING_INIT  # word(s) the trigger embedding starts from ("": "star" itself)
    embedding_only_steps: int = 0  # pivotal tuning's first phase: steps that train the trigger embedding alone
    subject_weight: float = NEW_SHAPE["subject_weight"]  # loss weight on the objects' pixels (the alpha channel)
    min_snr_gamma: float = 0.0  # Min-SNR-gamma loss weighting (0 = off; 5 cut duplicates but taught no star shape)
    lora_dropout: float = NEW_SHAPE["lora_dropout"]  # dropout on each LoRA layer's input while training
    mixed_precision: str = "no"
    out: str = ""  # a folder that keeps the LoRA file and before/after contact sheets of the star prompts
    eval_prompts: int = PROOF_EVAL_PROMPTS  # star prompts, and prompts of other concepts, scored before and after
    images: int = PROOF_IMAGES  # training images of stars
    balanced: bool = False  # every colour equally often, each in both sizes (else drawn at random)
    skip_blocks: str = ""  # comma list of UNet blocks left without LoRA
    phrasings: int = PROOF_PHRASINGS  # caption variants per star image
    class_prior: int = PROOF_CLASS_PRIOR  # regularization images: the star images' scenes with a known shape


BOOL = argparse.BooleanOptionalAction
PRIOR_IMAGES = PROOF_PRIOR_IMAGES  # the LoRA proof's regularization images
LORA_RECIPE_FLAGS = (  # the bench command's flag for each LoraProofRecipe field
    ("--lora-minutes", "minutes", dict(type=float, help="LoRA proof: training time cap")),
    ("--lora-steps", "max_steps", dict(type=int, help="LoRA proof: steps (cosine schedule; 0: as many as fit the "
                                                      "minutes)")),
    ("--lora-lr", "learning_rate", dict(type=float, help="LoRA proof: learning rate")),
    ("--lora-rank", "rank", dict(type=int, help="LoRA proof: rank (= alpha)")),
    ("--lora-reg-share", "regularization_share",
     dict(type=float, help="LoRA proof: share of each batch from regularization images")),
    ("--lora-prior-distillation", "prior_distillation",
     dict(action=BOOL, help="LoRA proof: regularization images aim at the base model's own prediction (LoRA off)")),
    ("--lora-text-encoder", "train_text_encoder", dict(action="store_true",
                                                       help="LoRA proof: train the text encoder too")),
    ("--lora-text-encoder-lr", "text_encoder_learning_rate",
     dict(type=float, help="LoRA proof: the text encoder's learning rate (0: the UNet's)")),
    ("--lora-caption-dropout", "caption_dropout",
     dict(type=float, help="LoRA proof: share of captions replaced by an empty one")),
    ("--lora-plus-ratio", "loraplus_lr_ratio",
     dict(type=float, help="LoRA proof: LoRA+ (the up matrices' learning rate over the down ones'; 1 = plain LoRA)")),
    ("--lora-flip", "flip", dict(action=BOOL, help="LoRA proof: random horizontal flips (captions' left/right "
                                                    "swapped)")),
    ("--lora-attention", "train_attention",
     dict(action=BOOL, help="LoRA proof: LoRA on the attention projections (--no-lora-attention: convolutions "
                            "only)")),
    ("--lora-conv", "train_conv",
     dict(action=BOOL, help="LoRA proof: LoCon (the UNet's convolutions and feed-forward layers too)")),
    ("--lora-embedding", "train_embedding",
     dict(action=BOOL, help="LoRA proof: also train the trigger word's embedding (pivotal tuning)")),
    ("--lora-embedding-lr", "embedding_learning_rate",
     dict(type=float, help="LoRA proof: learning rate of the trigger embedding")),
    ("--lora-embedding-init", "embedding_init",
     dict(help="LoRA proof: word(s) the trigger embedding starts from ('': 'star' itself)")),
    ("--lora-embedding-only-steps", "embedding_only_steps",
     dict(type=int, help="LoRA proof: first steps that train the trigger embedding alone (pivotal tuning)")),
    ("--lora-subject-weight", "subject_weight",
     dict(type=float, help="LoRA proof: loss weight on the objects' pixels (1 = even)")),
    ("--lora-min-snr", "min_snr_gamma", dict(type=float, help="LoRA proof: Min-SNR-gamma loss weighting (0 = off)")),
    ("--lora-dropout", "lora_dropout", dict(type=float, help="LoRA proof: dropout on the LoRA layers' inputs")),
    ("--lora-precision", "mixed_precision", dict(choices=("no", "bf16"), help="LoRA proof: mixed precision")),
    ("--lora-images", "images", dict(type=int, help="LoRA proof: training images of stars")),
    ("--lora-balanced", "balanced",
     dict(action=BOOL, help="LoRA proof: every colour equally often in the training images, each in both sizes")),
    ("--lora-eval-prompts", "eval_prompts",
     dict(type=int, help="LoRA proof: star prompts, and prompts of other concepts, scored before and after")),
    ("--lora-skip-blocks", "skip_blocks",
     dict(help="LoRA proof: comma list of UNet blocks left without LoRA (e.g. up_blocks.2)")),
    ("--lora-phrasings", "phrasings",
     dict(type=int, help="LoRA proof: phrasings per star caption (1: the caption alone; more: varied phrasings as "
                         "caption variants)")),
    ("--lora-class-prior", "class_prior",
     dict(type=int, help=f"LoRA proof: regularization images (of {PRIOR_IMAGES}) showing the star images' own "
                         f"scenes with a circle, square or triangle in turn (0: all {PRIOR_IMAGES} random scenes)")),
    ("--lora-out", "out", dict(help="LoRA proof: keep the LoRA and before/after contact sheets here")),
)


def _save_sheet(pairs: list, path: Path) -> None:
    """A contact sheet of the generated images, 8 per row (for looking at what the scores measured)."""
    from diffusers.utils import make_image_grid

    images = [image for _, image in pairs]
    images += [images[0].copy()] * (-len(images) % 8)
    make_image_grid(images, rows=len(images) // 8, cols=8).save(path)


def _world_samples(folder: Path, scenes, cutouts: bool = False, phrasings: int = 1) -> list:
    """Render (scene) -> png + caption as training samples; `cutouts`: the objects' pixels marked in the alpha
    channel (for the trainer's subject weight); `phrasings` > 1: the caption holds that many variants."""
    from PIL import ImageChops

    from training.lora_trainer import TrainingSample
    from training.captions import join_variants
    from training.world import caption_phrasings, render

    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for n, scene in enumerate(scenes):
        image = render(scene)
        if cutouts:
            objects = ImageChops.difference(image, render(replace(scene, objects=()))).convert("L")
            image.putalpha(objects.point(lambda v: 255 if v else 0))
        image.save(folder / f"{n:04d}.png")
        samples.append(TrainingSample(str(folder / f"{n:04d}.png"),
                                      join_variants(caption_phrasings(scene, phrasings, seed=n))))
    return samples


def _timed_run(trainer) -> tuple[float, float]:
    """Run a short training to the end: seconds until its first step (loading, latent cache), median step."""
    started, stamps = time.perf_counter(), []
    trainer.on_event = lambda e: stamps.append(time.perf_counter()) if e.kind == "step" else None
    trainer.run()
    return stamps[0] - started, statistics.median([b - a for a, b in zip(stamps[2:], stamps[3:])])


def _steps_that_fit(cfg, samples, prior, run_dir: Path, minutes: float) -> int:
    """How many steps of this exact recipe fit `minutes` here (so the learning-rate schedule ends in time):
    a 16-step run measures the setup (loading, latent cache) and the median step."""
    from training.lora_trainer import LoraTrainer

    setup, step = _timed_run(LoraTrainer(replace(cfg, max_steps=16, checkpoint_every=0), samples, run_dir,
                                         regularization=prior))
    steps = int(0.97 * (minutes * 60 - setup) / step)
    _line("calibration: median step, steps in the time cap", f"{step * 1000:.0f} ms, {steps}")
    return steps


def proof_config(recipe: LoraProofRecipe):
    """The trainer's configuration of the LoRA proof: PRESETS["new shape"]'s batch and schedule, the PROOF_*
    settings, and the recipe's own fields (its rank is its alpha too)."""
    from studio.training_service import parse_skip_blocks
    from training.lora_trainer import LoraTrainingConfig

    return LoraTrainingConfig(base_model=str(BUILTIN_MODEL_DIR), name="star", rank=recipe.rank, alpha=recipe.rank,
                              learning_rate=recipe.learning_rate, lr_scheduler=NEW_SHAPE["lr_scheduler"],
                              warmup_steps=PROOF_WARMUP_STEPS, max_steps=recipe.max_steps,
                              batch_size=NEW_SHAPE["batch_size"], resolution=PROOF_RESOLUTION, checkpoint_every=0,
                              validation_every=0, train_text_encoder=recipe.train_text_encoder, seed=0,
                              text_encoder_learning_rate=recipe.text_encoder_learning_rate,
                              loraplus_lr_ratio=recipe.loraplus_lr_ratio,
                              regularization_share=recipe.regularization_share,
                              prior_distillation=recipe.prior_distillation,
                              caption_dropout=recipe.caption_dropout, trigger_word="star", flip=recipe.flip,
                              train_embedding=recipe.train_embedding, train_conv=recipe.train_conv,
                              train_attention=recipe.train_attention,
                              embedding_learning_rate=recipe.embedding_learning_rate,
                              embedding_init=recipe.embedding_init,
                              embedding_only_steps=recipe.embedding_only_steps,
                              subject_weight=recipe.subject_weight, min_snr_gamma=recipe.min_snr_gamma,
                              lora_dropout=recipe.lora_dropout, skip_blocks=parse_skip_blocks(recipe.skip_blocks),
                              mixed_precision=recipe.mixed_precision)


def _unet_step_flops(cfg, vae_scale_factor: int, text_length: int) -> int:
    """FLOPs of one training step's UNet forward and backward at the run's batch and resolution, on a UNet with
    the run's LoRA layers (gradients flow back through the frozen layers to every LoRA weight, and to the prompt
    encoding when the trigger embedding or the text encoder trains). The text encoder's own FLOPs, and prior
    distillation's extra forward of the regularization rows, are not counted."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    from bench.flops import train_step_flops
    from training.lora_trainer import skipped_modules, unet_targets

    unet = UNet2DConditionModel.from_pretrained(cfg.base_model, subfolder="unet", torch_dtype=torch.float32)
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                lora_dropout=cfg.lora_dropout,
                                target_modules=unet_targets(cfg.train_conv, cfg.train_attention),
                                exclude_modules=skipped_modules(cfg.skip_blocks)))
    unet.train()
    size = cfg.resolution // vae_scale_factor
    latents = torch.randn(cfg.batch_size, unet.config.in_channels, size, size)
    t = torch.randint(0, 1000, (cfg.batch_size,))
    ctx = torch.randn(cfg.batch_size, text_length, unet.config.cross_attention_dim,
                      requires_grad=cfg.train_embedding or cfg.train_text_encoder)
    dtype = getattr(torch, PRECISION_DTYPES[cfg.mixed_precision])
    autocast = torch.autocast("cpu", dtype=dtype) if cfg.mixed_precision != "no" else nullcontext()
    with autocast:
        return train_step_flops(unet, lambda out: out.sample.float().pow(2).mean(), latents, t, ctx)


def bench_lora(tmp: Path, recipe: LoraProofRecipe) -> None:
    """Teach the held-out "star" to the built-in model with a LoRA; scores before/after, speed vs a bare loop."""
    import threading

    import torch
    from diffusers import StableDiffusionPipeline

    from bench.flops import matmul_peak, share_of_peak
    from pipelines.embeddings import trigger_embeddings, use_trigger_tokens
    from pipelines.registry import BUILTIN_ID, ModelSource, recommended_settings
    from training.evaluator import concept_prompt_set, evaluate, heldout_prompt_set, parse_prompt
    from training.lora_trainer import LoraTrainer, LoraTrainingConfig, unet_targets
    from training.model_card import generate_pairs, score_pipeline
    from training.world import class_prior_scenes, concept_dataset, concept_scene, sample_scene

    print(f"LoRA: teach the held-out 'star' ({recipe})", flush=True)
    cutouts = recipe.subject_weight != 1
    scenes = (concept_dataset(recipe.images, "star") if recipe.balanced
              else [concept_scene(seed, "star") for seed in range(recipe.images)])
    samples = _world_samples(tmp / "stars", scenes, cutouts, recipe.phrasings)
    # regularization images: what the base model already knows, in the star images' own scenes (class prior)
    # and in scenes of its own world (unseen seeds)
    prior_scenes = class_prior_scenes(scenes, min(recipe.class_prior, PRIOR_IMAGES))
    prior_scenes += [sample_scene(3_000_000 + seed) for seed in range(len(prior_scenes), PRIOR_IMAGES)]
    prior = _world_samples(tmp / "prior", prior_scenes, cutouts)
    stars = concept_prompt_set("star", recipe.eval_prompts)
    others = [(p, s) for p, s in heldout_prompt_set() if parse_prompt(p).kind == "single"][:recipe.eval_prompts]
    pipe = StableDiffusionPipeline.from_pretrained(BUILTIN_MODEL_DIR, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    guidance = recommended_settings(ModelSource(BUILTIN_ID, "builtin", str(BUILTIN_MODEL_DIR)))  # as the studio
    star_pairs = generate_pairs(pipe, stars, **guidance)
    before_star, before_other = evaluate(star_pairs), score_pipeline(pipe, others, **guidance)
    out = Path(recipe.out) if recipe.out else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
        _save_sheet(star_pairs, out / "star-before.png")

    cfg = proof_config(recipe)
    if not cfg.max_steps:
        cfg.max_steps = _steps_that_fit(cfg, samples, prior, tmp / "lora-calibration", recipe.minutes)
    stop = threading.Event()
    timer = threading.Timer(recipe.minutes * 60, stop.set)
    steps = []  # (step, seconds since training started)
    trainer = LoraTrainer(cfg, samples, tmp / "lora-run", regularization=prior,
                          on_event=lambda e: steps.append((e.step, e.seconds)) if e.kind == "step" else None)
    timer.start()
    result = trainer.run(stop)
    timer.cancel()
    steps_per_s = result.step / result.seconds
    load_lora_file(pipe, result.path, "proof")
    with trigger_embeddings(pipe, [result.path]) as words:
        star_pairs = generate_pairs(pipe, stars, rewrite=lambda p: use_trigger_tokens(p, words), **guidance)
        after_star = evaluate(star_pairs)
        after_other = score_pipeline(pipe, others, rewrite=lambda p: use_trigger_tokens(p, words), **guidance)
    if out:
        _save_sheet(star_pairs, out / "star-after.png")
        for file in Path(result.path).parent.glob(Path(result.path).stem + "*"):
            shutil.copy(file, out / file.name)
        (out / "star-prompts.txt").write_text("\n".join(p for p, _ in stars) + "\n")
    for label, before, after in (("star prompts (target >= 0.7)", before_star, after_star),
                                 ("other concepts (target >= 0.8)", before_other, after_other)):
        _line(f"{label} overall before -> after", f"{before['overall']:.3f} -> {after['overall']:.3f}")
        for cat in ("colour", "shape", "background", "size", "position"):
            if cat in after:
                _line(f"  {cat}", f"{before.get(cat, 0):.3f} -> {after[cat]:.3f}")
    _line(f"training time, steps, steps / s (batch {cfg.batch_size}, {cfg.resolution}x{cfg.resolution})",
          f"{result.seconds / 60:.1f} min, {result.step} steps, {steps_per_s:.2f}")
    if steps:
        step_flops = _unet_step_flops(cfg, pipe.vae_scale_factor, pipe.tokenizer.model_max_length)
        _line("UNet GFLOP per training step (forward + backward)", f"{step_flops / 1e9:.1f}")
        peak = matmul_peak(getattr(torch, PRECISION_DTYPES[cfg.mixed_precision]))
        _line("UNet FLOP rate / matmul peak (training)", share_of_peak(step_flops, *steps[-1], peak))
    short = LoraTrainingConfig(**{**cfg.__dict__, "max_steps": 12, "train_text_encoder": False,
                                  "regularization_share": 0.0, "train_embedding": False})
    _, ours = _timed_run(LoraTrainer(short, samples, tmp / "lora-probe"))
    bare = _bare_lora_steps(BUILTIN_MODEL_DIR, samples, 12, cfg.batch_size, recipe.rank,
                            unet_targets(recipe.train_conv, recipe.train_attention), recipe.lora_dropout)
    _line("step time studio trainer / bare peft loop (target <= 1.1)", f"{ours / bare:.3f} "
          f"({ours * 1000:.0f} ms vs {bare * 1000:.0f} ms)")


