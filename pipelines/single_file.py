"""A1111 single-file checkpoints (one `.safetensors` with the original LDM keys), loaded offline.

diffusers' `from_single_file` needs the model family's diffusers configs; without `config=` it fetches them from
the Hugging Face Hub, even with `local_files_only=True`. The studio ships config-only folders for every family
diffusers recognises (assets/model-configs/<family>/, written by tools/build_model_configs.py), detects the
family from the file's header the way diffusers does, and always loads with `config=<that folder>` and
`local_files_only=True`: no network, online or not.

The family, in order of precedence:
1. `family=` given by the caller (tests, tools);
2. A1111's `<checkpoint name>.yaml` beside the file, mapped to a family by its contents (UNet in_channels and
   context_dim, `parameterization: "v"`), its prediction type and latent scale factor applied to the loaded
   pipeline. The yaml is read here rather than passed to diffusers as `original_config`: with `config=` given,
   diffusers still takes the scheduler from the config folder, so the yaml's v-prediction would be lost, and
   the UNet/VAE configs it derives from a yaml drop settings the bundled folders carry (SD 2.1's
   upcast_attention). Mapping keeps every component on the checked, offline configs;
3. the header's keys and shapes through diffusers' `infer_diffusers_model_type`; "turbo" in the file name picks
   the Turbo variant of SD 2.x / SDXL (their weights look the same; only the scheduler differs), and an SD 2.x
   file without a yaml is tested for v-prediction the way A1111 does (one UNet call on a constant input).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "assets" / "model-configs"
SHARED_TOKENIZER = "clip-tokenizer"

UNET_KEY = "model.diffusion_model."
VAE_KEYS = ("first_stage_model.", "vae.")
TEXT_KEYS = ("cond_stage_model.", "conditioner.embedders.")
IN_KEY = "model.diffusion_model.input_blocks.0.0.weight"


@dataclass(frozen=True)
class Family:
    name: str  # folder under assets/model-configs, diffusers' model type where it has one
    label: str
    pipeline: str  # diffusers pipeline class the studio loads it as (txt2img class; inpaint derived by from_pipe)
    context_dim: int
    in_channels: int = 4

    @property
    def base(self) -> str:
        """The studio's coarse family: "sd" or "sdxl"."""
        return "sdxl" if self.pipeline.startswith("StableDiffusionXL") else "sd"


FAMILIES = {f.name: f for f in (
    Family("v1", "SD 1.x", "StableDiffusionPipeline", 768),
    Family("inpainting", "SD 1.x inpainting", "StableDiffusionPipeline", 768, 9),
    Family("v2", "SD 2.x 768 v-prediction", "StableDiffusionPipeline", 1024),
    Family("v2_base", "SD 2.x 512 base", "StableDiffusionPipeline", 1024),
    Family("inpainting_v2", "SD 2.x inpainting", "StableDiffusionPipeline", 1024, 9),
    Family("sd_turbo", "SD-Turbo", "StableDiffusionPipeline", 1024),
    Family("xl_base", "SDXL", "StableDiffusionXLPipeline", 2048),
    Family("xl_inpaint", "SDXL inpainting", "StableDiffusionXLPipeline", 2048, 9),
    Family("sdxl_turbo", "SDXL-Turbo", "StableDiffusionXLPipeline", 2048),
    Family("xl_refiner", "SDXL refiner", "StableDiffusionXLImg2ImgPipeline", 1280),
)}
TURBO = {"v2": "sd_turbo", "v2_base": "sd_turbo", "xl_base": "sdxl_turbo"}


class SingleFileError(ValueError):
    """A single-file checkpoint that cannot be used: unreadable, not a checkpoint, or an unknown family."""


@dataclass(frozen=True)
class Resolved:
    family: Family
    source: str  # "forced" | "yaml" | "keys"
    prediction_type: str | None = None  # from the yaml; None keeps the family's scheduler
    scale_factor: float | None = None  # from the yaml
    probe_v_prediction: bool = False  # SD 2.x by keys: test the UNet for v-prediction after loading


