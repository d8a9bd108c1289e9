"""ControlNet models: where they come from, whether one fits a base model, loading, and A1111's control modes.

ControlNet ids:
  builtin:shapes-controlnet       the built-in model's ControlNet (assets/builtin-controlnet, a diffusers folder)
  local:<path under ControlNet/>   a diffusers folder (config.json + .safetensors) or a single-file .safetensors
  hf:<owner>/<name>                a Hugging Face repo (downloaded on first use when online)

A single file is loaded with `ControlNetModel.from_single_file(path, config=<folder>, local_files_only=True)`:
the config folder is written from the base model's UNet configuration (ControlNet-v1.x files copy their base
model's encoder, as `ControlNetModel.from_unet` does), so nothing is fetched from the Hub. Files shaped
differently from their base (SDXL "small"/"mid" ControlNets, Control-LoRAs) do not load this way and say so.
Pickled files (.pth, .ckpt, .pt, .bin) are listed, marked, and refused.
"""

from __future__ import annotations

import json
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pipelines.registry import HF_ID, UNSAFE_EXT, check_relative_name

PROJECT_ROOT = Path(__file__).resolve().parent.parent
BUILTIN_CONTROLNET_DIR = PROJECT_ROOT / "assets" / "builtin-controlnet"
BUILTIN_CONTROLNET_ID = "builtin:shapes-controlnet"
ANNOTATORS_DIR = "annotators"  # under ControlNet/: the preprocessors' detector weights, not ControlNets
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")  # A1111's names
SOFT_INJECTION_BASE = 0.825  # A1111: block k of n gets weight * 0.825 ** (n - 1 - k) outside "Balanced"


class ControlNetNotFound(LookupError):
    """The ControlNet id names nothing installed or downloadable."""


class ControlNetError(ValueError):
    """A ControlNet that cannot be used: pickled, unreadable, not a ControlNet, or made for another base."""


@dataclass(frozen=True)
class ControlNetSource:
    id: str
    kind: str  # builtin | diffusers | single_file | hub | pickled
    location: str

    @property
    def label(self) -> str:
        return self.id.split(":", 1)[1]


@dataclass(frozen=True)
class Shape:
    """What a ControlNet (or a UNet) must agree on with its base: text width and SDXL's added embeddings."""

    cross_attention_dim: int | None
    addition_embed_type: str | None = None

    def family(self) -> str:
        if self.addition_embed_type == "text_time":
            return f"SDXL (cross_attention_dim {self.cross_attention_dim}, text_time embeddings)"
        named = {768: "SD 1.x", 1024: "SD 2.x"}.get(self.cross_attention_dim)
        return (f"{named} (cross_attention_dim {self.cross_attention_dim})" if named
                else f"a base with cross_attention_dim {self.cross_attention_dim}")

    def fits(self, base: "Shape") -> bool:
        return (self.cross_attention_dim in (None, base.cross_attention_dim)
                and (self.addition_embed_type or None) == (base.addition_embed_type or None))


def shape_of_config(config) -> Shape:
    cross = config.get("cross_attention_dim") if hasattr(config, "get") else None
    if isinstance(cross, (list, tuple)):
        cross = cross[0]
    return Shape(cross, config.get("addition_embed_type"))


# ---------------------------------------------------------------------- listing and resolving
def _is_controlnet_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "ControlNetModel"
    except (OSError, ValueError):
        return False


def list_controlnets(models_dir: Path, builtin_dir: Path = BUILTIN_CONTROLNET_DIR) -> list[ControlNetSource]:
    """The built-in ControlNet (when trained), then every ControlNet under <models>/ControlNet/ (diffusers
    folders, .safetensors files, and pickled files marked as such); the annotators folder is skipped."""
    found = []
    if _is_controlnet_folder(Path(builtin_dir)):
        found.append(ControlNetSource(BUILTIN_CONTROLNET_ID, "builtin", str(builtin_dir)))
    root = Path(models_dir)
    if not root.is_dir():
        return found
    folders: list[Path] = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == ANNOTATORS_DIR or any(f in path.parents for f in folders):
            continue
        if path.is_dir() and _is_controlnet_folder(path):
            folders.append(path)
            found.append(ControlNetSource(f"local:{rel.as_posix()}", "diffusers", str(path)))
        elif path.is_file() and path.suffix.lower() == ".safetensors":
            found.append(ControlNetSource(f"local:{rel.as_posix()}", "single_file", str(path)))
        elif path.is_file() and path.suffix.lower() in UNSAFE_EXT:
            found.append(ControlNetSource(f"local:{rel.as_posix()}", "pickled", str(path)))
    return found


