"""Reproducible, resumable training of the built-in ControlNet: shapes where the control map draws them.

    python -m training.train_controlnet --work-dir runs/controlnet --out assets/builtin-controlnet

`ControlNetModel.from_unet` on the shipped UNet (--base, assets/builtin-shapes), trained on the shapes world with
the base model frozen (UNet, text encoder, VAE). The control map of a scene (`control_map`) is its objects'
outlines, either as a canny-like edge map (cv2.Canny on the objects' mask: what the canny preprocessor gives on a
shapes-world picture) or as a scribble: the same outlines warped by a smooth random flow (a wobbly hand) and
thickened, so a sketch drawn on the ControlNet tab's canvas works too. Half the scenes have their objects moved
off the five named positions, so the map, not the caption, says where things go; --empty-caption drops the
prompt (the map alone must do).

Phases (each resumable; state in <work-dir>/state.json; checkpoints written to a temp file, then renamed):
  1. latents     encode --num-scenes scenes once with the base VAE (latent cache)
  2. controlnet  AdamW on the ControlNet only, the base's objective (v-prediction, zero terminal SNR); bf16
                 autocast on CPU; a snapshot every --snapshot-minutes of training time
  3. export      <out>: a diffusers ControlNet folder (fp16 safetensors) with README.md (the model card),
                 loss.png, and iou.png (IoU against training minutes over the snapshots)
Only training steps count towards --minutes; evaluation is paused time.

Evaluation (`evaluate`, `--eval-layouts N`, `--eval-only`): held-out layouts (one and two objects, the five
positions and off-grid places, both sizes), 20 steps; IoU between the generated objects' mask
(training.evaluator.foreground_mask) and the control shapes' mask, and the evaluator's position, colour and shape
scores, with and without the ControlNet.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import random
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.noise_levels import sample_timesteps
from training.run_files import (atomic_save, load_if_exists, parse_run_args, replace_folder, run_parser,
                                 save_json_state)
from training.world import (BASE_SHAPES, COLOURS, IMAGE_SIZE, POSITIONS, SIZES, Scene, ShapeObject, caption_single,
                            caption_two, describe_object, render, sample_scene, varied_caption)

TRAIN_SCENE_SEEDS = 2_000_000  # the base model trains on 1,000,000+, the benchmarks use 500,000..900,000+n
LAYOUT_SEED = 4242
MAP_KINDS = ("edges", "scribble")


# ---------------------------------------------------------------------- scenes and control maps
def nearest_position(x: float, y: float) -> str:
    return min(POSITIONS, key=lambda p: (POSITIONS[p][0] * IMAGE_SIZE - x) ** 2
               + (POSITIONS[p][1] * IMAGE_SIZE - y) ** 2)


def off_grid(scene: Scene, rng: random.Random) -> Scene:
    """The scene with its objects at random places (inside the image, apart), each named by its nearest position
    so the caption stays roughly true."""
    placed: list[tuple[float, float, float]] = []
    objects = []
    for obj in scene.objects:
        r = SIZES[obj.size]
        for _ in range(50):
            x, y = rng.uniform(r + 2, IMAGE_SIZE - r - 2), rng.uniform(r + 2, IMAGE_SIZE - r - 2)
            if all((x - px) ** 2 + (y - py) ** 2 > (r + pr + 4) ** 2 for px, py, pr in placed):
                break
        placed.append((x, y, r))
        objects.append(replace(obj, centre=(x, y), position=nearest_position(x, y)))
    return replace(scene, objects=tuple(objects))


def training_scene(seed: int, off_grid_share: float = 0.5) -> Scene:
    """Scene `seed` of the ControlNet's training set: a world scene, its objects moved off the named positions
    `off_grid_share` of the time."""
    scene = sample_scene(seed)
    rng = random.Random(seed * 31 + 7)
    return off_grid(scene, rng) if rng.random() < off_grid_share else scene


def object_mask(scene: Scene, size: int = IMAGE_SIZE) -> np.ndarray:
    """The scene's objects as a uint8 mask (255 inside), drawn by the world's own renderer."""
    white = replace(scene, background="black", pattern="plain",
                    objects=tuple(replace(o, colour="white") for o in scene.objects))
    return np.asarray(render(white, size).convert("L"))


def _smooth_flow(rng: np.random.Generator, size: int, amplitude: float, cells: int = 4) -> np.ndarray:
    import cv2

    coarse = rng.normal(0, amplitude, size=(cells, cells, 2)).astype(np.float32)
    return cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)


def control_map(scene: Scene, kind: str, rng: np.random.Generator | None = None, size: int = IMAGE_SIZE):
    """The scene's control map, uint8 (size, size) white on black: "edges", its objects' outlines as a 1-pixel
    canny edge map; "scribble", the outlines warped by a smooth random flow (up to ~3 px) and thickened to 2-5 px
    (a hand-drawn sketch)."""
    import cv2

    mask = object_mask(scene, size)
    if kind == "edges":
        return cv2.Canny(mask, 100, 200)
    if kind != "scribble":
        raise ValueError(f"map kind must be one of {', '.join(MAP_KINDS)}; got {kind!r}")
    rng = rng or np.random.default_rng(0)
    flow = _smooth_flow(rng, size, rng.uniform(0.5, 2.0) * size / IMAGE_SIZE)
    grid = np.stack(np.meshgrid(np.arange(size), np.arange(size)), axis=-1).astype(np.float32)
    warped = cv2.remap(mask, grid + flow, None, cv2.INTER_LINEAR)
    edges = cv2.Canny(warped, 100, 200)
    width = int(rng.integers(2, 6)) * size // IMAGE_SIZE
    return cv2.dilate(edges, np.ones((max(1, width), max(1, width)), np.uint8))


def map_tensor(maps: list[np.ndarray]) -> torch.Tensor:
    """(N, 3, H, W) in 0..1, as the ControlNet pipelines feed a control image."""
    return torch.from_numpy(np.stack(maps).astype(np.float32) / 255.0).unsqueeze(1).repeat(1, 3, 1, 1)


def _to_tensor(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


# ---------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class Layout:
    scene: Scene
    prompt: str
    seed: int
    named: bool  # objects at the five named positions (the prompt names them) or off-grid (it does not)


def heldout_layouts(n: int = 120, seed: int = LAYOUT_SEED) -> list[Layout]:
    """`n` layouts no training scene uses: one object (2 in 3) or two, at named positions (prompt with position
    words) or off-grid (prompt without), both sizes, base shapes, plain backgrounds."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        background = rng.choice(list(COLOURS))
        others = [c for c in COLOURS if c != background]
        two, named = i % 3 == 2, i % 2 == 0
        if two:
            pair = rng.choice([("left", "right"), ("top", "bottom")])
            colours = rng.sample(others, 2)
            objects = tuple(ShapeObject(rng.choice(BASE_SHAPES), c, "small",
                                        (POSITIONS[p][0] * IMAGE_SIZE, POSITIONS[p][1] * IMAGE_SIZE), p)
                            for c, p in zip(colours, pair))
        else:
            position = rng.choice(list(POSITIONS))
            objects = (ShapeObject(rng.choice(BASE_SHAPES), rng.choice(others), rng.choice(list(SIZES)),
                                   (POSITIONS[position][0] * IMAGE_SIZE, POSITIONS[position][1] * IMAGE_SIZE),
                                   position),)
        scene = Scene(background, "plain", objects, "two" if two else "single")
        if not named:
            scene = off_grid(scene, rng)
        words = random.Random(seed + i)
        if named:
            prompt = caption_two(scene, words) if two else caption_single(scene, words, 0.0)
        else:
            things = " and ".join(describe_object(o, words, {"size": not two}) for o in scene.objects)
            prompt = f"{things} on a {background} background"
        out.append(Layout(scene, prompt, 30_000 + i, named))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def score_layout(layout: Layout, image) -> dict[str, float]:
    """IoU of the generated objects against the control shapes, and the evaluator's scores for the prompt
    (position only where the prompt names positions)."""
    from training.evaluator import foreground_mask, score

    out = {"iou": iou(foreground_mask(image), object_mask(layout.scene) > 127)}
    scores = score(layout.prompt, image)
    for cat in ("colour", "shape", "two_objects") + (("position",) if layout.named else ()):
        if cat in scores:
            out[cat] = scores[cat]
    return out


