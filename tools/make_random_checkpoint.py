"""Build a random-weight model of a real architecture (default: SD 1.5, from the bundled v1 config folder) and
save it twice, as an A1111 user would have it and as a diffusers folder, with identical weights:

    <out>/Stable-diffusion/<name>/                 diffusers folder (save_pretrained, safetensors)
    <out>/Stable-diffusion/<name>.safetensors      A1111 single file (original LDM keys)

    .venv/bin/python tools/make_random_checkpoint.py /tmp/real-size-models [--name random-sd15] [--seed 0]

<out> is then a models folder the studio can be pointed at (--models-dir <out>). At SD 1.5 size (859.5 M UNet,
123.1 M text encoder, 83.7 M VAE, the real 49408-token CLIP vocabulary) it takes a few minutes and about 7 GB of
RAM; the weights are stored in float16 (2.1 GB per copy), as most A1111 checkpoints are.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

from pipelines.ldm_keys import pipeline_to_ldm
from pipelines.single_file import CONFIGS_DIR, family_tokenizer

OPEN_CLIP_FAMILIES = ("v2", "v2_base", "inpainting_v2", "sd_turbo")


def random_pipeline(folder: Path, configs_dir: Path, seed: int = 0):
    """A diffusers pipeline with randomly initialised weights from a config-only folder."""
    import diffusers
    import torch
    import transformers

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    cls = getattr(diffusers, index["_class_name"])
    accepted = inspect.signature(cls.__init__).parameters
    components = {}
    torch.manual_seed(seed)
    for name, spec in sorted(index.items()):
        if name.startswith("_") or not isinstance(spec, list) or name not in accepted:
            continue
        library, class_name = spec
        if library is None:
            components[name] = None
        elif class_name == "CLIPTokenizer":
            components[name] = family_tokenizer(folder, name, configs_dir)
        elif library == "transformers":
            model_cls = getattr(transformers, class_name)
            components[name] = model_cls(model_cls.config_class.from_pretrained(str(folder / name)))
        else:
            config = json.loads(next((folder / name).glob("*config.json")).read_text(encoding="utf-8"))
            components[name] = getattr(diffusers, class_name).from_config(config)
    if "requires_safety_checker" in accepted:
        components["requires_safety_checker"] = False
    return cls(**components)


def make_random_checkpoint(out: Path, name: str = "random-sd15", family: str = "v1", seed: int = 0,
                           dtype: str = "float16", configs_dir: Path | None = None) -> tuple[Path, Path]:
    """Write the diffusers folder and the A1111 single file; returns (folder, file)."""
    import torch
    from safetensors.torch import save_file

    configs_dir = Path(configs_dir or CONFIGS_DIR)
    target = Path(out) / "Stable-diffusion"
    target.mkdir(parents=True, exist_ok=True)
    pipe = random_pipeline(configs_dir / family, configs_dir, seed)
    pipe.to(getattr(torch, dtype))
    folder, single = target / name, target / f"{name}.safetensors"
    pipe.save_pretrained(folder, safe_serialization=True)
    ldm = pipeline_to_ldm(pipe, open_clip_text_encoder=family in OPEN_CLIP_FAMILIES)
    save_file(ldm, str(single), metadata={"format": "pt"})
    return folder, single


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="models folder to write into (Stable-diffusion/ is created)")
    parser.add_argument("--name", default="random-sd15")
    parser.add_argument("--family", default="v1", help="a folder under assets/model-configs (default v1: SD 1.5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32", "bfloat16"))
    args = parser.parse_args(argv)
    start = time.perf_counter()
    folder, single = make_random_checkpoint(args.out, args.name, args.family, args.seed, args.dtype)
    size = single.stat().st_size / 1e9
    print(f"wrote {folder} and {single} ({size:.2f} GB) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