def resolve_controlnet(cn_id: str, models_dir: Path, builtin_dir: Path = BUILTIN_CONTROLNET_DIR,
                       offline: bool = False) -> ControlNetSource:
    """A ControlNet id as a source to load, or ControlNetNotFound / ControlNetError saying why not."""
    cn_id = (cn_id or "").strip()
    root = Path(models_dir)
    if not cn_id:
        raise ControlNetNotFound(f"no ControlNet chosen: put one under {root} or pick the built-in one")
    if cn_id == BUILTIN_CONTROLNET_ID:
        if not _is_controlnet_folder(Path(builtin_dir)):
            raise ControlNetNotFound(f"the built-in ControlNet is not trained yet ({builtin_dir} is missing; "
                                     "python -m training.train_controlnet makes it)")
        return ControlNetSource(cn_id, "builtin", str(builtin_dir))
    if cn_id.startswith("local:"):
        rel = check_relative_name(cn_id[len("local:"):], "controlnet")
        path = root / rel
        if path.suffix.lower() in UNSAFE_EXT:
            raise ControlNetError(f"ControlNet {rel}: pickled files ({', '.join(UNSAFE_EXT)}) are refused; "
                                  "convert it to .safetensors")
        if path.is_dir() and _is_controlnet_folder(path):
            return ControlNetSource(cn_id, "diffusers", str(path))
        if path.is_file() and path.suffix.lower() == ".safetensors":
            return ControlNetSource(cn_id, "single_file", str(path))
        raise ControlNetNotFound(f"ControlNet {rel!r} is not under {root}")
    repo = cn_id[3:] if cn_id.startswith("hf:") else cn_id
    if not HF_ID.match(repo) or ".." in repo:
        raise ControlNetNotFound(f"ControlNet must be one under {root}, the built-in one or a Hugging Face id "
                                 f"like 'owner/name'; got {cn_id!r}")
    if offline:
        raise ControlNetNotFound(f"ControlNet {repo!r} is a Hugging Face id, but the studio runs offline; "
                                 f"download it elsewhere and put it under {root}")
    return ControlNetSource(f"hf:{repo}", "hub", repo)


# ---------------------------------------------------------------------- fitting a base model
def _conditioning_embedding(shapes: dict) -> dict:
    """conditioning_channels and conditioning_embedding_out_channels of a single-file ControlNet, read from the
    shapes of its hint encoder (diffusers' controlnet_cond_embedding.* or the original input_hint_block.*)."""
    def out_channels(key):
        return shapes[key][0]

    if "controlnet_cond_embedding.conv_in.weight" in shapes:
        first = "controlnet_cond_embedding.conv_in.weight"
        blocks = sorted(int(k.split(".")[2]) for k in shapes
                        if k.startswith("controlnet_cond_embedding.blocks.") and k.endswith(".weight"))
        out = [out_channels(first)] + [out_channels(f"controlnet_cond_embedding.blocks.{i}.weight")
                                       for i in blocks if i % 2 == 1]
    else:
        prefix = next((k[: -len("0.weight")] for k in shapes if k.endswith("input_hint_block.0.weight")), None)
        if prefix is None:
            return {}
        convs = sorted(int(k[len(prefix):].split(".")[0]) for k in shapes
                       if k.startswith(prefix) and k.endswith(".weight"))[:-1]  # the last one is conv_out
        first = f"{prefix}{convs[0]}.weight"
        out = [out_channels(first)] + [out_channels(f"{prefix}{convs[k]}.weight") for k in range(2, len(convs), 2)]
    return {"conditioning_channels": shapes[first][1], "conditioning_embedding_out_channels": out}


