"""The project's benchmark: ratios measured side by side in one run.

    python -m bench [--quick] [--skip adherence,gallery,coldstart]   (./launch.sh bench [...])

Prints: studio txt2img vs raw diffusers (wall-time ratio, pixel identity), cache hit vs cold load, ControlNet
(weight loads, cost vs plain txt2img beside its FLOP bound, preprocessor timings), mode
switching cost, cold start of app.py to first served page, the gallery at 1,000,000 images, importing 100k other
tools' PNGs into the gallery, and the built-in
model's prompt adherence on the held-out prompt set, the LoRA proof (teaching it the held-out "star"), and
curation (scoring speed, de-dup of 10,000 hashes, blur / degradation / near-duplicate quality on real photos),
and upscaling (an upscaler's cold load vs cache hit, tiled vs untiled with the seam, images/s 128 -> 512).
Beside the generation and LoRA training times: the UNet's FLOP rate as a share of this CPU's matmul peak.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from bench.common import line as _line
from bench.common import services as _services
from bench.controlnet import bench_controlnet
from bench.curation import bench_curation
from bench.gallery_import import bench_gallery_import
from bench.lora_proof import LORA_RECIPE_FLAGS, LoraProofRecipe, bench_lora
from bench.real_size import bench_real_size
from bench.upscale import bench_upscale
from studio.settings import BUILTIN_MODEL_DIR, PROJECT_ROOT


def bench_generation(tmp: Path, repeats: int) -> None:
    import numpy as np
    import torch
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from bench.flops import CallRecorder, forward_flops, matmul_peak, share_of_peak
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
    with CallRecorder(raw.unet) as unet_calls:  # the UNet's calls per image, and one call's inputs
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
    # both paths make the same UNet calls (same sampler, steps and CFG); the studio's run a frozen graph of it
    unet_flops = forward_flops(raw.unet, *unet_calls.args, **unet_calls.kwargs)
    peak = matmul_peak(torch.float32)
    _line(f"UNet GFLOP per call (batch {len(unet_calls.args[0])} with CFG), calls",
          f"{unet_flops / 1e9:.2f}, {unet_calls.calls}")
    _line("UNet FLOP rate / matmul peak (studio)", share_of_peak(unet_flops, unet_calls.calls, s, peak))
    _line("UNet FLOP rate / matmul peak (raw diffusers)", share_of_peak(unet_flops, unet_calls.calls, r, peak))


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
    bench_model_hash(tmp, BUILTIN_MODEL_DIR / "unet" / "diffusion_pytorch_model.safetensors")


def bench_model_hash(tmp: Path, weights: Path) -> None:
    """The infotext's model hash: computed once per file, then read from the data dir's cache (a restart too)."""
    from pipelines.model_hashes import HashCache

    cache_file = tmp / "hashes" / "model_hashes.json"
    t0 = time.perf_counter()
    HashCache(cache_file).autov2(weights)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    HashCache(cache_file).autov2(weights)  # a new instance, as after a restart
    cached = time.perf_counter() - t0
    size_mb = weights.stat().st_size / 2**20
    _line(f"model hash ({size_mb:.0f} MB file): cold / cached", f"{cold * 1000:.1f} ms / {cached * 1000:.2f} ms")


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
    from bench.store import bench_gallery as run

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


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, LoraProofRecipe]:
    """The command line, and the LoRA proof's recipe it sets (--quick: a 1-minute proof)."""
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats, 10k gallery, 40 prompts")
    p.add_argument("--gallery-records", type=int, default=None,
                   help="synthetic gallery records (default 1,000,000; 10,000 with --quick)")
    p.add_argument("--skip", default="", help="comma list of: generation,cache,controlnet,coldstart,gallery,"
                                              "import,adherence,lora,curation,upscale")
    p.add_argument("--import-images", type=int, default=None,
                   help="PNGs for the gallery import section (default 100,000; 10,000 with --quick)")
    p.add_argument("--real-size", action="store_true",
                   help="also run the opt-in real-size section (random SD 1.5, folder vs single file; ~7 GB RAM)")
    p.add_argument("--real-size-dir", type=Path, default=None,
                   help="where the real-size section keeps its 4 GB of model files between runs")
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
        skip |= {"generation", "cache", "controlnet", "adherence", "lora"}
        print("built-in model not installed: generation, cache and adherence skipped")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        sections = [
            ("generation", lambda: bench_generation(tmp / "g", 3 if args.quick else 7)),
            ("cache", lambda: bench_cache(tmp / "c")),
            ("controlnet", lambda: bench_controlnet(tmp / "cn", 3 if args.quick else 7, 24 if args.quick else 120)),
            ("coldstart", lambda: bench_cold_start(tmp)),
            ("gallery", lambda: bench_gallery(tmp, args.gallery_records or (10_000 if args.quick else 1_000_000))),
            ("import", lambda: bench_gallery_import(tmp / "imp", args.import_images or (10_000 if args.quick
                                                                                      else 100_000))),
            ("adherence", lambda: bench_adherence(tmp / "a", 40 if args.quick else None)),
            ("lora", lambda: bench_lora(tmp / "l", recipe)),
            ("curation", lambda: bench_curation(tmp / "cu", args.quick)),
            ("upscale", lambda: bench_upscale(tmp / "up", 128, 2 if args.quick else 5)),
        ]
        if args.real_size:
            sections.append(("real-size", lambda: bench_real_size(tmp, args.real_size_dir)))
        for name, run in sections:
            if name not in skip:
                run()


if __name__ == "__main__":
    main()
