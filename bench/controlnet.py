"""ControlNet section of the benchmark: weight loads when a ControlNet joins a loaded base (and when switching
back and forth), the cost of a ControlNet image against plain txt2img beside its FLOP bound, and preprocessor
timings (first run vs cached map).

The built-in ControlNet is measured when it is installed (assets/builtin-controlnet); otherwise an untrained
ControlNet made from the built-in UNet stands in (the same architecture, so the same cost).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.common import line, services
from pipelines.controlnets import BUILTIN_CONTROLNET_DIR, BUILTIN_CONTROLNET_ID
from studio.settings import BUILTIN_MODEL_DIR

PROMPT = "a red circle on a blue background"
STEPS, SIZE, SEED = 20, 128, 11


def _controlnet_id(models_root: Path) -> str:
    """The ControlNet to measure: the built-in one, or a stand-in saved under the models folder."""
    if (BUILTIN_CONTROLNET_DIR / "config.json").exists():
        return BUILTIN_CONTROLNET_ID
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(BUILTIN_MODEL_DIR, subfolder="unet")
    ControlNetModel.from_unet(unet).save_pretrained(models_root / "ControlNet" / "stand-in")
    return "local:stand-in"


def _control_image(seed: int = 900_001):
    from training.world import render, sample_scene

    return render(sample_scene(seed), SIZE)


def bench_layouts(n: int) -> None:
    """The built-in ControlNet on `n` held-out layouts (20 steps): IoU, position, colour and shape with edge maps
    and with scribbles, beside the base model alone (the card's table, measured again)."""
    import torch
    from diffusers import ControlNetModel

    from training.train_controlnet import final_scores

    if not (BUILTIN_CONTROLNET_DIR / "config.json").exists():
        return
    net = ControlNetModel.from_pretrained(BUILTIN_CONTROLNET_DIR, torch_dtype=torch.float32)
    scores = final_scores(BUILTIN_MODEL_DIR, net, n, 20)
    keys = ("iou", "position", "colour", "shape")
    for label, row in scores.items():
        line(f"{n} held-out layouts, {label}", ", ".join(f"{k} {row[k]:.3f}" for k in keys if k in row))
    print("  targets: IoU >= 0.75, position >= 0.90, colour and shape within 0.03 of the base", flush=True)


def bench_controlnet(tmp: Path, repeats: int, layouts: int = 120) -> None:
    import torch

    from bench.flops import forward_flops
    from studio.controlnet_service import ControlNetRequest, ControlUnit
    from studio.generation_service import GenerationRequest

    studio = services(tmp)
    cn_id = _controlnet_id(studio.settings.models_root)
    label = "built-in" if cn_id == BUILTIN_CONTROLNET_ID else "untrained stand-in (built-in not installed)"
    print(f"ControlNet ({label}; {STEPS} steps, {SIZE}x{SIZE}, DPM++ 2M)", flush=True)
    plain = GenerationRequest(prompt=PROMPT, sampler="DPM++ 2M", steps=STEPS, width=SIZE, height=SIZE, seed=SEED)
    controlled = ControlNetRequest(prompt=PROMPT, sampler="DPM++ 2M", steps=STEPS, width=SIZE, height=SIZE,
                                   seed=SEED, units=[ControlUnit(image=_control_image(), preprocessor="canny",
                                                                 model=cn_id, pixel_perfect=True)])
    for _ in range(2):  # warm both paths
        studio.generation.generate(plain)
    loads = studio.models.stats().loads
    studio.controlnet.generate(controlled)
    added = studio.models.stats().loads - loads
    studio.controlnet.generate(controlled)
    loads = studio.models.stats().loads
    for _ in range(2):
        studio.generation.generate(plain)
        studio.controlnet.generate(controlled)
    switching = studio.models.stats().loads - loads
    line("weight loads when adding the ControlNet", f"{added} (target 1: the ControlNet only)")
    line("weight loads, txt2img <-> ControlNet x2", f"{switching} (target 0)")

    plain_t, cn_t = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        studio.generation.generate(plain)
        plain_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        studio.controlnet.generate(controlled)
        cn_t.append(time.perf_counter() - t0)
    p, c = statistics.median(plain_t), statistics.median(cn_t)
    line("plain txt2img", f"{p:.3f} s")
    line("with one ControlNet unit", f"{c:.3f} s")

    from diffusers import ControlNetModel, UNet2DConditionModel

    from pipelines.controlnets import resolve_controlnet

    unet = UNet2DConditionModel.from_pretrained(BUILTIN_MODEL_DIR, subfolder="unet")
    net = ControlNetModel.from_pretrained(resolve_controlnet(cn_id, studio.controlnet.controlnet_dir).location)
    latents = torch.randn(2, unet.config.in_channels, SIZE // 8, SIZE // 8)
    text = torch.randn(2, 77, unet.config.cross_attention_dim)
    t = torch.tensor([500, 500])
    unet_flops = forward_flops(unet, latents, t, encoder_hidden_states=text)
    cn_flops = forward_flops(net, latents, t, encoder_hidden_states=text,
                             controlnet_cond=torch.zeros(2, 3, SIZE, SIZE))
    line("cost ControlNet/plain (bound 1+CN/UNet FLOP)", f"{c / p:.3f} (bound {1 + cn_flops / unet_flops:.3f})")

    image = _control_image(900_002)  # not yet seen by the preprocessors
    for name in ("canny", "scribble_xdog", "shuffle"):
        first = studio.controlnet.preprocessors.run(name, image, resolution=SIZE)
        t0 = time.perf_counter()
        again = studio.controlnet.preprocessors.run(name, image, resolution=SIZE)
        cached = time.perf_counter() - t0
        line(f"preprocessor {name}: first / cached", f"{first.seconds * 1000:.1f} ms / {cached * 1000:.3f} ms"
             f"{'' if again.cached else ' (not cached!)'}")
    studio.training.shutdown()
    bench_layouts(layouts)
