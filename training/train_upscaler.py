"""Reproducible, resumable training of the built-in 4x upscaler for the built-in model's images.

    python -m training.train_upscaler [--minutes 30] [--out assets/builtin-upscaler] [--work-dir runs/upscaler]

spandrel's own Compact architecture (SRVGGNetCompact, the Real-ESRGAN "compact" network) at scale 4, trained on
pairs from the shapes world: a scene rendered by `training/world.py` at 512 px is the high-res target, its
area-downscaled (x4) 128 px copy, made soft the way the built-in model's VAE-decoded pictures are (random blur,
then mild noise and JPEG), the input. Random low-res patches (edges preferred), MSE loss (L1 and an image-gradient
term as options), AdamW with a warm-up and a cosine decay, one thread, fixed seeds.

State lives in <work-dir>: checkpoint.pt (weights, optimizer, data RNG, step, CPU seconds; written to a temp file
and renamed every --checkpoint-minutes, so a kill loses at most that much), state.json, loss.csv and psnr.csv.
Run the command again after a stop and it continues from the checkpoint. Only training steps count towards
--minutes (CPU time of this process); the held-out PSNR taken every --eval-minutes is paused time.

Export (<out>, written to a temp folder and renamed): builtin-shapes-4x.safetensors (fp32, loads with
`spandrel.ModelLoader().load_from_file`), README.md (the model card), loss.png, psnr.png, example.png (before and
after on the built-in model's own pictures) and training_state.json. Scores: PSNR and SSIM at 128 -> 512 on
held-out world scenes, for the model, Lanczos and bicubic.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from training.run_files import (atomic_save, load_if_exists, parse_run_args, replace_folder, run_parser,
                                 save_json_state)
from training.world import PATTERNS, SHAPES, render, sample_scene

SCALE = 4
HR_SIZE = 512
LR_SIZE = HR_SIZE // SCALE
TRAIN_SEEDS = 3_000_000  # the base model trains on 1,000,000+, the ControlNet on 2,000,000+
HELDOUT_SEEDS = 3_500_000
CURVE_IMAGES = 16  # held-out images for the PSNR curve during training
WEIGHTS_FILE = "builtin-shapes-4x.safetensors"


# ---------------------------------------------------------------------- data
def world_scene(seed: int):
    """Scene `seed` of the upscaler's data: any world scene (held-out shapes and patterns included, since LoRAs
    teach them), its objects moved off the named positions half of the time."""
    from training.train_controlnet import off_grid

    scene = sample_scene(seed, shapes=SHAPES, patterns=PATTERNS)
    rng = random.Random(seed * 17 + 3)
    return off_grid(scene, rng) if rng.random() < 0.5 else scene


def to_uint8_tensor(img: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 from a PIL RGB image."""
    return torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).contiguous()


def to_image(t: torch.Tensor) -> Image.Image:
    """PIL RGB image from a (3, H, W) uint8 tensor."""
    return Image.fromarray(t.permute(1, 2, 0).numpy())


