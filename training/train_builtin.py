"""Reproducible, resumable training of the built-in "shapes world" model.

    python -m training.train_builtin --work-dir runs/builtin --out assets/builtin-shapes

Phases (each resumable, state in <work-dir>/state.json, checkpoints written to a temp file then renamed):
  1. vae      AutoencoderKL on random 64x64 crops, foreground-weighted L1+MSE (+ tiny KL); or `--vae-from` an
              earlier run's model folder (its VAE minutes count towards this model's total)
  2. latents  encode a fixed scene set once (latent cache)
  3. unet     text encoder + UNet jointly, v-prediction, zero terminal SNR, EMA; min-SNR-5 weighting for the
              first `--min-snr-minutes`, then plain v-MSE (min-SNR all but ignores the high-noise steps where the
              layout, and so position and background, is decided); the learning rate decays linearly to 10%
              over the last `--decay-minutes`; options: `--foreground-weight` (object cells weigh more),
              `--high-noise-share` (more of the noisiest timesteps), `--caption-noise` / `--caption-shuffle`
              (filler or made-up words, any phrase order: robustness to phrasings never seen),
              `--position-pairs` (position-contrast pairs in every batch)
  4. export   a normal diffusers folder (fp16) that StableDiffusionPipeline.from_pretrained loads offline
Only time spent on training steps counts towards the budgets; EMA snapshots are kept every
`--snapshot-minutes` of training time so adherence can be plotted against training minutes.
"""

from __future__ import annotations

import copy
import csv
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training import builtin_model as bm
from training.noise_levels import sample_timesteps
from training.run_files import (atomic_save, load_if_exists, parse_run_args, replace_folder, run_parser,
                                 save_json_state)
from training.world import (COLOURS, PATTERNS, SHAPES, caption_single, moved, render, sample_scene, sprinkle_words,
                           varied_caption)