def load_base(base_dir: Path):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base_dir, torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def recommended(base_dir: Path) -> dict:
    """The base model folder's recommended CFG scale and rescale (generation_defaults.json), as the studio uses."""
    from pipelines.registry import ModelSource, recommended_settings

    return recommended_settings(ModelSource("base", "diffusers", str(base_dir)))


def evaluate(base, controlnet, layouts: list[Layout], steps: int = 20, kind: str = "edges",
             cfg_scale: float = 5.0, cfg_rescale: float = 0.7) -> dict[str, float]:
    """Mean scores over `layouts`: with `controlnet` (a ControlNetModel, given the layout's `kind` map), or the
    base model alone when None (with CFG rescale; the ControlNet pipelines have none)."""
    from diffusers import StableDiffusionControlNetPipeline
    from PIL import Image

    pipe = base if controlnet is None else StableDiffusionControlNetPipeline.from_pipe(base, controlnet=controlnet)
    pipe.set_progress_bar_config(disable=True)
    totals: dict[str, list[float]] = {}
    for layout in layouts:
        kwargs = dict(num_inference_steps=steps, width=IMAGE_SIZE, height=IMAGE_SIZE, guidance_scale=cfg_scale,
                      generator=torch.Generator().manual_seed(layout.seed))
        if controlnet is None:
            kwargs["guidance_rescale"] = cfg_rescale
        else:
            rng = np.random.default_rng(layout.seed)
            kwargs["image"] = Image.fromarray(control_map(layout.scene, kind, rng)).convert("RGB")
        with torch.inference_mode():
            image = pipe(layout.prompt, **kwargs).images[0]
        for key, value in score_layout(layout, image).items():
            totals.setdefault(key, []).append(value)
    return {k: float(np.mean(v)) for k, v in totals.items()} | {"layouts": len(layouts)}


