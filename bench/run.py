"""The project's benchmark: ratios measured side by side in one run.

    python -m studio.bench [--quick] [--skip adherence,gallery,coldstart]

Prints: studio txt2img vs raw diffusers (wall-time ratio, pixel identity), cache hit vs cold load, mode
switching cost, cold start of app.py to first served page, gallery store at 100k images, and the built-in
model's prompt adherence on the held-out prompt set, and the LoRA proof (teaching it the held-out "star").
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

from studio.settings import BUILTIN_MODEL_DIR, PROJECT_ROOT, Settings


def _line(name: str, value: str) -> None:
    print(f"  {name:<44} {value}", flush=True)


def _services(tmp: Path):
    from studio.services import build_services

    settings = Settings(data_dir=tmp / "data", models_dir=tmp / "models", offline=True, device="cpu",
                        dtype="float32")
    return build_services(settings)


def bench_generation(tmp: Path, repeats: int) -> None:
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from pipelines.samplers import make_scheduler
    from studio.generation_service import GenerationRequest

    services = _services(tmp)
    raw = StableDiffusionPipeline.from_pretrained(BUILTIN_MODEL_DIR, torch_dtype=torch.float32)
    raw.set_progress_bar_config(disable=True)
    raw.scheduler = make_scheduler("DPM++ 2M", dict(raw.scheduler.config))
    prompt = "a red circle on a blue background"
    req = GenerationRequest(prompt=prompt, sampler="DPM++ 2M", steps=20, width=128, height=128, seed=11)
    checked = services.generation.validate(req)  # the model's recommended CFG scale and rescale
    guidance = dict(guidance_scale=checked.cfg_scale, guidance_rescale=checked.cfg_rescale)
    print(f"Generation (built-in model, 20 steps, 128x128, DPM++ 2M, CFG {checked.cfg_scale:g}, "
          f"rescale {checked.cfg_rescale:g})", flush=True)
    for _ in range(2):  # warm both paths (the studio's second image freezes its CPU graph)
        services.generation.generate(req)
    raw(prompt, num_inference_steps=20, width=128, height=128, generator=torch.Generator().manual_seed(11),
        **guidance)
    studio_t, raw_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = services.generation.generate(req)
        studio_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        image = raw(prompt, num_inference_steps=20, width=128, height=128,
                    generator=torch.Generator().manual_seed(11), **guidance).images[0]
        raw_t.append(time.perf_counter() - t0)
    diff = np.abs(np.asarray(Image.open(result.images[0].path), dtype=int) - np.asarray(image, dtype=int)).max()
    s, r = statistics.median(studio_t), statistics.median(raw_t)
    _line("studio txt2img (incl. PNG save + gallery)", f"{s:.3f} s")
    _line("raw diffusers call", f"{r:.3f} s")
    _line("wall-time ratio studio/raw (target <= 1.05)", f"{s / r:.3f}")
    _line("largest pixel difference studio vs raw (0..255; frozen CPU graphs round differently)", f"{diff}")


def bench_cache(tmp: Path) -> None:
    print("Model cache", flush=True)
    services = _services(tmp)
    models = services.models
    t0 = time.perf_counter()
    with models.pipeline("builtin:shapes", "txt2img"):
        pass
    cold = time.perf_counter() - t0
    hits = []
    for _ in range(20):
        t0 = time.perf_counter()
        with models.pipeline("builtin:shapes", "txt2img"):
            pass
        hits.append(time.perf_counter() - t0)
    hit = statistics.median(hits)
    _line("cold load", f"{cold * 1000:.1f} ms")
    _line("cache hit", f"{hit * 1000:.3f} ms")
    _line("hit vs cold speed-up (target >= 20x)", f"{cold / hit:.0f}x")
    loads_before = models.stats().loads
    t0 = time.perf_counter()
    for kind in ("img2img", "inpaint", "txt2img"):
        with models.pipeline("builtin:shapes", kind):
            pass
    switch = time.perf_counter() - t0
    extra_loads = sum(1 for e in models.stats().entries if e["kind"] == "txt2img") - 1
    derive_ms = sum(e["load_seconds"] for e in models.stats().entries if e["shared_with"]) * 1000
    _line("switch txt2img->img2img->inpaint->txt2img", f"{switch * 1000:.1f} ms (target < 50 ms)")
    _line("img2img + inpaint views built once at load", f"{derive_ms:.1f} ms (from_pipe, no weight copy)")
    _line("extra weight loads while switching", f"{extra_loads} (derived entries: "
          f"{models.stats().loads - loads_before}, sharing weights)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_cold_start(tmp: Path) -> None:
    print("Cold start", flush=True)
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(PROJECT_ROOT / "app.py"), "--port", str(port), "--data-dir",
                             str(tmp / "cold"), "--offline"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while time.perf_counter() - t0 < 120:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                time.sleep(0.1)
        _line("python app.py -> first served page (target <= 15 s)", f"{time.perf_counter() - t0:.2f} s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def bench_gallery(tmp: Path, n: int) -> None:
    from studio.stores.bench_store import bench_gallery as run

    print(f"Gallery store ({n:,} images)", flush=True)
    numbers = run(tmp / "gallery", n=n)
    for key, value in numbers.items():
        _line(key, f"{value:.3f}" if isinstance(value, float) else str(value))


def bench_adherence(tmp: Path, limit: int | None) -> None:
    from PIL import Image

    from studio.generation_service import GenerationRequest
    from training.evaluator import evaluate_by_phrasing, heldout_scenes

    scenes = heldout_scenes()[:limit] if limit else heldout_scenes()
    prompts = [(scene.caption, seed) for scene, seed in scenes]
    print(f"Built-in model adherence ({len(prompts)} held-out prompts, 20 steps, 128x128)", flush=True)
    services = _services(tmp)
    pairs, seconds = [], []
    for prompt, seed in prompts:
        t0 = time.perf_counter()
        result = services.generation.generate(GenerationRequest(prompt=prompt, seed=seed, steps=20))
        seconds.append(time.perf_counter() - t0)
        pairs.append((prompt, Image.open(result.images[0].path).convert("RGB")))
    groups = evaluate_by_phrasing(pairs, scenes)
    for key, value in groups.pop("all prompts").items():
        _line(key, f"{value:.3f}")
    for label, scores in groups.items():
        _line(label, ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    _line("mean seconds per image (target <= 1 s)", f"{statistics.mean(seconds):.3f}")


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

    minutes: float = 15.0
    rank: int = 16
    learning_rate: float = 1e-3
    max_steps: int = 1500  # past it the other concepts fade (1,800: 0.771); 0: as many as fit the minutes
    regularization_share: float = 0.5
    prior_distillation: bool = False  # regularization rows aim at the base model's own prediction (0.688 / 0.775)
    train_text_encoder: bool = False
    text_encoder_learning_rate: float = 0.0  # 0: the UNet LoRA's rate
    loraplus_lr_ratio: float = 1.0  # LoRA+: the up matrices' learning rate over the down ones'
    caption_dropout: float = 0.0
    flip: bool = False  # mirrored views too ("left"/"right" swapped in their captions)
    train_conv: bool = True  # LoCon: convolutions and feed-forward layers too
    train_attention: bool = False  # the attention projections (off: convolutions only, which keeps the others)
    train_embedding: bool = True  # pivotal tuning of the trigger word "star"
    embedding_learning_rate: float = 4e-2  # far from the start word quickly: the other concepts keep their shapes
    embedding_init: str = "triangle"  # word(s) the trigger embedding starts from ("": "star" itself)
    embedding_only_steps: int = 0  # pivotal tuning's first phase: steps that train the trigger embedding alone
    subject_weight: float = 5.0  # loss weight on the objects' pixels (the images' alpha channel)
    min_snr_gamma: float = 0.0  # Min-SNR-gamma loss weighting (0 = off; 5 cut duplicates but taught no star shape)
    lora_dropout: float = 0.1  # dropout on each LoRA layer's input while training (0.1 lifted star shape)
    mixed_precision: str = "no"
    out: str = ""  # a folder that keeps the LoRA file and before/after contact sheets of the star prompts
    eval_prompts: int = 48  # star prompts, and prompts of other concepts, scored before and after
    images: int = 30  # training images of stars
    balanced: bool = False  # every colour equally often, each in both sizes (else drawn at random)
    skip_blocks: str = ""  # comma list of UNet blocks left without LoRA
    phrasings: int = 8  # caption variants per star image (its caption, then the world's varied phrasings)
    class_prior: int = 90  # of the PRIOR_IMAGES regularization images: the star images' own scenes with a known shape


BOOL = argparse.BooleanOptionalAction
PRIOR_IMAGES = 240  # the LoRA proof's regularization images
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


def bench_lora(tmp: Path, recipe: LoraProofRecipe) -> None:
    """Teach the held-out "star" to the built-in model with a LoRA; scores before/after, speed vs a bare loop."""
    import threading

    import torch
    from diffusers import StableDiffusionPipeline

    from pipelines.embeddings import trigger_embeddings, use_trigger_tokens
    from pipelines.registry import BUILTIN_ID, ModelSource, recommended_settings
    from training.evaluator import concept_prompt_set, evaluate, heldout_prompt_set, parse_prompt
    from training.lora_trainer import LoraTrainer, LoraTrainingConfig, unet_targets
    from training.model_card import generate_pairs, score_pipeline
    from studio.training_service import parse_skip_blocks
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

    cfg = LoraTrainingConfig(base_model=str(BUILTIN_MODEL_DIR), name="star", rank=recipe.rank, alpha=recipe.rank,
                             learning_rate=recipe.learning_rate, lr_scheduler="cosine", warmup_steps=20,
                             max_steps=recipe.max_steps, batch_size=8, resolution=128, checkpoint_every=0,
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
    if not cfg.max_steps:
        cfg.max_steps = _steps_that_fit(cfg, samples, prior, tmp / "lora-calibration", recipe.minutes)
    stop = threading.Event()
    timer = threading.Timer(recipe.minutes * 60, stop.set)
    trainer = LoraTrainer(cfg, samples, tmp / "lora-run", regularization=prior)
    timer.start()
    result = trainer.run(stop)
    timer.cancel()
    steps_per_s = result.step / result.seconds
    pipe.load_lora_weights(result.path)
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
    _line("training time, steps, steps / s (batch 8, 128x128)",
          f"{result.seconds / 60:.1f} min, {result.step} steps, {steps_per_s:.2f}")
    short = LoraTrainingConfig(**{**cfg.__dict__, "max_steps": 12, "train_text_encoder": False,
                                  "regularization_share": 0.0, "train_embedding": False})
    _, ours = _timed_run(LoraTrainer(short, samples, tmp / "lora-probe"))
    bare = _bare_lora_steps(BUILTIN_MODEL_DIR, samples, 12, 8, recipe.rank,
                            unet_targets(recipe.train_conv, recipe.train_attention), recipe.lora_dropout)
    _line("step time studio trainer / bare peft loop (target <= 1.1)", f"{ours / bare:.3f} "
          f"({ours * 1000:.0f} ms vs {bare * 1000:.0f} ms)")


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, LoraProofRecipe]:
    """The command line, and the LoRA proof's recipe it sets (--quick: a 1-minute proof)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats, 10k gallery, 40 prompts")
    p.add_argument("--skip", default="", help="comma list of: generation,cache,coldstart,gallery,adherence,lora")
    defaults = LoraProofRecipe()
    for flag, field, options in LORA_RECIPE_FLAGS:
        p.add_argument(flag, dest=field, default=getattr(defaults, field), **options)
    args = p.parse_args(argv)
    recipe = LoraProofRecipe(**{field: getattr(args, field) for _, field, _ in LORA_RECIPE_FLAGS})
    return args, replace(recipe, minutes=1.0) if args.quick else recipe


def main(argv: list[str] | None = None) -> None:
    args, recipe = parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    if not (BUILTIN_MODEL_DIR / "model_index.json").exists():
        skip |= {"generation", "cache", "adherence", "lora"}
        print("built-in model not installed: generation, cache and adherence skipped")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sections = [
            ("generation", lambda: bench_generation(tmp / "g", 3 if args.quick else 7)),
            ("cache", lambda: bench_cache(tmp / "c")),
            ("coldstart", lambda: bench_cold_start(tmp)),
            ("gallery", lambda: bench_gallery(tmp, 10_000 if args.quick else 100_000)),
            ("adherence", lambda: bench_adherence(tmp / "a", 40 if args.quick else None)),
            ("lora", lambda: bench_lora(tmp / "l", recipe)),
        ]
        for name, run in sections:
            if name not in skip:
                run()


if __name__ == "__main__":
    main()
