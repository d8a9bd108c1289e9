"""The real-size section (opt-in: about 7 GB of RAM and 10+ minutes on a CPU): a random-weight SD 1.5-architecture
model, as a diffusers folder and as an A1111 single file, loaded and run by the studio and by plain diffusers.

Each of the four runs (studio / plain diffusers x folder / single file) is a fresh process, so "cold" is what a
person sees after starting the studio: load, then the first 512x512 4-step image; "warm" is the second image.
Printed: load time, cold and warm image time as studio/plain ratios, the largest pixel difference, each run's peak
RSS, and the model hash's cold and cached time.

    python -m bench --only real-size [--real-size-dir DIR]     (DIR keeps the 4 GB of model files between runs)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.common import line

PROMPT = "a photo of a red car at night"
SIZE, STEPS, SEED = 512, 4, 7
VARIANTS = ("plain:folder", "studio:folder", "plain:file", "studio:file")


def ensure_models(folder: Path) -> tuple[Path, Path]:
    """The random SD 1.5 model as (diffusers folder, single file), made once under `folder`."""
    from tools.make_random_checkpoint import make_random_checkpoint

    model_dir = folder / "Stable-diffusion" / "random-sd15"
    single = folder / "Stable-diffusion" / "random-sd15.safetensors"
    if not (model_dir / "model_index.json").exists() or not single.exists():
        make_random_checkpoint(folder)
    return model_dir, single


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_variant(variant: str, models: Path, out: Path) -> dict:
    """One run in this process: load, a cold image, a warm image; the image is saved to `out`."""
    import torch

    who, kind = variant.split(":")
    folder, single = models / "Stable-diffusion" / "random-sd15", models / "Stable-diffusion" / "random-sd15.safetensors"
    t0 = time.perf_counter()
    if who == "plain":
        import diffusers

        from pipelines.single_file import CONFIGS_DIR, family_tokenizer

        if kind == "folder":
            pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32,
                                                                     local_files_only=True)
        else:
            # the bundled config folders share one CLIP vocabulary, so the tokenizer is built and passed
            pipe = diffusers.StableDiffusionPipeline.from_single_file(
                single, config=str(CONFIGS_DIR / "v1"), tokenizer=family_tokenizer(CONFIGS_DIR / "v1", "tokenizer",
                                                                                  CONFIGS_DIR),
                torch_dtype=torch.float32, local_files_only=True)
        pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)  # the studio's "Euler"
        pipe.set_progress_bar_config(disable=True)
        loaded = time.perf_counter() - t0

        def image():
            return pipe(PROMPT, num_inference_steps=STEPS, width=SIZE, height=SIZE, guidance_scale=7.0,
                        generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    else:
        from studio.generation_service import GenerationRequest
        from studio.services import build_services
        from studio.settings import Settings

        services = build_services(Settings(data_dir=out / f"data-{kind}", models_dir=models, offline=True,
                                           device="cpu", dtype="float32"))
        model_id = "local:random-sd15" if kind == "folder" else "local:random-sd15.safetensors"
        with services.models.pipeline(model_id):
            pass
        loaded = time.perf_counter() - t0
        req = GenerationRequest(prompt=PROMPT, model=model_id, sampler="Euler", steps=STEPS, width=SIZE,
                                height=SIZE, seed=SEED, cfg_scale=7.0, cfg_rescale=0.0)

        def image():
            return services.generation.generate(req).images[0].image
    t1 = time.perf_counter()
    first = image()
    cold = time.perf_counter() - t1 + loaded
    t2 = time.perf_counter()
    image()
    warm = time.perf_counter() - t2
    first.save(out / f"{who}-{kind}.png")
    return {"load": loaded, "cold": cold, "warm": warm, "rss_mb": _peak_rss_mb()}


def bench_real_size(tmp: Path, models_dir: Path | None = None) -> None:
    import numpy as np
    from PIL import Image

    from pipelines.model_hashes import HashCache

    print("Real size (random-weight SD 1.5: diffusers folder and A1111 single file; 512x512, 4 steps, Euler)",
          flush=True)
    models = Path(models_dir) if models_dir else tmp / "real-size-models"
    t0 = time.perf_counter()
    _, single = ensure_models(models)
    line("model files ready", f"{time.perf_counter() - t0:.1f} s")
    out = tmp / "real-size-out"
    out.mkdir(parents=True, exist_ok=True)
    results = {}
    for variant in VARIANTS:
        done = subprocess.run([sys.executable, "-m", "bench.real_size", variant, str(models), str(out)],
                              capture_output=True, text=True, check=False)
        if done.returncode:
            print(done.stderr[-3000:], file=sys.stderr)
            raise RuntimeError(f"real-size run {variant} failed")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    for kind in ("folder", "file"):
        plain, studio = results[f"plain:{kind}"], results[f"studio:{kind}"]
        a = np.asarray(Image.open(out / f"plain-{kind}.png"), dtype=int)
        b = np.asarray(Image.open(out / f"studio-{kind}.png"), dtype=int)
        name = "diffusers folder" if kind == "folder" else "single file"
        line(f"{name}: load studio / plain", f"{studio['load']:.1f} s / {plain['load']:.1f} s "
                                              f"({studio['load'] / plain['load']:.2f})")
        line(f"{name}: cold image ratio (target <= 1.10)", f"{studio['cold'] / plain['cold']:.3f} "
                                                            f"({studio['cold']:.1f} s / {plain['cold']:.1f} s)")
        line(f"{name}: warm image ratio (target <= 1.05)", f"{studio['warm'] / plain['warm']:.3f} "
                                                            f"({studio['warm']:.1f} s / {plain['warm']:.1f} s)")
        line(f"{name}: largest pixel difference (0..255)", f"{int(np.abs(a - b).max())}")
        line(f"{name}: peak RSS studio / plain", f"{studio['rss_mb'] / 1024:.2f} GB / {plain['rss_mb'] / 1024:.2f} GB")
    folder_png = np.asarray(Image.open(out / "plain-folder.png"), dtype=int)
    file_png = np.asarray(Image.open(out / "plain-file.png"), dtype=int)
    line("folder vs single file, plain (0..255)", f"{int(np.abs(folder_png - file_png).max())}")
    cache_dir = out / "hash-cache"
    t0 = time.perf_counter()
    HashCache(cache_dir / "model_hashes.json").autov2(single)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    HashCache(cache_dir / "model_hashes.json").autov2(single)  # a new instance: a restart
    cached = time.perf_counter() - t0
    line("model hash of the 2 GB file: cold / cached", f"{cold:.2f} s / {cached * 1000:.2f} ms")


if __name__ == "__main__":  # one run, in its own process: variant, models dir, output dir
    print(json.dumps(run_variant(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))))