# ---- the header ------------------------------------------------------------------------------------------
def read_header(path: Path) -> dict:
    """Every tensor's name -> an empty tensor of its shape on the meta device, read from the safetensors header
    only (no weights are read); a truncated or non-safetensors file raises SingleFileError."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: torch.empty(fh.get_slice(k).get_shape(), device="meta") for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise SingleFileError(f"model file {path.name} is not a readable .safetensors checkpoint "
                              f"(truncated or not a safetensors file): {exc}") from exc


def unet_shape(header: dict) -> tuple[int | None, int | None]:
    """(in_channels, context_dim) of the LDM UNet in a header, None where absent."""
    in_channels = header[IN_KEY].shape[1] if IN_KEY in header and header[IN_KEY].ndim == 4 else None
    context = next((v.shape[-1] for k, v in header.items()
                    if k.startswith(UNET_KEY) and k.endswith("attn2.to_k.weight")), None)
    return in_channels, context


def _prefix(key: str) -> str:
    """The part of a tensor name that says which model it belongs to (model.diffusion_model.*, first_stage_model.*,
    conditioner.embedders.0.*, ...)."""
    parts = key.split(".")
    depth = {"model": 2, "cond_stage_model": 2, "conditioner": 3}.get(parts[0], 1)
    return ".".join(parts[:depth]) + ".*" if len(parts) > depth else key


def describe(header: dict) -> str:
    """What a header holds, for error messages: its key prefixes and the UNet's in_channels / context_dim."""
    prefixes = Counter(_prefix(k) for k in header)
    listed = ", ".join(f"{p} ({n})" for p, n in prefixes.most_common(6)) or "no tensors"
    more = f" and {len(prefixes) - 6} more prefixes" if len(prefixes) > 6 else ""
    in_channels, context = unet_shape(header)
    unet = (f"UNet in_channels={in_channels}, context_dim={context}" if in_channels is not None
            else "no LDM UNet (model.diffusion_model.*)")
    return f"{len(header)} tensors: {listed}{more}; {unet}"


def detect_family(path: Path, header: dict | None = None) -> str:
    """The family name of a checkpoint from its keys and shapes (diffusers' infer_diffusers_model_type), checked
    for a UNet, VAE and text encoder; "turbo" in the file name picks the Turbo variant."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type

    path = Path(path)
    header = read_header(path) if header is None else header
    if not any(k.startswith(UNET_KEY) for k in header):
        raise SingleFileError(f"model file {path.name} holds no Stable Diffusion UNet weights; found "
                              f"{describe(header)}")
    try:
        model_type = infer_diffusers_model_type(header)
    except Exception:  # noqa: BLE001  a family diffusers checks by values, which a header does not have
        model_type = None
    if model_type == "v1" and CHECKPOINT_KEY_NAMES["v1"] not in header:
        model_type = None  # diffusers' fallback when nothing matched
    family = FAMILIES.get(model_type)
    in_channels, context = unet_shape(header)
    if family is None or (family.in_channels, family.context_dim) != (in_channels, context):
        kind = f" ({model_type!r} in diffusers' terms)" if model_type and family is None else ""
        raise SingleFileError(f"model file {path.name}{kind} is not a Stable Diffusion 1.x/2.x/SDXL checkpoint "
                              f"the studio knows; found {describe(header)}")
    missing = [what for what, prefixes in (("VAE", VAE_KEYS), ("text encoder", TEXT_KEYS))
               if not any(k.startswith(prefixes) for k in header)]
    if missing:
        raise SingleFileError(f"model file {path.name} ({family.label}) holds no {' and no '.join(missing)} "
                              f"weights; found {describe(header)}")
    if "turbo" in path.name.lower() and family.name in TURBO:
        return TURBO[family.name]
    return family.name


# ---- A1111's <name>.yaml ---------------------------------------------------------------------------------
def yaml_beside(path: Path) -> Path | None:
    """A1111's per-checkpoint config: the checkpoint's name with .yaml, in the same folder."""
    candidate = Path(path).with_suffix(".yaml")
    return candidate if candidate.is_file() else None


def read_original_config(yaml_path: Path) -> dict:
    """What an original (LDM/SGM) inference yaml says: in_channels, context_dim, prediction_type, scale_factor."""
    import yaml

    try:
        config = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8"))
        params = config["model"]["params"]
        unet = (params.get("unet_config") or params.get("network_config"))["params"]
    except Exception as exc:
        raise SingleFileError(f"{Path(yaml_path).name} is not an original Stable Diffusion config "
                              f"(model.params.unet_config or network_config): {exc}") from exc
    context = unet.get("context_dim")
    context = context[0] if isinstance(context, list) else context
    v_prediction = (params.get("parameterization") == "v"
                    or "VScaling" in json.dumps(params.get("denoiser_config") or {}))
    return {"in_channels": unet.get("in_channels"), "context_dim": context,
            "prediction_type": "v_prediction" if v_prediction else "epsilon",
            "scale_factor": params.get("scale_factor")}


def family_from_yaml(yaml_path: Path) -> tuple[str, dict]:
    """The family an original yaml describes, and the yaml's settings (read_original_config)."""
    found = read_original_config(yaml_path)
    in_channels, context, v = found["in_channels"], found["context_dim"], found["prediction_type"] == "v_prediction"
    table = {(768, 4): "v1", (768, 9): "inpainting", (1024, 4): "v2" if v else "v2_base",
             (1024, 9): "inpainting_v2", (2048, 4): "xl_base", (2048, 9): "xl_inpaint", (1280, 4): "xl_refiner"}
    family = table.get((context, in_channels))
    if family is None:
        raise SingleFileError(f"{Path(yaml_path).name} describes a UNet with in_channels={in_channels}, "
                              f"context_dim={context}: not a Stable Diffusion 1.x/2.x/SDXL family")
    return family, found


