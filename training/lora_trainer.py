"""LoRA training for Stable Diffusion pipelines with peft: checkpoints, resume, validation, NaN guard.

Runs from a plain script or a test: no gradio, no studio. Progress goes to an `on_event` callback.
Checkpoints are written to `<run>/checkpoints/step-XXXXXX.tmp` and renamed when complete; resume picks the
newest complete one and restores LoRA weights, optimizer, RNG, step and the loss history.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import threading
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple

from training.captions import mirror_caption, pick_variant
from training.noise_levels import sample_timesteps
from training.recipes import LORA_LAYERS
from training.recipes import TRAINER_DEFAULTS as DEFAULT

LR_SCHEDULERS = ("constant", "cosine", "linear")
PRECISIONS = ("no", "bf16", "fp16")
UNET_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]
# LoCon: the ResNet convolutions and the transformer blocks' projections and feed-forward too, for concepts the
# base model cannot yet draw (attention-only LoRA can only re-route what the convolutions already know)
UNET_CONV_TARGETS = ["conv1", "conv2", "conv_shortcut", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


@dataclass
class LoraTrainingConfig:
    """Everything a run needs; saved with every checkpoint and inside the LoRA file's metadata. The recipe's
    defaults come from training/recipes.py (TRAINER_DEFAULTS)."""

    base_model: str  # path of a diffusers folder
    base_model_id: str = ""
    name: str = "lora"
    rank: int = DEFAULT["rank"]
    alpha: float = DEFAULT["alpha"]
    learning_rate: float = DEFAULT["learning_rate"]
    lr_scheduler: str = DEFAULT["lr_scheduler"]
    warmup_steps: int = 0
    max_steps: int = DEFAULT["max_steps"]
    batch_size: int = DEFAULT["batch_size"]
    resolution: int = 128
    bucket_step: int = 64
    flip: bool = False
    random_crop: bool = False
    color_jitter: float = 0.0
    train_text_encoder: bool = False
    text_encoder_learning_rate: float = 0.0  # 0: the UNet LoRA's learning rate (kohya users often go 5-10x lower)
    loraplus_lr_ratio: float = 1.0  # LoRA+: the up (B) matrices learn this many times faster than the down (A)
    # LoCon: LoRA on the UNet's convolutions and feed-forward layers as well; attention projections (off with
    # train_conv: convolutions only). From the default recipe's "lora_layers" choice.
    train_conv: bool = LORA_LAYERS[DEFAULT["lora_layers"]]["train_conv"]
    train_attention: bool = LORA_LAYERS[DEFAULT["lora_layers"]]["train_attention"]
    skip_blocks: list[str] = field(default_factory=list)  # UNet blocks left without LoRA, e.g. ["up_blocks.2"]
    seed: int = 0
    validation_prompts: list[str] = field(default_factory=list)
    validation_every: int = DEFAULT["validation_every"]
    validation_steps: int = 20
    validation_guidance: float = 7.0  # CFG scale of the validation images (the studio sets the model's own)
    validation_rescale: float = 0.0  # CFG rescale of the validation images
    checkpoint_every: int = DEFAULT["checkpoint_every"]
    keep_checkpoints: int = 3
    mixed_precision: str = "no"
    trigger_word: str = ""
    train_embedding: bool = DEFAULT["train_embedding"]  # pivotal tuning: learn the trigger word's input embedding
    embedding_learning_rate: float = DEFAULT["embedding_learning_rate"]
    embedding_init: str = ""  # word(s) whose mean embedding the trigger's starts from ("": the trigger word)
    embedding_only_steps: int = 0  # pivotal tuning's first phase: steps that train the embedding alone
    regularization_share: float = 0.0  # share of each batch drawn from the regularization images
    prior_distillation: bool = False  # regularization images aim at the base model's own prediction (LoRA off)
    caption_dropout: float = 0.0  # share of captions replaced by "" (keeps the unconditional branch in step)
    subject_weight: float = DEFAULT["subject_weight"]  # loss weight where the alpha channel marks the subject (1: even)
    min_snr_gamma: float = 0.0  # Min-SNR loss weighting (Hang et al. 2023, kohya's min_snr_gamma; 0 = off)
    lora_dropout: float = DEFAULT["lora_dropout"]  # dropout on each LoRA layer's input in training (peft's)
    device: str = "cpu"


@dataclass
class TrainingSample:
    image_path: str
    caption: str


@dataclass
class TrainingEvent:
    """One thing that happened: kind is step | validation | checkpoint | log | done | stopped | error."""

    kind: str
    step: int
    total: int
    loss: float | None = None
    lr: float | None = None
    seconds: float = 0.0
    images: list = field(default_factory=list)  # (prompt, PIL image) for validation
    path: str = ""
    message: str = ""


class Batch(NamedTuple):
    """One training batch: latents, per-latent-cell loss weights, captions, which rows are regularization."""

    latents: Any
    weights: Any
    captions: list[str]
    prior: Any


class TrainingStopped(Exception):
    pass


class CheckpointError(OSError):
    """A checkpoint could not be written; the message says which earlier checkpoint survives."""


def unet_targets(train_conv: bool, train_attention: bool = True) -> list[str]:
    """The UNet module names a LoRA adapts: the attention projections and/or LoCon's layers."""
    return (UNET_TARGETS if train_attention else []) + (UNET_CONV_TARGETS if train_conv else [])