def _to_tensor(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


def foreground_masks(scenes: list, latent_size: int) -> torch.Tensor:
    """(N, latent_size, latent_size) masks: 1 on latent cells an object of each scene covers, else 0."""
    from training.world import IMAGE_SIZE, SIZES

    cell = IMAGE_SIZE / latent_size
    centres = (torch.arange(latent_size, dtype=torch.float32) + 0.5) * cell
    yy, xx = torch.meshgrid(centres, centres, indexing="ij")
    masks = torch.zeros(len(scenes), latent_size, latent_size)
    for n, scene in enumerate(scenes):
        for obj in scene.objects:
            reach = SIZES[obj.size] + cell / 2
            inside = ((xx - obj.centre[0]).abs() <= reach) & ((yy - obj.centre[1]).abs() <= reach)
            masks[n][inside] = 1.0
    return masks


class PositionPairs:
    """Draws one-object scenes of the latent cache's set, each with a copy moved to another off-centre position,
    rendered and encoded on the fly (about 10 ms per image)."""

    OFF_CENTRE = ("left", "right", "top", "bottom")

    def __init__(self, seeds: list[int], vae, scale: float):
        self.vae, self.scale = vae, scale
        scenes = (sample_scene(s) for s in seeds)
        self.seeds = [s for s, sc in zip(seeds, scenes) if sc.kind == "single" and sc.objects[0].position != "center"]

    def draw(self, rng: random.Random, n: int) -> tuple[list, torch.Tensor]:
        """2n scenes (each followed by its moved copy) and their (2n, 4, h, w) latents."""
        scenes = []
        for _ in range(n):
            scene = sample_scene(rng.choice(self.seeds))
            here = scene.objects[0].position
            scenes += [scene, moved(scene, rng.choice([p for p in self.OFF_CENTRE if p != here]))]
        with torch.no_grad():
            x = torch.stack([_to_tensor(render(sc)) for sc in scenes])
            return scenes, self.vae.encode(x).latent_dist.sample() * self.scale


class Trainer:
    """Holds the run's state; each phase method resumes where the state says it stopped."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_path = self.work / "state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {
            "seed": args.seed, "vae_seconds": 0.0, "unet_seconds": 0.0, "vae_step": 0, "unet_step": 0,
            "latents_done": False,
        }
        command = "python -m training.train_builtin " + " ".join(args.argv)
        first = {"from_unet_minute": 0.0, "command": self.state.get("command", command)}
        pieces = self.state.setdefault("pieces", [first])
        if pieces[-1]["command"] != command:  # resumed with other options: the card lists every piece
            pieces.append({"from_unet_minute": round(self.state["unet_seconds"] / 60, 1), "command": command})
        self.state["command"] = command
        self.state.update(min_snr_minutes=args.min_snr_minutes, decay_minutes=args.decay_minutes,
                          foreground_weight=args.foreground_weight, caption_noise=args.caption_noise,
                          caption_shuffle=args.caption_shuffle, high_noise_share=args.high_noise_share,
                          position_pairs=args.position_pairs)
        torch.manual_seed(args.seed)
        self.tok_dir = self.work / "tokenizer"
        vocab_size = bm.write_tokenizer(self.tok_dir)
        from transformers import CLIPTokenizer

        self.tokenizer = CLIPTokenizer.from_pretrained(self.tok_dir)
        self.vocab_size = vocab_size

    def save_state(self):
        save_json_state(self.state, self.state_path)

    # ------------------------------------------------------------------ VAE
    def train_vae(self):
        a = self.args
        vae = bm.make_vae()
        opt = torch.optim.AdamW(vae.parameters(), lr=a.vae_lr, weight_decay=0.0)
        ck = load_if_exists(self.work / "vae.pt", weights_only=False)
        if ck:
            vae.load_state_dict(ck["model"])
            opt.load_state_dict(ck["opt"])
            torch.set_rng_state(ck["rng"])
        last_ck = time.time()
        rng = random.Random(a.seed * 7919 + self.state["vae_step"])
        while not self.vae_done():
            t0 = time.time()
            imgs, weights = [], []
            for _ in range(a.vae_batch):
                scene = sample_scene(rng.randrange(1 << 30), shapes=SHAPES, patterns=PATTERNS)
                x = _to_tensor(render(scene))
                bg = torch.tensor(COLOURS[scene.background], dtype=torch.float32).view(3, 1, 1) / 127.5 - 1
                fg = ((x - bg).abs().amax(0, keepdim=True) > 0.35).float()
                ox, oy = rng.randrange(0, 65, 8), rng.randrange(0, 65, 8)
                imgs.append(x[:, oy:oy + 64, ox:ox + 64])
                weights.append(1 + 4 * fg[:, oy:oy + 64, ox:ox + 64])
            x, w = torch.stack(imgs), torch.stack(weights)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                post = vae.encode(x).latent_dist
                z = post.sample()
                rec = vae.decode(z).sample.float()
            kl = post.kl().mean()
            loss = ((rec - x).abs() * w).mean() + (((rec - x) ** 2) * w).mean() + 1e-6 * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            opt.step()
            self.state["vae_step"] += 1
            self.state["vae_seconds"] += time.time() - t0
            self._log("vae", self.state["vae_step"], self.state["vae_seconds"], loss.item())
            if time.time() - last_ck > 120 or self.vae_done():
                atomic_save({"model": vae.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()},
                             self.work / "vae.pt")
                self.save_state()
                last_ck = time.time()
        return vae

    def vae_done(self) -> bool:
        """The VAE phase ends at `--vae-minutes` of training, or at `--vae-steps` steps when that is set."""
        a, st = self.args, self.state
        return st["vae_seconds"] >= a.vae_minutes * 60 or 0 < a.vae_steps <= st["vae_step"]

    def import_vae(self, folder: Path) -> None:
        """Start from an already trained VAE (a diffusers folder with its training_state.json); its training
        minutes count towards this model's total. Done once; later runs keep the imported copy."""
        from diffusers import AutoencoderKL

        if (self.work / "vae.pt").exists():
            return
        trained = AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32)
        vae = bm.make_vae()
        vae.load_state_dict(trained.state_dict())
        atomic_save({"model": vae.state_dict()}, self.work / "vae.pt")
        origin = json.loads((folder / "training_state.json").read_text())
        self.state.update(vae_seconds=origin["vae_seconds"], vae_step=origin["vae_step"], vae_imported=True,
                          vae_from=origin.get("command", str(folder)))
        self.save_state()

    def load_vae(self):
        vae = bm.make_vae()
        vae.load_state_dict(load_if_exists(self.work / "vae.pt", weights_only=False)["model"])
        return vae.eval()

    # ------------------------------------------------------------------ latent cache
    def cache_latents(self):
        path = self.work / "latents.pt"
        if self.state["latents_done"] and path.exists():
            return load_if_exists(path, weights_only=False)
        vae = self.load_vae()
        seeds = list(range(1_000_000, 1_000_000 + self.args.num_scenes))
        means, stds = [], []
        with torch.no_grad():
            for i in range(0, len(seeds), 64):
                x = torch.stack([_to_tensor(render(sample_scene(s))) for s in seeds[i:i + 64]])
                dist = vae.encode(x).latent_dist
                means.append(dist.mean.half())
                stds.append(dist.std.half())
                print(f"latents {i + len(x)}/{len(seeds)}", flush=True)
        mean, std = torch.cat(means), torch.cat(stds)
        scale = float(1.0 / mean.float().std())
        data = {"seeds": seeds, "mean": mean, "std": std, "scale": scale}
        atomic_save(data, path)
        self.state["latents_done"] = True
        self.state["latent_scale"] = scale
        self.save_state()
        return data

    # ------------------------------------------------------------------ UNet + text encoder
    def caption(self, scene, rng: random.Random, allow_empty: bool = True) -> str:
        """A fresh phrasing of the scene's caption."""
        a = self.args
        if allow_empty and rng.random() < a.empty_caption:
            return ""
        return varied_caption(scene, rng, 0.15, a.caption_shuffle, a.caption_noise)

    def encode_text(self, te, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(captions, padding="max_length", max_length=bm.MAX_TOKENS, truncation=True,
                             return_tensors="pt").input_ids
        return te(ids)[0]

    def train_unet(self, data):
        from diffusers import DDPMScheduler

        a = self.args
        tok = self.tokenizer
        te = bm.make_text_encoder(self.vocab_size, tok.bos_token_id, tok.eos_token_id)
        unet = bm.make_unet()
        ema_unet, ema_te = bm.make_unet(), bm.make_text_encoder(self.vocab_size, tok.bos_token_id, tok.eos_token_id)
        params = [{"params": unet.parameters(), "lr": a.lr}, {"params": te.parameters(), "lr": a.te_lr}]
        opt = torch.optim.AdamW(params, weight_decay=1e-2)
        ck = load_if_exists(self.work / "unet.pt", weights_only=False)
        if ck:
            unet.load_state_dict(ck["unet"])
            te.load_state_dict(ck["te"])
            ema_unet.load_state_dict(ck["ema_unet"])
            ema_te.load_state_dict(ck["ema_te"])
            opt.load_state_dict(ck["opt"])
            torch.set_rng_state(ck["rng"])
        else:
            ema_unet.load_state_dict(unet.state_dict())
            ema_te.load_state_dict(te.state_dict())
        for m in (ema_unet, ema_te):
            m.requires_grad_(False)
        sched = DDPMScheduler(**{k: v for k, v in bm.make_scheduler_config().items() if k != "set_alpha_to_one"})
        alphas = sched.alphas_cumprod
        snr = alphas / (1 - alphas).clamp(min=1e-8)
        mean, std, seeds, scale = data["mean"], data["std"], data["seeds"], data["scale"]
        fg_masks = foreground_masks([sample_scene(s) for s in seeds], mean.shape[-1])
        pairs = PositionPairs(seeds, self.load_vae(), scale) if a.position_pairs else None
        budget = a.unet_minutes * 60
        rng = random.Random(a.seed * 104729 + self.state["unet_step"])
        last_ck = time.time()
        snap_every = a.snapshot_minutes * 60
        while self.state["unet_seconds"] < budget:
            t0 = time.time()
            step = self.state["unet_step"]
            idx = torch.tensor([rng.randrange(len(seeds)) for _ in range(a.batch)])
            lat = (mean[idx].float() + std[idx].float() * torch.randn(len(idx), 4, 16, 16)) * scale
            caps = [self.caption(sample_scene(seeds[i]), rng) for i in idx.tolist()]
            masks = fg_masks[idx]
            noise = torch.randn_like(lat)
            t = self.sample_timesteps(len(idx), sched.config.num_train_timesteps)
            if a.position_pairs:
                self.put_position_pairs(pairs, rng, lat, caps, masks, noise, t)
            noisy = sched.add_noise(lat, noise, t)
            target = sched.get_velocity(lat, noise, t)
            factor = self.lr_factor(step)
            for g, base in zip(opt.param_groups, (a.lr, a.te_lr)):
                g["lr"] = base * factor
            with torch.autocast("cpu", dtype=torch.bfloat16):
                ctx = self.encode_text(te, caps)
                pred = unet(noisy, t, ctx).sample.float()
            w = self.loss_weight(snr[t])
            err = (pred - target) ** 2
            if a.foreground_weight != 1:  # objects weigh more than background, so where they go is learned early
                err = err * (1 + (a.foreground_weight - 1) * masks.unsqueeze(1))
            loss = (err.mean(dim=(1, 2, 3)) * w).mean()
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite loss at step {step}; last checkpoint kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), 1.0)
            opt.step()
            decay = min(a.ema, (1 + step) / (10 + step))
            with torch.no_grad():
                for src, dst in ((unet, ema_unet), (te, ema_te)):
                    for p, e in zip(src.parameters(), dst.parameters()):
                        e.lerp_(p, 1 - decay)
            before = self.state["unet_seconds"]
            self.state["unet_step"] += 1
            self.state["unet_seconds"] += time.time() - t0
            self._log("unet", self.state["unet_step"], self.state["unet_seconds"], loss.item())
            crossed = int(before // snap_every) != int(self.state["unet_seconds"] // snap_every)
            done = self.state["unet_seconds"] >= budget
            if crossed or done:
                minute = round(self.state["unet_seconds"] / 60)
                self.export(ema_unet, ema_te, scale, self.work / "snapshots" / f"min_{minute:04d}")
            if crossed or done or time.time() - last_ck > 180:
                atomic_save({"unet": unet.state_dict(), "te": te.state_dict(), "ema_unet": ema_unet.state_dict(),
                              "ema_te": ema_te.state_dict(), "opt": opt.state_dict(), "rng": torch.get_rng_state()},
                             self.work / "unet.pt")
                self.save_state()
                last_ck = time.time()
        return ema_unet, ema_te

    def put_position_pairs(self, pairs: PositionPairs, rng: random.Random, lat, caps, masks, noise, t) -> None:
        """Overwrite the batch's last 2 * `--position-pairs` samples with position-contrast pairs: one scene at two
        positions, the same noise and timestep, captions that differ only in the position word; the only way to
        lower the loss on both is to read that word."""
        a = self.args
        first = len(caps) - 2 * a.position_pairs
        scenes, lat[first:] = pairs.draw(rng, a.position_pairs)
        masks[first:] = foreground_masks(scenes, masks.shape[-1])
        for k in range(first, len(caps), 2):
            shuffle, noisy, state = rng.random() < a.caption_shuffle, rng.random() < a.caption_noise, rng.getstate()
            for i in (k, k + 1):
                twin = random.Random()
                twin.setstate(state)  # the same phrasing choices for both
                text = caption_single(scenes[i - first], twin, 0.0, shuffle=shuffle)
                caps[i] = sprinkle_words(text, twin) if noisy else text
            noise[k + 1], t[k + 1] = noise[k], t[k]

    def sample_timesteps(self, n: int, total: int) -> torch.Tensor:
        """Uniform timesteps, a `--high-noise-share` of them from the noisiest 40% (training.noise_levels)."""
        return sample_timesteps(n, total, self.args.high_noise_share)

    def lr_factor(self, step: int) -> float:
        """Linear warm-up, constant, then a linear decay to 10% over the last `--decay-minutes` of the budget."""
        a = self.args
        left = a.unet_minutes * 60 - self.state["unet_seconds"]
        decay = 1.0 if a.decay_minutes <= 0 else max(0.1, min(1.0, left / (a.decay_minutes * 60)))
        return min(1.0, (step + 1) / a.warmup) * decay

    def loss_weight(self, snr_t: torch.Tensor) -> torch.Tensor:
        """Per-sample weight of the v-MSE: min-SNR-5 during the first `--min-snr-minutes`, then 1."""
        if self.state["unet_seconds"] < self.args.min_snr_minutes * 60:
            return torch.minimum(snr_t, torch.full_like(snr_t, 5.0)) / (snr_t + 1)
        return torch.ones_like(snr_t)

    # ------------------------------------------------------------------ export
    def export(self, unet, te, scale: float, out: Path):
        import shutil

        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
        from transformers import CLIPTokenizer

        vae = self.load_vae()
        vae.register_to_config(scaling_factor=scale)
        sched = DPMSolverMultistepScheduler(**{k: v for k, v in bm.make_scheduler_config().items()
                                               if k not in ("clip_sample", "set_alpha_to_one")})
        unet, te = copy.deepcopy(unet), copy.deepcopy(te)  # fp16 copies; the EMA weights stay fp32
        pipe = StableDiffusionPipeline(
            vae=vae, text_encoder=te, tokenizer=CLIPTokenizer.from_pretrained(self.tok_dir), unet=unet,
            scheduler=sched, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            module.half()
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        pipe.save_pretrained(tmp, safe_serialization=True)
        info = dict(self.state, exported_at=time.strftime("%Y-%m-%d %H:%M:%S"))
        (tmp / "training_state.json").write_text(json.dumps(info, indent=2))
        replace_folder(tmp, out)

    def _log(self, phase: str, step: int, seconds: float, loss: float):
        path = self.work / f"{phase}_loss.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            wr = csv.writer(fh)
            if new:
                wr.writerow(["step", "train_seconds", "loss"])
            wr.writerow([step, f"{seconds:.2f}", f"{loss:.6f}"])
        if step % 50 == 0:
            print(f"[{phase}] step {step} t={seconds / 60:.1f}min loss={loss:.4f}", flush=True)


def parse_args(argv=None):
    p = run_parser(__doc__, "runs/builtin", "assets/builtin-shapes", 2)
    p.add_argument("--vae-minutes", type=float, default=8)
    p.add_argument("--vae-steps", type=int, default=0, help="end the VAE phase at this many steps (0: minutes only)")
    p.add_argument("--vae-batch", type=int, default=32)
    p.add_argument("--vae-lr", type=float, default=2e-3)
    p.add_argument("--vae-from", default="", help="start from this trained model folder's VAE (its minutes count)")
    p.add_argument("--num-scenes", type=int, default=20000)
    p.add_argument("--unet-minutes", type=float, default=90)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--te-lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--min-snr-minutes", type=float, default=0,
                   help="UNet minutes trained with min-SNR-5 weighting before switching to plain v-MSE")
    p.add_argument("--foreground-weight", type=float, default=1.0,
                   help="loss weight of latent cells covered by objects (1 = plain)")
    p.add_argument("--decay-minutes", type=float, default=0,
                   help="the learning rate decays linearly to 10%% over the last this many UNet minutes")
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--empty-caption", type=float, default=0.1)
    p.add_argument("--caption-noise", type=float, default=0.0,
                   help="share of captions given 1-2 filler or made-up words (robustness to unseen phrasings)")
    p.add_argument("--caption-shuffle", type=float, default=0.0,
                   help="share of single-object captions whose phrases come in any order")
    p.add_argument("--high-noise-share", type=float, default=0.0,
                   help="share of timesteps drawn from the noisiest 40%% (where the layout is decided)")
    p.add_argument("--position-pairs", type=int, default=0,
                   help="position-contrast pairs per batch: a scene at two positions, captions differing only there")
    p.add_argument("--snapshot-minutes", type=float, default=10)
    return parse_run_args(p, argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    trainer = Trainer(args)
    if args.vae_from:
        trainer.import_vae(Path(args.vae_from))
    if not trainer.state.get("vae_imported") and not trainer.vae_done():
        trainer.train_vae()
    data = trainer.cache_latents()
    ema_unet, ema_te = trainer.train_unet(data)
    trainer.export(ema_unet, ema_te, data["scale"], Path(args.out))
    print(f"exported to {args.out}", flush=True)


if __name__ == "__main__":
    main()