def resolve_family(path: Path, family: str | None = None, header: dict | None = None) -> Resolved:
    """Which family and settings a checkpoint loads with (forced > A1111 yaml > keys; see the module doc)."""
    path = Path(path)
    yaml_path = yaml_beside(path)
    found = read_original_config(yaml_path) if yaml_path else {}
    settings = {"prediction_type": found.get("prediction_type"), "scale_factor": found.get("scale_factor")}
    if family is not None:
        if family not in FAMILIES:
            raise SingleFileError(f"unknown model family {family!r}; known: {', '.join(FAMILIES)}")
        return Resolved(FAMILIES[family], "forced", **settings)
    header = read_header(path) if header is None else header
    detected = detect_family(path, header)
    if yaml_path:
        named, _ = family_from_yaml(yaml_path)
        if FAMILIES[named].context_dim != FAMILIES[detected].context_dim or \
                FAMILIES[named].in_channels != FAMILIES[detected].in_channels:
            raise SingleFileError(f"{yaml_path.name} describes {FAMILIES[named].label} but {path.name} holds "
                                  f"{FAMILIES[detected].label} weights ({describe(header)})")
        if detected in ("sd_turbo", "sdxl_turbo") and named in TURBO:
            named = detected
        return Resolved(FAMILIES[named], "yaml", **settings)
    return Resolved(FAMILIES[detected], "keys", probe_v_prediction=detected == "v2")


# ---- loading ---------------------------------------------------------------------------------------------
def family_tokenizer(folder: Path, name: str, configs_dir: Path):
    """The family's CLIP tokenizer: its own folder when it holds a vocabulary, otherwise the shared CLIP BPE
    vocabulary with the family's pad token (from its special_tokens_map.json)."""
    from transformers import CLIPTokenizer

    own = folder / name
    if (own / "vocab.json").is_file():
        return CLIPTokenizer.from_pretrained(str(own))
    specials = json.loads((own / "special_tokens_map.json").read_text(encoding="utf-8"))
    pad = specials.get("pad_token", "<|endoftext|>")
    pad = pad.get("content") if isinstance(pad, dict) else pad
    return CLIPTokenizer.from_pretrained(str(Path(configs_dir) / SHARED_TOKENIZER), pad_token=pad)


def uses_v_prediction(unet) -> bool:
    """A1111's test for SD 2.x: a v-prediction UNet, given a constant latent at the last timestep, predicts
    far below the input (mean difference < -1); an epsilon one does not."""
    import torch

    param = next(unet.parameters())
    with torch.no_grad():
        x = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=param.dtype, device=param.device)
        cond = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=param.dtype, device=param.device)
        out = unet(x, torch.tensor([999], device=param.device), encoder_hidden_states=cond).sample
    return (out.float() - x.float()).mean().item() < -1


def _apply_settings(pipe, resolved: Resolved, configs_dir: Path):
    """The yaml's prediction type and latent scale, or the v-prediction test's verdict, on a loaded pipeline."""
    import diffusers

    prediction_type, scale = resolved.prediction_type, resolved.scale_factor
    if resolved.probe_v_prediction and not uses_v_prediction(pipe.unet):
        base = Path(configs_dir) / "v2_base"
        scheduler = json.loads((base / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))
        pipe.scheduler = getattr(diffusers, scheduler["_class_name"]).from_config(scheduler)
        unet = json.loads((base / "unet" / "config.json").read_text(encoding="utf-8"))
        pipe.unet.register_to_config(sample_size=unet["sample_size"])
    if prediction_type and pipe.scheduler.config.get("prediction_type", "epsilon") != prediction_type:
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=prediction_type)
    if scale and abs(float(scale) - float(pipe.vae.config.scaling_factor)) > 1e-9:
        pipe.vae.register_to_config(scaling_factor=float(scale))
    return pipe


def load_single_file(path: Path, torch_dtype=None, family: str | None = None, configs_dir: Path | None = None):
    """Load an A1111 single-file checkpoint as a diffusers pipeline, offline, with the bundled configs.

    `family` forces a family (a folder name under `configs_dir`); `configs_dir` defaults to the bundled
    assets/model-configs. Raises SingleFileError naming what the file holds when it cannot be used."""
    import diffusers

    path = Path(path)
    configs_dir = Path(configs_dir or CONFIGS_DIR)
    if not path.is_file():
        raise SingleFileError(f"model file {path} does not exist")
    resolved = resolve_family(path, family)
    folder = configs_dir / resolved.family.name
    if not (folder / "model_index.json").is_file():
        raise SingleFileError(f"no bundled configs for {resolved.family.label} at {folder}; run "
                              "tools/build_model_configs.py")
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    components = {name: family_tokenizer(folder, name, configs_dir) for name in ("tokenizer", "tokenizer_2")
                  if (index.get(name) or [None])[0] is not None}
    cls = getattr(diffusers, resolved.family.pipeline)
    pipe = cls.from_single_file(str(path), config=str(folder), local_files_only=True, torch_dtype=torch_dtype,
                                **components)
    return _apply_settings(pipe, resolved, configs_dir)