def read_header(path: Path) -> tuple[Shape, dict]:
    """The Shape of a single-file ControlNet and its hint encoder's settings, from the safetensors header only."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            shapes = {k: list(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise ControlNetError(f"ControlNet file {path.name} is not a readable .safetensors file (truncated or "
                              f"another format): {exc}") from exc
    if any("lora" in k for k in shapes):
        raise ControlNetError(f"ControlNet file {path.name} is a Control-LoRA, which the studio cannot load")
    if not any(("controlnet_cond_embedding." in k) or ("input_hint_block." in k) for k in shapes):
        raise ControlNetError(f"ControlNet file {path.name} holds no ControlNet (no controlnet_cond_embedding.* "
                              f"or input_hint_block.* weights; {len(shapes)} tensors)")
    cross = next((v[-1] for k, v in shapes.items() if k.endswith("attn2.to_k.weight")), None)
    sdxl = any(k.startswith(("add_embedding.", "label_emb.", "control_model.label_emb.")) for k in shapes)
    return Shape(cross, "text_time" if sdxl else None), _conditioning_embedding(shapes)


def controlnet_shape(source: ControlNetSource) -> Shape | None:
    """The Shape a ControlNet declares, read without loading its weights; None where it is not known yet (a
    Hugging Face id not downloaded)."""
    if source.kind == "pickled":
        raise ControlNetError(f"ControlNet {source.label}: pickled files ({', '.join(UNSAFE_EXT)}) are refused; "
                              "convert it to .safetensors")
    if source.kind in ("builtin", "diffusers"):
        try:
            return shape_of_config(json.loads((Path(source.location) / "config.json").read_text()))
        except (OSError, ValueError) as exc:
            raise ControlNetError(f"ControlNet {source.label}: unreadable config.json: {exc}") from exc
    if source.kind == "single_file":
        return read_header(Path(source.location))[0]
    return None


def base_shape(source) -> Shape | None:
    """The Shape of a base model (a pipelines.registry.ModelSource) read from its configuration or its file's
    header, without loading it; None where it is not known before loading (a Hugging Face id)."""
    if source.kind in ("builtin", "diffusers"):
        try:
            return shape_of_config(json.loads((Path(source.location) / "unet" / "config.json").read_text()))
        except (OSError, ValueError):
            return None
    if source.kind == "single_file":
        from pipelines.single_file import SingleFileError, resolve_family

        try:
            family = resolve_family(Path(source.location)).family
        except SingleFileError:
            return None
        return Shape(family.context_dim, "text_time" if family.base == "sdxl" else None)
    return None


def check_fits(shape: Shape | None, base: Shape | None, controlnet_label: str, model_label: str) -> None:
    """ControlNetError naming both when a ControlNet was made for another base model (None: not known yet)."""
    if shape is not None and base is not None and not shape.fits(base):
        raise ControlNetError(f"ControlNet {controlnet_label!r} is made for {shape.family()}, but model "
                              f"{model_label!r} is {base.family()}: pick a ControlNet made for that model's family")


# ---------------------------------------------------------------------- loading
CONFIG_FROM_UNET = (  # the UNet settings ControlNetModel.from_unet copies
    "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention", "block_out_channels",
    "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps",
    "cross_attention_dim", "attention_head_dim", "num_attention_heads", "use_linear_projection", "class_embed_type",
    "num_class_embeds", "upcast_attention", "resnet_time_scale_shift", "projection_class_embeddings_input_dim",
    "mid_block_type", "transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type",
    "addition_embed_type", "addition_time_embed_dim")


def controlnet_config_from_unet(unet_config, **overrides) -> dict:
    """The ControlNetModel configuration `ControlNetModel.from_unet` would build for a UNet (nothing loaded),
    with `overrides` (a single file's hint-encoder settings) on top."""
    config = {"_class_name": "ControlNetModel", "conditioning_channels": 3,
              "controlnet_conditioning_channel_order": "rgb",
              "conditioning_embedding_out_channels": [16, 32, 96, 256]}
    config.update({k: unet_config[k] for k in CONFIG_FROM_UNET if k in unet_config})
    config.update(overrides)
    return config


def load_controlnet(source: ControlNetSource, unet_config, device: str, dtype, offline: bool = False,
                    report: Callable[[int, int], None] | None = None):
    """Load a ControlNet onto the device; ControlNetError with the cause when it cannot be."""
    import diffusers

    controlnet_shape(source)  # pickles and non-ControlNet files are refused before anything is read
    try:
        if source.kind in ("builtin", "diffusers"):
            net = diffusers.ControlNetModel.from_pretrained(source.location, torch_dtype=dtype, local_files_only=True,
                                                            use_safetensors=True)
        elif source.kind == "single_file":
            config = controlnet_config_from_unet(unet_config, **read_header(Path(source.location))[1])
            with tempfile.TemporaryDirectory() as folder:
                (Path(folder) / "config.json").write_text(json.dumps(config))
                net = diffusers.ControlNetModel.from_single_file(source.location, config=folder, torch_dtype=dtype,
                                                                 local_files_only=True)
        else:
            from huggingface_hub import snapshot_download

            from pipelines.loading import download_progress_class

            kwargs = {"tqdm_class": download_progress_class(report)} if report else {}
            folder = snapshot_download(source.location, local_files_only=offline,
                                       allow_patterns=["*.json", "*.safetensors"], **kwargs)
            net = diffusers.ControlNetModel.from_pretrained(folder, torch_dtype=dtype, local_files_only=True,
                                                            use_safetensors=True)
    except ControlNetError:
        raise
    except Exception as exc:  # noqa: BLE001 - a loader's failure is reported with its cause
        raise ControlNetError(f"ControlNet {source.label!r} could not be loaded: {type(exc).__name__}: {exc}") \
            from exc
    net.requires_grad_(False)
    return net.to(device).eval()


# ---------------------------------------------------------------------- control modes
@contextmanager
def control_modes(pipe, modes: list[str]):
    """A1111's control modes on a ControlNet pipeline for one call, unit by unit (`modes[i]` for the pipeline's
    i-th ControlNet). "Balanced" leaves a unit alone. "My prompt is more important" is A1111's soft injection:
    of n residual blocks, block k is scaled by 0.825 ** (n - 1 - k), so the deep blocks keep the layout and the
    shallow ones, where texture is decided, are let go. "ControlNet is more important" adds A1111's CFG
    injection: the unconditional half of the batch gets no control, so classifier-free guidance amplifies it
    (diffusers' `guess_mode` does the same with 0.1..1 log-spaced scales, but for every unit at once).

    Done with forward hooks on the ControlNet modules, removed on exit; a module used by several units (the same
    ControlNet twice) applies each unit's mode in the order MultiControlNetModel calls them."""
    from diffusers import ControlNetModel

    controlnet = pipe.controlnet
    nets = [controlnet] if isinstance(controlnet, ControlNetModel) else list(controlnet.nets)
    if len(modes) != len(nets):
        raise ValueError(f"{len(modes)} control modes for {len(nets)} ControlNets")
    unknown = [m for m in modes if m not in CONTROL_MODES]
    if unknown:
        raise ValueError(f"control mode must be one of {', '.join(CONTROL_MODES)}; got {unknown[0]!r}")
    handles = []
    if any(m != CONTROL_MODES[0] for m in modes):
        by_module: dict[int, tuple[object, list[str]]] = {}
        for net, mode in zip(nets, modes):
            by_module.setdefault(id(net), (net, []))[1].append(mode)
        for net, unit_modes in by_module.values():
            handles.append(net.register_forward_hook(_mode_hook(pipe, unit_modes)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _mode_hook(pipe, unit_modes: list[str]):
    calls = [0]

    def hook(module, args, output):
        mode = unit_modes[calls[0] % len(unit_modes)]
        calls[0] += 1
        if mode == CONTROL_MODES[0]:
            return None
        tuple_out = isinstance(output, tuple)
        down, mid = output if tuple_out else (output.down_block_res_samples, output.mid_block_res_sample)
        n = len(down) + 1
        scales = [SOFT_INJECTION_BASE ** (n - 1 - k) for k in range(n)]
        down = [d * s for d, s in zip(down, scales)]
        mid = mid * scales[-1]
        if mode == CONTROL_MODES[2] and getattr(pipe, "do_classifier_free_guidance", False) and mid.shape[0] % 2 == 0:
            import torch

            half = mid.shape[0] // 2
            keep = torch.cat([torch.zeros(half), torch.ones(half)]).to(mid.device, mid.dtype).view(-1, 1, 1, 1)
            down = [d * keep for d in down]
            mid = mid * keep
        if tuple_out:
            return (down, mid)
        output.down_block_res_samples, output.mid_block_res_sample = down, mid
        return output

    return hook