def skipped_modules(blocks: list[str]) -> str | None:
    """peft's `exclude_modules` for whole UNet blocks ("up_blocks.2", "mid_block"), or None for none."""
    import re

    return rf"^({'|'.join(re.escape(b) for b in blocks)})\..*" if blocks else None


def lora_state(model) -> dict:
    """The model's LoRA tensors only: a resized token table (a trained trigger embedding) travels in its own
    file, and a LoRA file holding it would be refused by diffusers' `load_lora_weights`. Contiguous, as
    safetensors needs."""
    from peft.utils import get_peft_model_state_dict

    return {k: v.contiguous() for k, v in get_peft_model_state_dict(model, save_embedding_layers=False).items()}


def loraplus_groups(model, lr: float, ratio: float = 1.0, skip=None) -> list[dict]:
    """Optimizer groups of a model's trainable LoRA weights: one at `lr`, or with LoRA+ (ratio > 1, Hayou et al.
    2024, kohya's `loraplus_lr_ratio`) the down matrices (lora_A) at `lr` and the up ones (lora_B) at lr * ratio."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p is not skip]
    if ratio == 1:
        return [{"params": [p for _, p in named], "base_lr": lr}]
    return [{"params": [p for n, p in named if ".lora_B." not in n], "base_lr": lr},
            {"params": [p for n, p in named if ".lora_B." in n], "base_lr": lr * ratio}]


def weighted_mse(pred, target, weights):
    """Mean squared error with per-cell weights (broadcast over channels)."""
    return (weights * (pred - target) ** 2).mean()


def min_snr_weights(scheduler, t, gamma: float):
    """Per-sample loss weights of Min-SNR-gamma: min(SNR, gamma) / SNR for noise targets, / (SNR + 1) for
    v-prediction; evens out how much each noise level pulls on the weights (shape (n, 1, 1, 1))."""
    import torch
    from diffusers.training_utils import compute_snr

    snr = compute_snr(scheduler, t)
    denominator = snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr.clamp(min=1e-8)
    return (torch.clamp(snr, max=gamma) / denominator).float()[:, None, None, None]


def subject_mask(image):
    """The image's alpha channel as an "L" mask of the subject (255 = subject), or None when it has none or it
    is fully opaque."""
    if "A" not in image.getbands():
        return None
    alpha = image.getchannel("A")
    return None if alpha.getextrema()[0] == 255 else alpha


def bucket_size(width: int, height: int, resolution: int, step: int) -> tuple[int, int]:
    """Aspect bucket: about resolution^2 pixels, sides multiples of `step`."""
    aspect = width / height
    w = max(step, round(resolution * math.sqrt(aspect) / step) * step)
    h = max(step, round(resolution / math.sqrt(aspect) / step) * step)
    return w, h


def lr_factor(kind: str, step: int, warmup: int, total: int) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    if kind == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if kind == "linear":
        return max(0.0, 1 - progress)
    return 1.0


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints (those with state.json), oldest first; .tmp folders are ignored."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".tmp") and (p / "state.json").exists()]
    return sorted(done, key=lambda p: int(p.name.split("-")[-1]))


def saved_loss_history(run_dir: Path) -> list[tuple[int, float]]:
    """The (step, loss) curve stored with the newest complete checkpoint; [] when there is none."""
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        return []
    state = json.loads((checkpoints[-1] / "state.json").read_text())
    return [tuple(x) for x in state["loss_history"]]


class TriggerEmbedding:
    """A new token `<word>` whose input embedding is trained (pivotal tuning); every other row stays frozen.

    The row starts from the mean embedding of `init` (default: the word itself), e.g. a known word close to the
    concept, so the text encoder reads it as that kind of word from the first step; a gradient mask keeps every
    other row unchanged."""

    def __init__(self, pipe, word: str, init: str = ""):
        import torch

        from pipelines.embeddings import embedding_token

        self.word, self.token = word, embedding_token(word)
        init_ids = pipe.tokenizer(init.strip() or word, add_special_tokens=False).input_ids
        embeddings = pipe.text_encoder.get_input_embeddings()
        init = embeddings.weight.data[init_ids].mean(0)
        self.max_norm = float(embeddings.weight.data.norm(dim=1).max())  # no word of the vocabulary is louder
        pipe.tokenizer.add_tokens([self.token])
        pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer))
        self.weight = pipe.text_encoder.get_input_embeddings().weight
        self.id = pipe.tokenizer.convert_tokens_to_ids(self.token)
        with torch.no_grad():
            self.weight[self.id] = init
        self.start = init.detach().clone()
        mask = torch.zeros(self.weight.shape[0], 1, dtype=self.weight.dtype, device=self.weight.device)
        mask[self.id] = 1
        self.weight.requires_grad_(True)
        self.weight.register_hook(lambda grad: grad * mask)

    def clamp_norm(self) -> None:
        """Keep the trained row no longer than the longest vocabulary embedding, so it cannot drown the prompt's
        other words (a textual-inversion embedding otherwise grows until the colour words stop counting)."""
        import torch

        with torch.no_grad():
            row = self.weight[self.id]
            row.mul_(min(1.0, self.max_norm / max(float(row.norm()), 1e-12)))

    def vector(self):
        return self.weight.detach()[self.id:self.id + 1].clone()

    def load(self, vector) -> None:
        import torch

        with torch.no_grad():
            self.weight[self.id] = vector.reshape(-1).to(self.weight)

    def rewrite(self, text: str) -> str:
        from pipelines.embeddings import use_trigger_tokens

        return use_trigger_tokens(text, [self.word])


class LoraTrainer:
    """Train one LoRA; `run()` may be called on a fresh run dir or one with checkpoints (resume)."""

    def __init__(self, config: LoraTrainingConfig, samples: list[TrainingSample], run_dir: Path,
                 on_event: Callable[[TrainingEvent], None] | None = None,
                 step_lock: threading.Lock | None = None, regularization: list[TrainingSample] | None = None):
        self.config = config
        self.samples = samples
        self.regularization = regularization or []  # images of what the base model already knows (prior)
        self.all_samples = self.samples + self.regularization  # indices of _pick point into this
        self.run_dir = Path(run_dir)
        self.on_event = on_event or (lambda e: None)
        self.step_lock = step_lock or threading.Lock()
        self.loss_history: list[tuple[int, float]] = []
        self.embedding: TriggerEmbedding | None = None  # set by _load when the trigger embedding trains
        self.latent_cache: list | None = None  # set by _run when augmentation allows (see _cache_latents)

    # ------------------------------------------------------------------ setup
    def _load(self):
        import torch
        from diffusers import DDPMScheduler, StableDiffusionPipeline
        from peft import LoraConfig

        from training.fast_dropout import use_fast_dropout

        cfg = self.config
        pipe = StableDiffusionPipeline.from_pretrained(cfg.base_model, torch_dtype=torch.float32,
                                                       safety_checker=None, requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        pipe.to(cfg.device)
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.requires_grad_(False)
        blocks = {name for name, _ in pipe.unet.named_modules()}
        unknown = [b for b in cfg.skip_blocks if b not in blocks]
        if unknown:
            raise ValueError(f"skip UNet blocks: this base model's UNet has no block {unknown[0]!r}")
        pipe.unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                         lora_dropout=cfg.lora_dropout,
                                         target_modules=unet_targets(cfg.train_conv, cfg.train_attention),
                                         exclude_modules=skipped_modules(cfg.skip_blocks)))
        if cfg.train_text_encoder:
            pipe.text_encoder.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, init_lora_weights="gaussian",
                                                     lora_dropout=cfg.lora_dropout, target_modules=TEXT_TARGETS))
        for model in (pipe.unet, pipe.text_encoder):
            use_fast_dropout(model)
        self.noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.embedding = TriggerEmbedding(pipe, cfg.trigger_word, cfg.embedding_init) if cfg.train_embedding else None
        return pipe

    @staticmethod
    def _train_mode(pipe, on: bool) -> None:
        """Switch what trains between train mode (LoRA dropout on) and eval mode (validation images)."""
        for model in (pipe.unet, pipe.text_encoder):
            model.train(on)

    def _param_groups(self, pipe) -> list[dict]:
        """UNet LoRA weights at the learning rate, text-encoder LoRA weights at theirs (0: the same), each split
        into down and up matrices with LoRA+; the trigger embedding (if trained) at its own, without decay."""
        cfg = self.config
        groups = loraplus_groups(pipe.unet, cfg.learning_rate, cfg.loraplus_lr_ratio)
        embedding = self.embedding.weight if self.embedding else None
        if cfg.train_text_encoder:
            groups += loraplus_groups(pipe.text_encoder, cfg.text_encoder_learning_rate or cfg.learning_rate,
                                      cfg.loraplus_lr_ratio, skip=embedding)
        if self.embedding:
            groups.append({"params": [self.embedding.weight], "base_lr": self.config.embedding_learning_rate,
                           "weight_decay": 0.0, "embedding": True})
        return groups

    def _schedule(self, step: int, rest: int = 0) -> float:
        """The learning-rate factor of weights that rest for the first `rest` steps, then run the whole schedule
        over the steps left (the trigger embedding: rest 0; the LoRA: the embedding-only steps)."""
        cfg = self.config
        if step < rest:
            return 0.0
        return lr_factor(cfg.lr_scheduler, step - rest, cfg.warmup_steps, cfg.max_steps - rest)

    def _lora_factor(self, step: int) -> float:
        """The LoRA weights rest while the embedding trains alone."""
        return self._schedule(step, self.config.embedding_only_steps if self.embedding else 0)

    def _augment(self, image, mask, rng: random.Random):
        """Crop, resize and flip the image and its subject mask (None: none) alike; colour jitter the image.
        Returns (image, mask, mirrored)."""
        from PIL import ImageEnhance, ImageOps

        cfg = self.config
        layers = [image] if mask is None else [image, mask]
        w, h = bucket_size(image.width, image.height, cfg.resolution, cfg.bucket_step)
        if cfg.random_crop and rng.random() < 0.5:
            scale = rng.uniform(0.8, 1.0)
            cw, ch = int(image.width * scale), int(image.height * scale)
            x, y = rng.randint(0, image.width - cw), rng.randint(0, image.height - ch)
            layers = [layer.crop((x, y, x + cw, y + ch)) for layer in layers]
        layers = [layer.resize((w, h)) for layer in layers]
        mirrored = cfg.flip and rng.random() < 0.5
        if mirrored:
            layers = [ImageOps.mirror(layer) for layer in layers]
        if cfg.color_jitter > 0:
            for enhancer in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
                layers[0] = enhancer(layers[0]).enhance(1 + rng.uniform(-cfg.color_jitter, cfg.color_jitter))
        return layers[0], (layers[1] if mask is not None else None), mirrored

    def _pick(self, rng: random.Random, images: list) -> list[int]:
        """Indices into `images` (dataset first, then regularization) for one batch from one aspect bucket;
        each slot comes from the regularization images with probability `regularization_share`."""
        n, cfg = len(self.samples), self.config
        share = cfg.regularization_share if len(images) > n else 0.0
        from_reg = [share > 0 and rng.random() < share for _ in range(cfg.batch_size)]
        first = rng.randrange(n, len(images)) if from_reg[0] else rng.randrange(n)
        bucket = images[first][2]
        pools = [[i for i in range(lo, hi) if images[i][2] == bucket] for lo, hi in ((0, n), (n, len(images)))]
        return [first] + [rng.choice(pools[reg] or pools[0] or pools[1]) for reg in from_reg[1:]]

    def _batch(self, pipe, rng: random.Random, images: list) -> Batch:
        """Pick a batch from one aspect bucket and return its latents, per-latent-cell loss weights (1, or
        `subject_weight` where the image's alpha channel marks the subject), captions and which rows are
        regularization images; from the latent cache when there is one, else by augmenting and encoding."""
        import torch

        idx = self._pick(rng, images)
        prior = torch.tensor([i >= len(self.samples) for i in idx], device=pipe.device)
        if self.latent_cache is not None:
            mirrored = [bool(self.config.flip and rng.random() < 0.5) for _ in idx]
            picks = [self.latent_cache[i][int(m)] for i, m in zip(idx, mirrored)]
            mean, std, cells = (torch.stack(parts) for parts in zip(*picks))
            latents = (mean + std * torch.randn_like(mean)).to(pipe.device)
            return Batch(latents, self._cell_weights(cells).to(pipe.device), self._captions(idx, rng, mirrored),
                         prior)
        views = [self._augment(images[i][0], images[i][1], rng) for i in idx]
        mean, std, cells = self._encode(pipe, [img for img, _, _ in views], [mask for _, mask, _ in views])
        latents = mean + std * torch.randn_like(mean)
        return Batch(latents, self._cell_weights(cells), self._captions(idx, rng, [m for _, _, m in views]), prior)

    def _distilled_target(self, pipe, target, noisy, t, ctx, prior):
        """`target` with the regularization rows replaced by the base model's own prediction (its LoRA off):
        prior preservation by distillation, which asks the LoRA to leave what the base knows exactly as it was
        rather than to fit the true noise of a few images again."""
        import torch

        if not (self.config.prior_distillation and bool(prior.any())):
            return target
        target = target.clone()
        with torch.no_grad():
            pipe.unet.disable_adapters()
            try:
                target[prior] = pipe.unet(noisy[prior], t[prior], ctx[prior].detach()).sample.to(target.dtype)
            finally:
                pipe.unet.enable_adapters()
        return target

    def _encode(self, pipe, pixels: list, masks: list):
        """VAE latent mean and std of same-size images, and each subject mask's share per latent cell."""
        import numpy as np
        import torch

        x = torch.stack([torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
                         for img in pixels]).to(pipe.device)
        m = torch.stack([torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255) if mask is not None
                         else torch.zeros(img.height, img.width) for img, mask in zip(pixels, masks)])
        with torch.no_grad():
            dist = pipe.vae.encode(x).latent_dist
        scale = pipe.vae.config.scaling_factor
        cells = torch.nn.functional.adaptive_avg_pool2d(m[:, None], dist.mean.shape[-2:]).to(dist.mean.device)
        return dist.mean * scale, dist.std * scale, cells

    def _cell_weights(self, cells):
        return 1 + (self.config.subject_weight - 1) * cells

    def _cache_latents(self, pipe, images: list) -> list | None:
        """Encode every image once, plain and, with flip, mirrored (the VAE is a third of a step's time at 128 px),
        when no augmentation needs fresh pixels each step (random crop and colour jitter do): per image, (mean,
        std, subject cells) for [plain] or [plain, mirrored]. None when it cannot cache."""
        from PIL import ImageOps

        cfg = self.config
        if cfg.random_crop or cfg.color_jitter > 0:
            return None

        def view(layer, size, mirrored: bool):
            if layer is None:
                return None
            layer = layer.resize(size)
            return ImageOps.mirror(layer) if mirrored else layer

        cache: list = [None] * len(images)
        by_bucket: dict = {}
        for i, (_, _, bucket) in enumerate(images):
            by_bucket.setdefault(bucket, []).append(i)
        for bucket, ids in by_bucket.items():
            for start in range(0, len(ids), 16):
                chunk = ids[start:start + 16]
                views = [self._encode(pipe, [view(images[i][0], bucket, mirrored) for i in chunk],
                                      [view(images[i][1], bucket, mirrored) for i in chunk])
                         for mirrored in ((False, True) if cfg.flip else (False,))]
                for j, i in enumerate(chunk):
                    cache[i] = [tuple(t[j].cpu() for t in encoded) for encoded in views]
        return cache

    def _captions(self, idx: list[int], rng: random.Random, mirrored: list[bool] | None = None) -> list[str]:
        """Captions of the picked images: one of each caption's phrasing variants at random, "left"/"right"
        swapped where the image was mirrored, and replaced by "" with probability `caption_dropout`."""
        captions = [pick_variant(self.all_samples[i].caption, rng) for i in idx]
        captions = [mirror_caption(c) if m else c for c, m in zip(captions, mirrored or [False] * len(idx))]
        if self.config.caption_dropout > 0:
            captions = ["" if rng.random() < self.config.caption_dropout else c for c in captions]
        return [self.embedding.rewrite(c) for c in captions] if self.embedding else captions

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, pipe, optimizer, step: int) -> Path:
        """Write a checkpoint to a .tmp folder and rename it when complete; older ones are pruned only then.
        On a failed write (disk full, ...) the partial folder is removed and CheckpointError says what is kept."""
        root = self.run_dir / "checkpoints"
        tmp = root / f"step-{step:06d}.tmp"
        try:
            return self._write_checkpoint(pipe, optimizer, step, root, tmp)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            kept = list_checkpoints(self.run_dir)
            what = f"the previous checkpoint ({kept[-1].name}) is kept" if kept else "no earlier checkpoint exists"
            raise CheckpointError(f"could not save the checkpoint of step {step} ({exc.strerror or exc}); "
                                  f"{what}. Free some disk space and press Resume.") from exc

    def _write_checkpoint(self, pipe, optimizer, step: int, root: Path, tmp: Path) -> Path:
        import torch
        from safetensors.torch import save_file

        final = root / f"step-{step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(lora_state(pipe.unet), str(tmp / "unet_peft.safetensors"))
        if self.config.train_text_encoder:
            save_file(lora_state(pipe.text_encoder), str(tmp / "text_encoder_peft.safetensors"))
        torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp / "optim.pt")
        self.export_lora(pipe, tmp / "lora.safetensors", step)
        (tmp / "state.json").write_text(json.dumps({"step": step, "loss_history": self.loss_history,
                                                    "python_rng": repr(self._rng.getstate()),
                                                    "config": asdict(self.config)}))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(self.run_dir)[:-self.config.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _restore(self, pipe, optimizer) -> int:
        import ast

        import torch
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        from pipelines.embeddings import load_embedding

        checkpoints = list_checkpoints(self.run_dir)
        if not checkpoints:
            return 0
        ck = checkpoints[-1]
        set_peft_model_state_dict(pipe.unet, load_file(str(ck / "unet_peft.safetensors")))
        if self.config.train_text_encoder and (ck / "text_encoder_peft.safetensors").exists():
            set_peft_model_state_dict(pipe.text_encoder, load_file(str(ck / "text_encoder_peft.safetensors")))
        if self.embedding:
            self.embedding.load(load_embedding(ck / "lora.safetensors")[1])
        extra = torch.load(ck / "optim.pt", map_location="cpu", weights_only=True)
        try:
            optimizer.load_state_dict(extra["optimizer"])
        except ValueError:  # a checkpoint from a version with other parameter groups
            self.on_event(TrainingEvent("log", 0, self.config.max_steps,
                                        message="optimizer state does not match this version: moments start afresh"))
        torch.set_rng_state(extra["torch_rng"])
        state = json.loads((ck / "state.json").read_text())
        self.loss_history = [tuple(x) for x in state["loss_history"]]
        self._rng.setstate(ast.literal_eval(state["python_rng"]))
        return int(state["step"])

    def export_lora(self, pipe, path: Path, step: int) -> Path:
        """Write a diffusers-loadable LoRA .safetensors with training metadata inside."""
        from diffusers import StableDiffusionPipeline
        from safetensors.torch import load_file, save_file

        from pipelines.embeddings import save_embedding, sidecar_path

        cfg = self.config
        folder = path.parent / (path.stem + ".parts")
        shutil.rmtree(folder, ignore_errors=True)
        # peft's own key names (lora_A / lora_B) for every layer: diffusers' conversion renames only the attention
        # layers (lora.down / lora.up), and a file mixing both names loads without its attention layers
        te_layers = lora_state(pipe.text_encoder) if cfg.train_text_encoder else None
        StableDiffusionPipeline.save_lora_weights(
            folder, unet_lora_layers=lora_state(pipe.unet),
            text_encoder_lora_layers=te_layers, safe_serialization=True)
        tensors = load_file(str(folder / "pytorch_lora_weights.safetensors"))
        if self.embedding:
            save_embedding(path, cfg.trigger_word, self.embedding.vector())
        metadata = {"ss_base_model": cfg.base_model_id or cfg.base_model, "ss_steps": str(step),
                    "ss_network_dim": str(cfg.rank), "ss_network_alpha": str(cfg.alpha),
                    "ss_conv_dim": str(cfg.rank if cfg.train_conv else 0),
                    "ss_num_train_images": str(len(self.samples)), "ss_trigger_word": cfg.trigger_word,
                    "ss_num_reg_images": str(len(self.regularization)),
                    "ss_trigger_embedding": sidecar_path(path).name if self.embedding else "",
                    "ss_learning_rate": str(cfg.learning_rate), "ss_resolution": str(cfg.resolution),
                    "studio_config": json.dumps(asdict(cfg))}
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
        shutil.rmtree(folder, ignore_errors=True)
        return path

    # ------------------------------------------------------------------ run
    def validate(self, pipe, step: int) -> list:
        import torch

        out = []
        for i, prompt in enumerate(self.config.validation_prompts):
            g = torch.Generator("cpu").manual_seed(self.config.seed + i)
            if self.embedding:
                prompt = self.embedding.rewrite(prompt)
            with torch.no_grad():
                image = pipe(prompt, num_inference_steps=self.config.validation_steps, generator=g,
                             guidance_scale=self.config.validation_guidance,
                             guidance_rescale=self.config.validation_rescale,
                             width=self.config.resolution, height=self.config.resolution).images[0]
            out.append((self.config.validation_prompts[i], image))
        return out

    def run(self, stop: threading.Event | None = None) -> TrainingEvent:
        """Train until max_steps or `stop`; always leaves a checkpoint of the last finished step. A checkpoint
        that cannot be written (disk full) ends the run with an error event; the previous checkpoint survives."""
        try:
            return self._run(stop or threading.Event())
        except CheckpointError as exc:
            event = TrainingEvent("error", 0, self.config.max_steps, message=str(exc))
            self.on_event(event)
            return event

    def _run(self, stop: threading.Event) -> TrainingEvent:
        import torch
        from PIL import Image

        cfg = self.config
        if not self.samples:
            raise ValueError("dataset is empty")
        self._rng = random.Random(cfg.seed)
        torch.manual_seed(cfg.seed)
        pipe = self._load()
        images = []  # (RGB image, subject mask or None, aspect bucket)
        for s in self.all_samples:
            img = Image.open(s.image_path)
            mask = subject_mask(img) if cfg.subject_weight != 1 else None
            img = img.convert("RGB")
            images.append((img, mask, bucket_size(img.width, img.height, cfg.resolution, cfg.bucket_step)))
        self.latent_cache = self._cache_latents(pipe, images)
        if self.latent_cache is not None:
            self.on_event(TrainingEvent("log", 0, cfg.max_steps, message=f"latents cached ({len(images)} images)"))
        groups = self._param_groups(pipe)
        params = [p for g in groups for p in g["params"]]
        optimizer = torch.optim.AdamW(groups, lr=cfg.learning_rate, weight_decay=1e-2)
        step = self._restore(pipe, optimizer)
        if step:
            self.on_event(TrainingEvent("log", step, cfg.max_steps, message=f"resumed from step {step}"))
        autocast = (torch.autocast(device_type=pipe.device.type, dtype=getattr(torch, {"bf16": "bfloat16",
                    "fp16": "float16"}[cfg.mixed_precision])) if cfg.mixed_precision != "no" else nullcontext())
        start = time.perf_counter()
        last_saved = step
        while step < cfg.max_steps:
            if stop.is_set():
                break
            with self.step_lock:  # shares the device fairly: a generation waits at most one step
                self._train_mode(pipe, True)
                latents, weights, captions, prior = self._batch(pipe, self._rng, images)
                noise = torch.randn_like(latents)
                t = sample_timesteps(latents.shape[0], self.noise_scheduler.config.num_train_timesteps,
                                     device=latents.device)
                noisy = self.noise_scheduler.add_noise(latents, noise, t)
                if self.noise_scheduler.config.prediction_type == "v_prediction":
                    target = self.noise_scheduler.get_velocity(latents, noise, t)
                else:
                    target = noise
                ids = pipe.tokenizer(captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                                     truncation=True, return_tensors="pt").input_ids.to(pipe.device)
                factor, embedding_factor = self._lora_factor(step), self._schedule(step)
                lr = cfg.learning_rate * factor
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * (embedding_factor if group.get("embedding") else factor)
                with autocast:
                    ctx = pipe.text_encoder(ids)[0]
                    pred = pipe.unet(noisy, t, ctx).sample
                    target = self._distilled_target(pipe, target, noisy, t, ctx, prior)
                if cfg.min_snr_gamma > 0:
                    weights = weights * min_snr_weights(self.noise_scheduler, t, cfg.min_snr_gamma)
                loss = weighted_mse(pred.float(), target.float(), weights)
                if not torch.isfinite(loss):
                    message = (f"loss became {loss.item()} at step {step + 1}: training stopped; the last good "
                               f"checkpoint (step {last_saved}) is kept. Lower the learning rate.")
                    event = TrainingEvent("error", step, cfg.max_steps, message=message)
                    self.on_event(event)
                    return event
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                if self.embedding:
                    self.embedding.clamp_norm()
                self._train_mode(pipe, False)
            step += 1
            self.loss_history.append((step, float(loss.item())))
            self.on_event(TrainingEvent("step", step, cfg.max_steps, loss=float(loss.item()), lr=lr,
                                        seconds=time.perf_counter() - start))
            if cfg.validation_prompts and cfg.validation_every and step % cfg.validation_every == 0:
                with self.step_lock:
                    shots = self.validate(pipe, step)
                self.on_event(TrainingEvent("validation", step, cfg.max_steps, images=shots))
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.max_steps:
                path = self._save_checkpoint(pipe, optimizer, step)
                last_saved = step
                self.on_event(TrainingEvent("checkpoint", step, cfg.max_steps, path=str(path)))
        if step > last_saved or not list_checkpoints(self.run_dir):
            path = self._save_checkpoint(pipe, optimizer, step)
            self.on_event(TrainingEvent("checkpoint", step, cfg.max_steps, path=str(path)))
        final = self.export_lora(pipe, self.run_dir / f"{cfg.name}.safetensors", step)
        kind = "stopped" if step < cfg.max_steps else "done"
        event = TrainingEvent(kind, step, cfg.max_steps, loss=self.loss_history[-1][1] if self.loss_history else None,
                              path=str(final), seconds=time.perf_counter() - start)
        self.on_event(event)
        return event