def area_downscale(hr: torch.Tensor, scale: int = SCALE) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> uint8 (..., 3, H/scale, W/scale), each pixel the rounded mean of its block."""
    x = hr.float()
    squeeze = x.dim() == 3
    lr = F.avg_pool2d(x.unsqueeze(0) if squeeze else x, scale)
    lr = lr.round().clamp(0, 255).to(torch.uint8)
    return lr[0] if squeeze else lr


def render_pool(seeds: list[int], size: int = HR_SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(high-res uint8 (N, 3, size, size), its clean area-downscaled x4 copy) for the scenes `seeds`."""
    hr = torch.stack([to_uint8_tensor(render(world_scene(s), size)) for s in seeds])
    return hr, area_downscale(hr)


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=gen).item()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a float (3, H, W) image, edges reflected."""
    radius = max(1, math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2 / (2 * sigma**2))
    k = (k / k.sum()).to(x.dtype)
    y = F.pad(x.unsqueeze(0), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).repeat(3, 1, 1, 1), groups=3)
    y = F.conv2d(y, k.view(1, 1, -1, 1).repeat(3, 1, 1, 1), groups=3)
    return y[0]


def jpeg(x: torch.Tensor, quality: int) -> torch.Tensor:
    """A uint8 (3, H, W) image through JPEG at `quality`."""
    buf = io.BytesIO()
    to_image(x).save(buf, format="JPEG", quality=quality)
    return to_uint8_tensor(Image.open(io.BytesIO(buf.getvalue())))


def degrade(lr: torch.Tensor, gen: torch.Generator, blur: float = 0.6, noise: float = 0.4,
            jpeg_share: float = 0.3) -> torch.Tensor:
    """A clean low-res uint8 (3, H, W) image made to look like the built-in model's soft, VAE-decoded pictures:
    Gaussian blur (sigma 0.2-1.6 px) a `blur` share of the time, Gaussian noise (sigma up to 3/255) a `noise`
    share, 8-bit rounding, then JPEG (quality 70-95) a `jpeg_share` of the time."""
    x = lr.float()
    if torch.rand((), generator=gen).item() < blur:
        x = gaussian_blur(x, _uniform(gen, 0.2, 1.6))
    if torch.rand((), generator=gen).item() < noise:
        x = x + torch.randn(x.shape, generator=gen) * _uniform(gen, 0.0, 3.0)
    x = x.round().clamp(0, 255).to(torch.uint8)
    if torch.rand((), generator=gen).item() < jpeg_share:
        x = jpeg(x, int(torch.randint(70, 96, (), generator=gen)))
    return x


def patch_corner(lr: torch.Tensor, gen: torch.Generator, patch: int, tries: int = 4,
                 flat: int = 12) -> tuple[int, int]:
    """Top-left corner of a random `patch` window of `lr`: up to `tries` draws, keeping the first whose values
    span more than `flat` levels (most of a shapes picture is flat background, and edges are what is learnt)."""
    for _ in range(tries):
        y = int(torch.randint(0, lr.shape[1] - patch + 1, (), generator=gen))
        x = int(torch.randint(0, lr.shape[2] - patch + 1, (), generator=gen))
        window = lr[:, y:y + patch, x:x + patch]
        if int(window.max()) - int(window.min()) > flat:
            break
    return y, x


def make_pair(hr: torch.Tensor, lr: torch.Tensor, gen: torch.Generator, patch: int,
              degrade_input: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One training pair from a high-res uint8 (3, 4H, 4W) image and its clean area-downscaled copy (3, H, W):
    a random low-res patch (float (3, patch, patch) in 0..1, degraded unless `degrade_input` is False) and the
    high-res patch it comes from (float (3, 4*patch, 4*patch)), both turned, flipped and colour-permuted alike."""
    if degrade_input:
        lr = degrade(lr, gen)
    y, x = patch_corner(lr, gen, patch)
    lo = lr[:, y:y + patch, x:x + patch].float() / 255
    hi = hr[:, SCALE * y:SCALE * (y + patch), SCALE * x:SCALE * (x + patch)].float() / 255
    turns = int(torch.randint(0, 4, (), generator=gen))
    flip = torch.rand((), generator=gen).item() < 0.5
    perm = torch.randperm(3, generator=gen)
    lo, hi = (torch.rot90(t, turns, (1, 2))[perm] for t in (lo, hi))
    if flip:
        lo, hi = lo.flip(2), hi.flip(2)
    return lo.contiguous(), hi.contiguous()