# ---------------------------------------------------------------------- training
class Trainer:
    """Holds the run's state; each phase resumes where the state says it stopped."""

    def __init__(self, args):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        self.args = args
        self.work = Path(args.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_path = self.work / "state.json"
        self.state = json.loads(self.state_path.read_text()) if self.state_path.exists() else {
            "seed": args.seed, "seconds": 0.0, "step": 0, "latents_done": False}
        command = "python -m training.train_controlnet " + " ".join(args.argv)
        pieces = self.state.setdefault("pieces", [{"from_minute": 0.0, "command": command}])
        if pieces[-1]["command"] != command:  # resumed with other options: the card lists every piece
            pieces.append({"from_minute": round(self.state["seconds"] / 60, 1), "command": command})
        self.state.update(command=command, base=str(args.base))
        torch.manual_seed(args.seed)
        base = Path(args.base)
        self.tokenizer = CLIPTokenizer.from_pretrained(base / "tokenizer")
        self.text_encoder = CLIPTextModel.from_pretrained(base / "text_encoder", torch_dtype=torch.float32).eval()
        self.unet = UNet2DConditionModel.from_pretrained(base / "unet", torch_dtype=torch.float32).eval()
        self.vae = AutoencoderKL.from_pretrained(base / "vae", torch_dtype=torch.float32).eval()
        for module in (self.text_encoder, self.unet, self.vae):
            module.requires_grad_(False)
        self.scheduler = DDPMScheduler.from_pretrained(base / "scheduler")

    def save_state(self) -> None:
        save_json_state(self.state, self.state_path)

    def done(self) -> bool:
        a, st = self.args, self.state
        return st["seconds"] >= a.minutes * 60 or 0 < a.steps <= st["step"]

    # ------------------------------------------------------------------ latent cache
    def cache_latents(self) -> dict:
        path = self.work / "latents.pt"
        if self.state["latents_done"] and path.exists():
            return load_if_exists(path)
        seeds = list(range(TRAIN_SCENE_SEEDS, TRAIN_SCENE_SEEDS + self.args.num_scenes))
        means, stds = [], []
        cpu_start = time.process_time()
        with torch.no_grad():
            for i in range(0, len(seeds), 64):
                x = torch.stack([_to_tensor(render(training_scene(s, self.args.off_grid))) for s in seeds[i:i + 64]])
                dist = self.vae.encode(x).latent_dist
                means.append(dist.mean.half())
                stds.append(dist.std.half())
                print(f"latents {i + len(x)}/{len(seeds)}", flush=True)
        data = {"seeds": torch.tensor(seeds), "mean": torch.cat(means), "std": torch.cat(stds)}
        atomic_save(data, path)
        self.state["latents_done"] = True
        self.state["latent_cpu_seconds"] = time.process_time() - cpu_start
        self.save_state()
        return data

    # ------------------------------------------------------------------ ControlNet
    def make_controlnet(self):
        from diffusers import ControlNetModel

        channels = tuple(int(c) for c in self.args.hint_channels.split(","))
        torch.manual_seed(self.args.seed)
        return ControlNetModel.from_unet(self.unet, conditioning_embedding_out_channels=channels)

    def encode_text(self, captions: list[str]) -> torch.Tensor:
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            return self.text_encoder(ids)[0]

    def batch(self, data: dict, rng: random.Random, maps_rng: np.random.Generator):
        a = self.args
        idx = [rng.randrange(len(data["seeds"])) for _ in range(a.batch)]
        scale = self.vae.config.scaling_factor
        mean, std = data["mean"][idx].float(), data["std"][idx].float()
        latents = (mean + std * torch.randn_like(mean)) * scale
        scenes = [training_scene(int(data["seeds"][i]), a.off_grid) for i in idx]
        kinds = ["scribble" if rng.random() < a.scribble_share else "edges" for _ in scenes]
        cond = map_tensor([control_map(s, k, maps_rng) for s, k in zip(scenes, kinds)])
        captions = ["" if rng.random() < a.empty_caption else varied_caption(s, rng, 0.15, 0.3, 0.0)
                    for s in scenes]
        return latents, cond, captions

    def train(self, data: dict):
        a = self.args
        controlnet = self.make_controlnet()
        opt = torch.optim.AdamW(controlnet.parameters(), lr=a.lr, weight_decay=1e-2)
        ck = load_if_exists(self.work / "controlnet.pt")
        if ck:
            controlnet.load_state_dict(ck["controlnet"])
            opt.load_state_dict(ck["opt"])
            torch.set_rng_state(ck["rng"])
        controlnet.train()
        sched = self.scheduler
        rng = random.Random(a.seed * 104729 + self.state["step"])
        maps_rng = np.random.default_rng(a.seed * 7 + self.state["step"])
        last_ck = time.time()
        snap_every = a.snapshot_minutes * 60
        while not self.done():
            t0 = time.time()
            step = self.state["step"]
            latents, cond, captions = self.batch(data, rng, maps_rng)
            noise = torch.randn_like(latents)
            t = sample_timesteps(len(latents), sched.config.num_train_timesteps, a.high_noise_share)
            noisy = sched.add_noise(latents, noise, t)
            target = (sched.get_velocity(latents, noise, t) if sched.config.prediction_type == "v_prediction"
                      else noise)
            for group in opt.param_groups:
                group["lr"] = a.lr * min(1.0, (step + 1) / a.warmup)
            ctx = self.encode_text(captions)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.bf16):
                down, mid = controlnet(noisy, t, ctx, controlnet_cond=cond, return_dict=False)
                pred = self.unet(noisy, t, ctx, down_block_additional_residuals=down,
                                 mid_block_additional_residual=mid).sample.float()
            loss = F.mse_loss(pred, target)
            if not torch.isfinite(loss):
                raise RuntimeError(f"non-finite loss at step {step}; the last checkpoint is kept")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(controlnet.parameters(), 1.0)
            opt.step()
            before = self.state["seconds"]
            self.state["step"] += 1
            self.state["seconds"] += time.time() - t0
            self._log(self.state["step"], self.state["seconds"], loss.item())
            crossed = snap_every > 0 and int(before // snap_every) != int(self.state["seconds"] // snap_every)
            if crossed:
                self.export(controlnet, self.work / "snapshots" / f"min_{round(self.state['seconds'] / 60):04d}")
            if crossed or self.done() or time.time() - last_ck > 180:
                atomic_save({"controlnet": controlnet.state_dict(), "opt": opt.state_dict(),
                              "rng": torch.get_rng_state()}, self.work / "controlnet.pt")
                self.save_state()
                last_ck = time.time()
        return controlnet.eval()

    def _log(self, step: int, seconds: float, loss: float) -> None:
        path = self.work / "loss.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["step", "train_seconds", "loss"])
            writer.writerow([step, f"{seconds:.2f}", f"{loss:.6f}"])
        if step % 50 == 0:
            print(f"[controlnet] step {step} t={seconds / 60:.1f}min loss={loss:.4f}", flush=True)

    # ------------------------------------------------------------------ export and card
    @staticmethod
    def export(controlnet, out: Path, state: dict | None = None) -> None:
        """`out` as a diffusers ControlNet folder (fp16 safetensors), written to a temp folder and renamed."""
        import copy

        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        copy.deepcopy(controlnet).half().save_pretrained(tmp, safe_serialization=True)
        if state is not None:
            (tmp / "training_state.json").write_text(json.dumps(state, indent=2))
        replace_folder(tmp, out)

    def iou_curve(self, base, layouts: list[Layout], guidance: dict) -> dict[int, float]:
        """Mean IoU (edge maps) of every snapshot; cached in <work>/iou.json."""
        from diffusers import ControlNetModel

        path = self.work / "iou.json"
        cache = json.loads(path.read_text()) if path.exists() else {}
        signature = f"{len(layouts)}:{self.args.eval_steps}"
        if cache.get("_layouts") != signature:
            cache = {"_layouts": signature}
        for snap in sorted((self.work / "snapshots").glob("min_*")):
            if snap.name.endswith(".tmp") or snap.name in cache:
                continue
            net = ControlNetModel.from_pretrained(snap, torch_dtype=torch.float32)
            cache[snap.name] = evaluate(base, net, layouts, self.args.eval_steps, **guidance)["iou"]
            path.write_text(json.dumps(cache, indent=2))
        return {int(k.split("_")[1]): v for k, v in cache.items() if k.startswith("min_")}

    def write_card(self, out: Path, curve: dict[int, float], final: dict | None) -> None:
        from training.curves import save_loss_curve, save_series_plot

        points = []
        with open(self.work / "loss.csv") as fh:
            points = [(float(r["train_seconds"]) / 60, float(r["loss"])) for r in csv.DictReader(fh)]
        save_loss_curve(points, out / "loss.png", "Built-in ControlNet training loss", "training minutes")
        if curve:
            save_series_plot({"IoU (edge maps)": sorted(curve.items())}, out / "iou.png",
                             "IoU of generated objects vs control shapes", "training minutes", "IoU")
        st, a = self.state, self.args
        guidance = recommended(Path(a.base))
        pieces = st.get("pieces", [])
        command = "\n".join(f"  - from minute {p['from_minute']:g}: `{p['command']}`" for p in pieces) \
            if len(pieces) > 1 else f"  `{st['command']}`"
        curve_rows = "\n".join(f"| {m} | {v:.3f} |" for m, v in sorted(curve.items())) or "| - | - |"
        final_rows = "(not evaluated: run with --eval-layouts 120)"
        if final:
            cats = [c for c in ("iou", "position", "colour", "shape", "two_objects") if c in final["base"]]
            final_rows = "| | " + " | ".join(cats) + " |\n|" + "---|" * (len(cats) + 1) + "\n" + "\n".join(
                f"| {name} | " + " | ".join(f"{scores.get(c, float('nan')):.3f}" for c in cats) + " |"
                for name, scores in final.items())
        size = sum(f.stat().st_size for f in out.rglob("*.safetensors")) / 2**20
        (out / "README.md").write_text(f"""# Built-in ControlNet: shapes where you draw them

A ControlNet for the built-in shapes-world model (`assets/builtin-shapes`), made with
`ControlNetModel.from_unet` from its UNet and trained by `training/train_controlnet.py` with the base model
frozen. Its control map is white outlines on black: the canny preprocessor's edges of a shapes picture, or a
sketch (scribbled outlines, 2-5 px). Weights fp16 safetensors ({size:.1f} MB); it loads offline with
`ControlNetModel.from_pretrained(this_folder)`, and the studio lists it as the built-in ControlNet.

## Training
- Command (resumable: run it again after a stop and it continues from its checkpoint):
{command}
- Seed {st['seed']}; {st['step']} steps in {st['seconds'] / 60:.1f} training minutes (evaluation paused), after
  {st.get('latent_cpu_seconds', 0) / 60:.1f} CPU-minutes encoding the latent cache; {a.threads} thread(s) on
  {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU; bf16 autocast: {a.bf16}.
- Data: {a.num_scenes} cached world scenes (seeds {TRAIN_SCENE_SEEDS}+), {a.off_grid:.0%} with their objects moved
  off the five named positions; maps {1 - a.scribble_share:.0%} edges / {a.scribble_share:.0%} scribbles, drawn
  fresh at every step; {a.empty_caption:.0%} empty prompts.
- Objective: the base model's ({self.scheduler.config.prediction_type}, zero terminal SNR:
  {self.scheduler.config.get('rescale_betas_zero_snr', False)}); AdamW {a.lr:g}, batch {a.batch}, warm-up
  {a.warmup} steps, {a.high_noise_share:.0%} of timesteps from the noisiest 40%; hint encoder channels
  {a.hint_channels}.

## Curves
`loss.png` (loss against training minutes); `iou.png` (IoU against training minutes, {a.curve_layouts} layouts):

| minutes | IoU |
|---|---|
{curve_rows}

## Held-out layouts
{a.eval_layouts} layouts (one and two objects, named and off-grid places, both sizes), {a.eval_steps} steps, CFG
{guidance['cfg_scale']:g}; the base alone with CFG rescale {guidance['cfg_rescale']:g} (the ControlNet pipelines have no
rescale).

{final_rows}

Written {time.strftime('%Y-%m-%d %H:%M')}.
""")


def parse_args(argv=None):
    p = run_parser(__doc__, "runs/controlnet", "assets/builtin-controlnet", 2)
    p.add_argument("--base", default="assets/builtin-shapes", help="the base model folder (its UNet is copied)")
    p.add_argument("--minutes", type=float, default=90, help="training-minute budget")
    p.add_argument("--steps", type=int, default=0, help="stop at this many steps (0: minutes only)")
    p.add_argument("--num-scenes", type=int, default=20000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--off-grid", type=float, default=0.5, help="share of scenes with objects at random places")
    p.add_argument("--scribble-share", type=float, default=0.5, help="share of scribble maps (else edge maps)")
    p.add_argument("--empty-caption", type=float, default=0.3)
    p.add_argument("--high-noise-share", type=float, default=0.3)
    p.add_argument("--hint-channels", default="16,32,64,128", help="the hint encoder's channels (3 halvings)")
    p.add_argument("--no-bf16", dest="bf16", action="store_false")
    p.add_argument("--snapshot-minutes", type=float, default=10, help="0: no snapshots")
    p.add_argument("--curve-layouts", type=int, default=24, help="layouts per snapshot for the IoU curve")
    p.add_argument("--eval-layouts", type=int, default=0, help="held-out layouts for the final scores (0: none)")
    p.add_argument("--eval-steps", type=int, default=20)
    p.add_argument("--eval-only", action="store_true", help="score --out against the base model, train nothing")
    return parse_run_args(p, argv)


def final_scores(base_dir: Path, controlnet, n: int, steps: int) -> dict:
    """The base model alone and with the ControlNet (edge maps and scribbles) on `n` held-out layouts, at the
    base model's recommended CFG."""
    base, guidance = load_base(base_dir), recommended(base_dir)
    layouts = heldout_layouts(n)
    return {"base": evaluate(base, None, layouts, steps, **guidance),
            **{f"ControlNet, {kind}": evaluate(base, controlnet, layouts, steps, kind, **guidance)
               for kind in MAP_KINDS}}


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.eval_only:
        from diffusers import ControlNetModel

        net = ControlNetModel.from_pretrained(args.out, torch_dtype=torch.float32)
        print(json.dumps(final_scores(Path(args.base), net, args.eval_layouts or 120, args.eval_steps), indent=2))
        return
    trainer = Trainer(args)
    controlnet = trainer.train(trainer.cache_latents())
    out = Path(args.out)
    trainer.export(controlnet, out, trainer.state)
    curve = trainer.iou_curve(load_base(Path(args.base)), heldout_layouts(args.curve_layouts, LAYOUT_SEED + 1),
                              recommended(Path(args.base))) if args.curve_layouts else {}
    final = final_scores(Path(args.base), controlnet, args.eval_layouts, args.eval_steps) if args.eval_layouts \
        else None
    trainer.write_card(out, curve, final)
    print(f"exported to {out}", flush=True)


if __name__ == "__main__":
    main()
