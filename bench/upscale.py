"""Benchmark section "upscale": an upscaler's cold load against a cache hit, tiled against untiled inference with
the seam it leaves, images per second from `size` to 4x for Lanczos and for a model (the built-in upscaler when it
is trained, else a tiny random Compact net), the cost of choosing a tile size from the memory budget, and the
built-in upscaler's PSNR / SSIM on held-out shapes-world scenes beside Lanczos and bicubic."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from bench.common import line


def _tiny_compact(path: Path, scale: int) -> Path:
    import torch
    from safetensors.torch import save_file
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=scale)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    return path


def _source(studio, size: int) -> str:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(3)
    rel = "outputs/bench-upscale-source.png"
    path = studio.settings.data_dir / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return studio.gallery.add({"path": rel, "prompt": "bench source"})


def _rate(studio, req, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        studio.upscale.upscale(req)
        times.append(time.perf_counter() - t0)
    return len(req.ids) / statistics.median(times)


def bench_upscale(tmp: Path, size: int = 128, repeats: int = 3) -> None:
    import torch

    from bench.common import services
    from pipelines.tiling import choose_tile_size, measure_seam, tiled_upscale
    from pipelines.upscalers import BUILTIN_UPSCALER_ID, load_upscaler, tile_budget
    from studio.upscale_service import UpscaleRequest

    studio = services(tmp)
    folder = studio.upscale.upscaler_dir
    _tiny_compact(folder / "bench-compact-2x.safetensors", 2)
    _tiny_compact(folder / "bench-compact-4x.safetensors", 4)
    builtin = any(s.name == BUILTIN_UPSCALER_ID for s in studio.upscale.upscalers())
    model_name = BUILTIN_UPSCALER_ID if builtin else "bench-compact-4x.safetensors"
    source = _source(studio, size)
    print(f"Upscale ({size}x{size} -> x4, {studio.upscale.device.device})", flush=True)

    req = UpscaleRequest(upscaler="bench-compact-2x.safetensors", scale=2, ids=[source])
    for label in ("cold load", "cache hit"):
        before = studio.models.cache.stats()
        t0 = time.perf_counter()
        studio.upscale.upscale(req)
        took, after = time.perf_counter() - t0, studio.models.cache.stats()
        line(f"{label} + upscale (ms, loads)", f"{took * 1000:.1f} ms, {after.loads - before.loads} load(s), "
             f"load {(after.load_seconds - before.load_seconds) * 1000:.1f} ms")

    model = load_upscaler(folder / "bench-compact-2x.safetensors")
    image = torch.rand(1, 3, size, size)
    tile = max(32, size // 2)

    def median_ms(fn) -> float:
        times = []
        for _ in range(max(1, repeats)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times) * 1000

    with torch.inference_mode():
        model(image)  # warm
        whole = median_ms(lambda: model(image))
        tiled = median_ms(lambda: tiled_upscale(model, image, 2, tile, 16))
        seam = measure_seam(model, image, 2, tile, 16)
    line(f"untiled / tiled ({tile} px tiles, overlap 16)", f"{whole:.1f} ms / {tiled:.1f} ms "
         f"(ratio {tiled / whole:.2f})")
    line("seam: max / mean |tiled - untiled| (0..1)", f"{seam.max_abs:.2e} / {seam.mean_abs:.2e}")
    line("seam: gradient on tile edges, tiled/untiled", f"{seam.ratio:.3f} (1 = no seam)")

    for name in ("Lanczos", model_name):
        rate = _rate(studio, UpscaleRequest(upscaler=name, scale=4, ids=[source]), repeats)
        line(f"images/s {size}->{size * 4}, {name}", f"{rate:.2f}")

    budget, per_pixel = tile_budget(model.device), model.bytes_per_input_pixel()
    t0 = time.perf_counter()
    for _ in range(1000):
        choose_tile_size(budget, model.bytes_per_input_pixel(), 4096, 4096)
    chosen = choose_tile_size(budget, per_pixel, 4096, 4096)
    line("tile size from budget (per choice)", f"{(time.perf_counter() - t0) * 1000:.3f} µs -> {chosen} px "
         f"for 4096x4096 ({budget / 2**20:.0f} MiB, {per_pixel:.0f} B/px)")
    if builtin:
        bench_builtin_quality(studio.upscale.upscalers(), 16 if repeats < 5 else 64)
    studio.queue.shutdown(wait=False)
    studio.training.shutdown()


def bench_builtin_quality(upscalers, scenes: int) -> None:
    """The built-in upscaler on held-out shapes-world scenes (128 -> 512 against the 512 px render), clean and
    softened like the built-in model's pictures: PSNR / SSIM beside Lanczos and bicubic on the same images."""
    from pipelines.upscalers import BUILTIN_UPSCALER_ID, load_upscaler
    from training.train_upscaler import evaluate, heldout_set

    path = next(s.path for s in upscalers if s.name == BUILTIN_UPSCALER_ID)
    model = load_upscaler(path).descriptor.model  # as the studio loads it
    for label, degraded in (("clean", False), ("softened", True)):
        scores = evaluate(model, *heldout_set(scenes, degraded))
        line(f"built-in upscaler, {scenes} held-out scenes ({label}): PSNR / SSIM",
             f"{scores['model']['psnr']:.2f} dB / {scores['model']['ssim']:.4f} (Lanczos "
             f"{scores['lanczos']['psnr']:.2f} / {scores['lanczos']['ssim']:.4f}, bicubic "
             f"{scores['bicubic']['psnr']:.2f} / {scores['bicubic']['ssim']:.4f})")