def make_batch(hr: torch.Tensor, lr: torch.Tensor, gen: torch.Generator, batch: int,
               patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` pairs (make_pair) from random images of the pool."""
    pairs = [make_pair(hr[i], lr[i], gen, patch) for i in torch.randint(0, len(hr), (batch,), generator=gen)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


# ---------------------------------------------------------------------- model and objective
def make_model(num_feat: int, num_conv: int, seed: int):
    """spandrel's Compact (SRVGGNetCompact) at scale 4, initialised from `seed`."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    model = Compact(num_in_ch=3, num_out_ch=3, num_feat=num_feat, num_conv=num_conv, upscale=SCALE)
    init_weights(model)
    return model


def init_weights(model) -> None:
    """He initialisation for the PReLU body (torch's default shrinks the signal ~6x a layer, and the network sits
    on its trivial solution, the nearest-pixel skip, for thousands of steps); the last convolution starts at
    zero, so training starts from the skip and learns the residual."""
    convs = [m for m in model.body if isinstance(m, torch.nn.Conv2d)]
    for conv in convs[:-1]:
        torch.nn.init.kaiming_normal_(conv.weight, a=0.25, nonlinearity="leaky_relu")
        torch.nn.init.zeros_(conv.bias)
    torch.nn.init.zeros_(convs[-1].weight)
    torch.nn.init.zeros_(convs[-1].bias)


LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}


def loss_fn(pred: torch.Tensor, target: torch.Tensor, kind: str = "mse", edge_weight: float = 0.0) -> torch.Tensor:
    """MSE or L1 (`kind`), plus `edge_weight` times the same distance between the horizontal and vertical image
    gradients (sharp edges). MSE is the default: with L1 the network stays on its nearest-pixel skip (a shapes
    picture is mostly flat, and L1 pulls every flat pixel's residual back to zero as hard as an edge pulls it
    away; measured: 400 steps end at the skip's PSNR with L1, above Lanczos with MSE)."""
    dist = LOSSES[kind]
    loss = dist(pred, target)
    if edge_weight:
        for dim in (2, 3):
            loss = loss + edge_weight * dist(pred.diff(dim=dim), target.diff(dim=dim))
    return loss


def learning_rate(base: float, step: int, progress: float, warmup: int = 100, floor: float = 0.01) -> float:
    """Linear warm-up over `warmup` steps, then a cosine from `base` to `floor * base` as `progress` goes 0 -> 1."""
    cosine = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return base * min(1.0, (step + 1) / warmup) * cosine


def train_step(model, opt, lo: torch.Tensor, hi: torch.Tensor, kind: str = "mse", edge_weight: float = 0.0) -> float:
    """One AdamW step on a batch; raises on a non-finite loss (the last checkpoint is kept)."""
    loss = loss_fn(model(lo), hi, kind, edge_weight)
    if not torch.isfinite(loss):
        raise RuntimeError("non-finite loss; the last checkpoint is kept")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


@torch.no_grad()
def upscale(model, lr: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> uint8 (N, 3, 4H, 4W) with `model` (0..1 RGB in and out, as spandrel runs it)."""
    out = model(lr.float() / 255)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


# ---------------------------------------------------------------------- evaluation
def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two uint8 images of the same shape."""
    mse = ((a.double() - b.double()) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(255**2 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """SSIM (scikit-image, Gaussian-weighted as in Wang et al. 2004) between two uint8 (3, H, W) images."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a.permute(1, 2, 0).numpy(), b.permute(1, 2, 0).numpy(), channel_axis=2,
                                       data_range=255, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def classic_upscale(lr: torch.Tensor, method: int) -> torch.Tensor:
    """uint8 (3, H, W) -> (3, 4H, 4W) with a PIL filter (Image.LANCZOS, Image.BICUBIC)."""
    return to_uint8_tensor(to_image(lr).resize((lr.shape[2] * SCALE, lr.shape[1] * SCALE), method))


def heldout_set(n: int, degraded: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` held-out world scenes: (high-res 512 px, low-res 128 px), the low-res copies area-downscaled, and
    also degraded (blur/noise/JPEG, fixed seed) when `degraded`."""
    hr, lr = render_pool([HELDOUT_SEEDS + i for i in range(n)])
    if degraded:
        gen = torch.Generator().manual_seed(HELDOUT_SEEDS)
        lr = torch.stack([degrade(x, gen) for x in lr])
    return hr, lr


def evaluate(model, hr: torch.Tensor, lr: torch.Tensor, with_ssim: bool = True) -> dict[str, dict[str, float]]:
    """Mean PSNR (and SSIM) against `hr` of the model, Lanczos and bicubic upscales of `lr`."""
    model.eval()
    outputs = {"model": torch.cat([upscale(model, lr[i:i + 8]) for i in range(0, len(lr), 8)]),
               "lanczos": torch.stack([classic_upscale(x, Image.LANCZOS) for x in lr]),
               "bicubic": torch.stack([classic_upscale(x, Image.BICUBIC) for x in lr])}
    scores = {}
    for name, out in outputs.items():
        scores[name] = {"psnr": float(np.mean([psnr(o, h) for o, h in zip(out, hr)]))}
        if with_ssim:
            scores[name]["ssim"] = float(np.mean([ssim(o, h) for o, h in zip(out, hr)]))
    return scores


# ---------------------------------------------------------------------- training
class Trainer:
    """One run: the model, its optimizer and data RNG, and the run's state, resumed from <work-dir> if there."""

    def __init__(self, args):
        self.args = args
        self.work = Path(args.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_path, self.ck_path = self.work / "state.json", self.work / "checkpoint.pt"
        command = "python -m training.train_upscaler " + " ".join(args.argv)
        self.state = {"seed": args.seed, "step": 0, "cpu_seconds": 0.0, "wall_seconds": 0.0, "command": command,
                      "pieces": [{"from_minute": 0.0, "command": command}],
                      "arch": {"num_feat": args.num_feat, "num_conv": args.num_conv, "scale": SCALE}}
        self.model = make_model(args.num_feat, args.num_conv, args.seed)
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=args.lr, weight_decay=1e-4)
        self.gen = torch.Generator().manual_seed(args.seed)
        self.resume()
        cpu = time.process_time()
        self.hr, self.lr = render_pool([TRAIN_SEEDS + i for i in range(args.pool)])
        self.state["pool_cpu_seconds"] = time.process_time() - cpu  # rendered again on every start

    def resume(self) -> None:
        """Restore weights, optimizer, data RNG, step and clock from the last complete checkpoint; drop log rows
        written after it."""
        ck = load_if_exists(self.ck_path)
        if ck is None:
            for name in ("loss.csv", "psnr.csv"):
                (self.work / name).unlink(missing_ok=True)
            return
        if self.state_path.exists():
            saved = json.loads(self.state_path.read_text())
            pieces = saved.get("pieces", self.state["pieces"])
            if pieces[-1]["command"] != self.state["command"]:  # resumed with other options: the card lists both
                pieces.append({"from_minute": round(ck["cpu_seconds"] / 60, 1), "command": self.state["command"]})
            self.state.update(saved, pieces=pieces, command=self.state["command"])
        self.model.load_state_dict(ck["model"])
        self.opt.load_state_dict(ck["opt"])
        self.gen.set_state(ck["rng"])
        self.state.update(step=ck["step"], cpu_seconds=ck["cpu_seconds"], wall_seconds=ck["wall_seconds"])
        for name in ("loss.csv", "psnr.csv"):
            keep_rows(self.work / name, lambda row: int(row["step"]) <= ck["step"])
        print(f"resumed at step {ck['step']} ({ck['cpu_seconds'] / 60:.1f} CPU-minutes)", flush=True)

    def checkpoint(self) -> None:
        """Checkpoint (temp file + rename), then the JSON state."""
        st = self.state
        atomic_save({"model": self.model.state_dict(), "opt": self.opt.state_dict(), "rng": self.gen.get_state(),
                     "step": st["step"], "cpu_seconds": st["cpu_seconds"], "wall_seconds": st["wall_seconds"]},
                    self.ck_path)
        save_json_state(st, self.state_path)

    def done(self) -> bool:
        a, st = self.args, self.state
        return st["cpu_seconds"] >= a.minutes * 60 or 0 < a.steps <= st["step"]

    def progress(self) -> float:
        """How far along the run is (0..1): by steps when --steps is set, else by CPU-minutes."""
        a, st = self.args, self.state
        return st["step"] / a.steps if a.steps else st["cpu_seconds"] / (a.minutes * 60)

    def train(self, curve_set: tuple[torch.Tensor, torch.Tensor] | None = None):
        """Train until the budget is spent; a PSNR point on `curve_set` every --eval-minutes (clock paused)."""
        a, st = self.args, self.state
        self.model.train()
        last_ck = time.time()
        eval_every = a.eval_minutes * 60
        if curve_set is not None and st["step"] == 0:
            self.log_psnr(curve_set)
        while not self.done():
            cpu, wall = time.process_time(), time.time()
            lr_now = learning_rate(a.lr, st["step"], self.progress(), a.warmup)
            for group in self.opt.param_groups:
                group["lr"] = lr_now
            lo, hi = make_batch(self.hr, self.lr, self.gen, a.batch, a.patch)
            loss = train_step(self.model, self.opt, lo, hi, a.loss, a.edge_weight)
            before = st["cpu_seconds"]
            st["step"] += 1
            st["cpu_seconds"] += time.process_time() - cpu
            st["wall_seconds"] += time.time() - wall
            append_row(self.work / "loss.csv", {"step": st["step"], "cpu_seconds": f"{st['cpu_seconds']:.2f}",
                                                "loss": f"{loss:.6f}", "lr": f"{lr_now:.3g}"})
            if st["step"] % 100 == 0:
                print(f"step {st['step']} {st['cpu_seconds'] / 60:.1f} CPU-min loss={loss:.4f} lr={lr_now:.2g}",
                      flush=True)
            crossed = eval_every > 0 and int(before // eval_every) != int(st["cpu_seconds"] // eval_every)
            if crossed and curve_set is not None:
                self.log_psnr(curve_set)
            if crossed or self.done() or time.time() - last_ck > a.checkpoint_minutes * 60:
                self.checkpoint()
                last_ck = time.time()
        return self.model.eval()

    def log_psnr(self, curve_set: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Append the model's held-out PSNR at the current CPU-minute to psnr.csv."""
        value = evaluate(self.model, *curve_set, with_ssim=False)["model"]["psnr"]
        self.model.train()
        append_row(self.work / "psnr.csv", {"step": self.state["step"],
                                            "cpu_seconds": f"{self.state['cpu_seconds']:.2f}",
                                            "psnr": f"{value:.3f}"})
        print(f"step {self.state['step']} held-out PSNR {value:.2f} dB", flush=True)


def append_row(path: Path, row: dict) -> None:
    """Append `row` to a CSV file (header written when the file is new)."""
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as fh:
        return list(csv.DictReader(fh))


def keep_rows(path: Path, keep) -> None:
    """Rewrite a CSV log with only the rows `keep(row)` accepts (temp file + rename)."""
    rows = read_rows(path)
    if not rows:
        return
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if keep(r))
    os.replace(tmp, path)


# ---------------------------------------------------------------------- export
def save_weights(model, path: Path) -> None:
    """The model's state dict as fp32 safetensors (the keys spandrel's Compact detector reads)."""
    from safetensors.torch import save_file

    meta = {"architecture": "Compact (SRVGGNetCompact)", "scale": str(SCALE), "num_feat": str(model.num_feat),
            "num_conv": str(model.num_conv), "trained_on": "AI Artist Studio shapes world"}
    save_file({k: v.detach().float().contiguous() for k, v in model.state_dict().items()}, str(path), metadata=meta)
    os.chmod(path, 0o644)  # like the other assets (safetensors writes owner-only)


def load_with_spandrel(path: Path):
    """The upscaler at `path` as the studio loads it: a spandrel ImageModelDescriptor."""
    import spandrel

    return spandrel.ModelLoader().load_from_file(str(path))


def verify_export(path: Path, model, lr: torch.Tensor) -> dict:
    """Load `path` with spandrel; check it is scale 4 and that it upscales `lr` as `model` does."""
    desc = load_with_spandrel(path)
    if desc.scale != SCALE:
        raise RuntimeError(f"spandrel reads scale {desc.scale}, expected {SCALE}")
    desc.model.eval()
    with torch.no_grad():
        diff = (desc.model(lr.float() / 255) - model(lr.float() / 255)).abs().max().item()
    if diff > 1e-5:
        raise RuntimeError(f"spandrel's model differs from the trained one by {diff}")
    return {"architecture": desc.architecture.name, "scale": desc.scale, "max_abs_diff": diff,
            "tags": list(desc.tags), "mb": path.stat().st_size / 2**20}


def builtin_outputs(base_dir: Path, n: int) -> list[tuple[str, Image.Image]]:
    """(prompt, image): `n` pictures of the built-in model, 20 steps at 128 px, its recommended CFG."""
    from training.train_controlnet import load_base, recommended

    pipe, guidance = load_base(base_dir), recommended(base_dir)
    out = []
    for i in range(n):
        prompt = world_scene(HELDOUT_SEEDS + 10_000 + i).caption
        with torch.inference_mode():
            out.append((prompt, pipe(prompt, num_inference_steps=20, width=LR_SIZE, height=LR_SIZE,
                                     guidance_scale=guidance["cfg_scale"], guidance_rescale=guidance["cfg_rescale"],
                                     generator=torch.Generator().manual_seed(i)).images[0]))
    return out


def centre_crop_box(img: Image.Image, crop: int) -> tuple[int, int, int, int]:
    """A `crop`-pixel box of the 4x upscale of `img` centred on its objects (the evaluator's foreground mask)."""
    from training.evaluator import foreground_mask

    mask = foreground_mask(img)
    cy, cx = (np.argwhere(mask).mean(0) if mask.any() else (LR_SIZE / 2, LR_SIZE / 2))
    half = crop // 2
    x0 = int(min(max(cx * SCALE - half, 0), img.width * SCALE - crop))
    y0 = int(min(max(cy * SCALE - half, 0), img.height * SCALE - crop))
    return x0, y0, x0 + crop, y0 + crop


def example_sheet(model, pictures: list[tuple[str, Image.Image]], crop: int = 256) -> Image.Image:
    """Before/after grid on the built-in model's pictures: the input shown 4x with nearest pixels, Lanczos 4x and
    the model 4x, each a `crop`-pixel 1:1 window of the 512 px result around the objects."""
    from training.curves import image_grid

    rows = []
    for _, img in pictures:
        lr = to_uint8_tensor(img)
        ups = [img.resize((img.width * SCALE, img.height * SCALE), Image.NEAREST),
               to_image(classic_upscale(lr, Image.LANCZOS)), to_image(upscale(model, lr[None])[0])]
        box = centre_crop_box(img, crop)
        rows.append([u.crop(box) for u in ups])
    return image_grid(rows, [f"picture {i + 1}" for i in range(len(rows))],
                      ["input (nearest 4x)", "Lanczos 4x", "built-in upscaler 4x"])


def save_psnr_curve(points: list[tuple[float, float]], baselines: dict[str, float], path: Path) -> Path:
    """Held-out PSNR against training CPU-minutes, with the classic upscalers as flat lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="#6d28d9", label="built-in upscaler")
    for (name, value), colour in zip(baselines.items(), ("#059669", "#d97706")):
        ax.axhline(value, color=colour, linestyle="--", label=name)
    ax.set_xlabel("training CPU-minutes")
    ax.set_ylabel("PSNR (dB)")
    ax.set_title(f"Held-out PSNR, 128 -> 512 ({CURVE_IMAGES} world scenes)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def score_table(scores: dict[str, dict[str, float]]) -> str:
    names = {"model": "built-in upscaler", "lanczos": "Lanczos", "bicubic": "bicubic"}
    return "| | PSNR (dB) | SSIM |\n|---|---|---|\n" + "\n".join(
        f"| {names[k]} | {v['psnr']:.2f} | {v['ssim']:.4f} |" for k, v in scores.items())


def write_card(out: Path, state: dict, args, scores: dict, check: dict, prompts: list[str]) -> None:
    """README.md: what the upscaler is, how it was trained, its scores and how to load it."""
    st = state
    pieces = st.get("pieces", [])
    command = "\n".join(f"  - from CPU-minute {p['from_minute']:g}: `{p['command']}`" for p in pieces) \
        if len(pieces) > 1 else f"  `{st['command']}`"
    curve_rows = "\n".join(f"| {float(r['cpu_seconds']) / 60:.1f} | {r['step']} | {float(r['psnr']):.2f} |"
                           for r in read_rows(Path(args.work_dir) / "psnr.csv")) or "| - | - | - |"
    edge_term = f" + {args.edge_weight:g} x the same on the image gradients" if args.edge_weight else ""
    prompt_list = "\n".join(f"{i + 1}. {p}" for i, p in enumerate(prompts))
    (out / "README.md").write_text(f"""# Built-in upscaler: shapes world 4x

A 4x super-resolution network for the built-in shapes-world model's pictures (`assets/builtin-shapes`, 128 px),
trained by `training/train_upscaler.py`. Architecture: Compact (SRVGGNetCompact, the Real-ESRGAN "compact"
network) as spandrel defines it: {st['arch']['num_feat']} features, {st['arch']['num_conv']} body convolutions, PReLU,
pixel-shuffle x4 plus a nearest-upsampled skip. Weights: `{WEIGHTS_FILE}`, fp32 safetensors
({check['mb']:.2f} MB). It loads offline with `spandrel.ModelLoader().load_from_file(path)` (checked at export:
architecture "{check['architecture']}", scale {check['scale']}, outputs equal to the trained model's, largest
difference {check['max_abs_diff']:.1e}), and the studio's Upscale tab lists it as the built-in upscaler. Input and
output are RGB in 0..1, any size (128 -> 512 for the built-in model).

## Training
- Command (resumable: run it again after a stop and it continues from its checkpoint):
{command}
- Seed {st['seed']}; {st['step']} steps in {st['cpu_seconds'] / 60:.1f} training CPU-minutes (budget {args.minutes:g};
  {st['wall_seconds'] / 60:.1f} wall-clock minutes on a shared CPU; held-out evaluation paused), plus
  {st.get('pool_cpu_seconds', 0) / 60:.1f} CPU-minutes rendering the image pool at each start. Hardware:
  {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU;
  `torch.set_num_threads({args.threads})`.
- Data: {args.pool} world scenes (`training/world.py`, seeds {TRAIN_SEEDS}+; every shape and pattern, the
  held-out star and dotted ones included; objects moved off the named positions half of the time) rendered at
  {HR_SIZE} px as targets. Inputs: their area-downscaled (x4) {LR_SIZE} px copies, made soft like the built-in
  model's VAE-decoded pictures: Gaussian blur (sigma 0.2-1.6 px) 60% of the time, Gaussian noise (sigma up to
  3/255) 40%, 8-bit rounding, JPEG (quality 70-95) 30%, drawn afresh for every patch. Random {args.patch} px input
  patches ({args.patch * SCALE} px targets), batch {args.batch}, random quarter-turns, flips and colour-channel
  orders.
- Objective: {args.loss.upper()}{edge_term} in 0..1 RGB; AdamW {args.lr:g} (weight decay 1e-4), {args.warmup}-step
  warm-up, cosine decay to 1% over the budget. He-initialised body, last convolution starting at zero (training
  starts from the nearest-pixel skip). Patches: up to 4 draws per patch, keeping the first that is not flat. MSE
  rather than L1: in a 400-step measurement (1.5 CPU-minutes) L1 left the network on its nearest-pixel skip (the
  skip's PSNR exactly) while MSE passed Lanczos.

## Curves
`loss.png` (training loss against CPU-minutes); `psnr.png` (PSNR on {CURVE_IMAGES} held-out scenes, clean area
downscales, against CPU-minutes, Lanczos and bicubic as flat lines):

| CPU-minutes | step | PSNR (dB) |
|---|---|---|
{curve_rows}

## Held-out scores ({args.eval_images} world scenes, seeds {HELDOUT_SEEDS}+, 128 -> 512 against the 512 px render)
Inputs are the area-downscaled (x4) renders:

{score_table(scores['clean'])}

The same scenes with softened inputs (blur/noise/JPEG as in training, fixed seed), closer to the built-in
model's pictures:

{score_table(scores['degraded'])}

PSNR over RGB (8-bit); SSIM from scikit-image (Gaussian window, sigma 1.5, over the three channels).

## Example
`example.png`: {len(prompts)} pictures made by the built-in model (20 steps, 128 px, its recommended CFG; prompts
below), as the input (shown 4x with nearest pixels), Lanczos 4x and this upscaler 4x, each a 256 px window of the 512 px
result at 1:1. There is no ground truth for these; the picture is the check.

{prompt_list}

## Licence
Trained from scratch on procedurally generated images (no third-party data or weights); it ships with AI Artist
Studio under the studio's licence.

Written {time.strftime('%Y-%m-%d %H:%M')}.
""")


def export(trainer: Trainer, out: Path, base_dir: Path) -> dict:
    """Write <out> (weights, card, curves, example, state) to a temp folder, check it with spandrel, rename."""
    from training.curves import save_loss_curve

    a, model = trainer.args, trainer.model.eval()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / WEIGHTS_FILE)
    clean, degraded = heldout_set(a.eval_images), heldout_set(a.eval_images, degraded=True)
    check = verify_export(tmp / WEIGHTS_FILE, model, clean[1][:2])
    scores = {"clean": evaluate(model, *clean), "degraded": evaluate(model, *degraded)}
    print(json.dumps(scores, indent=2), flush=True)
    work = Path(a.work_dir)
    loss = [(float(r["cpu_seconds"]) / 60, float(r["loss"])) for r in read_rows(work / "loss.csv")]
    save_loss_curve(loss, tmp / "loss.png", "Built-in upscaler training loss", "training CPU-minutes")
    curve = [(float(r["cpu_seconds"]) / 60, float(r["psnr"])) for r in read_rows(work / "psnr.csv")]
    base = evaluate(model, *heldout_set(CURVE_IMAGES), with_ssim=False)
    save_psnr_curve(curve, {"Lanczos": base["lanczos"]["psnr"], "bicubic": base["bicubic"]["psnr"]},
                    tmp / "psnr.png")
    pictures = builtin_outputs(base_dir, a.example_images) if a.example_images else []
    if pictures:
        example_sheet(model, pictures).save(tmp / "example.png", optimize=True)
    state = dict(trainer.state, scores=scores, export_check=check)
    save_json_state(state, tmp / "training_state.json")
    write_card(tmp, state, a, scores, check, [p for p, _ in pictures])
    replace_folder(tmp, out)
    return state


def parse_args(argv=None):
    p = run_parser(__doc__, "runs/upscaler", "assets/builtin-upscaler", 1)
    p.add_argument("--base", default="assets/builtin-shapes", help="the built-in model (example pictures)")
    p.add_argument("--minutes", type=float, default=30, help="training CPU-minute budget")
    p.add_argument("--steps", type=int, default=0, help="stop at this many steps (0: minutes only)")
    p.add_argument("--num-feat", type=int, default=48)
    p.add_argument("--num-conv", type=int, default=10)
    p.add_argument("--pool", type=int, default=1200, help="world scenes rendered at 512 px")
    p.add_argument("--patch", type=int, default=40, help="low-res patch side")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--loss", choices=sorted(LOSSES), default="mse")
    p.add_argument("--edge-weight", type=float, default=0.0, help="weight of the image-gradient term")
    p.add_argument("--checkpoint-minutes", type=float, default=3, help="wall-clock minutes between checkpoints")
    p.add_argument("--eval-minutes", type=float, default=3, help="CPU-minutes between PSNR points (0: none)")
    p.add_argument("--eval-images", type=int, default=64)
    p.add_argument("--example-images", type=int, default=8, help="built-in model pictures for example.png")
    p.add_argument("--no-export", dest="export", action="store_false")
    return parse_run_args(p, argv)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    trainer = Trainer(args)
    trainer.train(heldout_set(CURVE_IMAGES) if args.eval_minutes else None)
    if args.export:
        state = export(trainer, Path(args.out), Path(args.base))
        print(f"exported to {args.out}: {json.dumps(state['export_check'])}", flush=True)


if __name__ == "__main__":
    main()
