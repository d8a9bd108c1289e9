"""LoRA files: their format and base model read from the file's keys and shapes before loading, and loading one
into a pipeline as a named adapter, offline (no hub lookup for a local file).

Formats that load (diffusers' `load_lora_weights`, peft underneath):
  - diffusers / peft LoRAs (`unet.….lora_A.weight`, `text_encoder.…`), what the studio's trainer writes;
  - kohya / A1111 LoRAs (`lora_unet_down_blocks_0_attentions_0_…_to_q.lora_down.weight`, `.lora_up.weight`,
    `.alpha`; text encoder `lora_te_…`; SDXL `lora_te1_` / `lora_te2_` and sgm `input_blocks` names), which
    diffusers renames through `lora_conversion_utils._convert_non_diffusers_lora_to_diffusers`;
  - LoCon (LyCORIS' "lora" algorithm, kohya's conv LoRA): the same names on convolution layers too.
Refused before anything is loaded, with a message naming the format: the LyCORIS algorithms diffusers cannot
load (LoHa `hada_*`, LoKr `lokr_*`, CP/Tucker LoCon `lora_mid`, (IA)^3, OFT/BOFT, GLoRA, full / diff weights)
and kohya DoRA (`dora_scale`), whose magnitude vectors diffusers 0.39 drops with only a log warning.

A LoRA made for another base model (an SDXL LoRA on SD 1.5, a 1024-wide SD 2.x LoRA on SD 1.5, ...) is told apart
by its cross-attention and text-encoder widths and its key names, and refused naming both; anything that still
fails while loading (a shape mismatch) is reported the same way, and the pipeline is left without the adapter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

# cross-attention (UNet context) width -> the base model family that has it
BASE_BY_CONTEXT = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL", 1280: "SDXL refiner"}
# first text encoder width -> family (SDXL's first encoder is 768 wide like SD 1.x's)
BASE_BY_TEXT_WIDTH = {768: "SD 1.x", 1024: "SD 2.x"}

# (pattern in a key, format name) for the formats diffusers cannot load; checked in this order
UNSUPPORTED = tuple((re.compile(pattern), name) for pattern, name in (
    (r"\.hada_", "LoHa (hada_*)"),
    (r"\.lokr_", "LoKr (lokr_*)"),
    (r"\.lora_mid\.", "LoCon with CP/Tucker decomposition (lora_mid)"),
    (r"\.b?oft_", "OFT/BOFT (oft_*)"),
    (r"\.on_input$", "(IA)^3 (on_input)"),
    (r"\.[ab][12]\.weight$", "GLoRA (a1/a2/b1/b2)"),
    (r"\.diff(_b)?$", "full / diff-weight (.diff)"),
    (r"\.dora_scale$", "DoRA (dora_scale)"),
))
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
TRANSFORMER_MARKERS = (("lora_unet_double_blocks_", "Flux"), ("lora_unet_single_blocks_", "Flux"),
                       ("lora_unet_joint_blocks_", "SD 3"), ("lora_transformer_", "a transformer model (SD 3, Flux)"),
                       ("transformer.", "a transformer model (SD 3, Flux)"))
_DOWN = re.compile(r"(lora_down\.weight|lora_A(\.[\w-]+)?\.weight|lora\.down\.weight|_lora\.down\.weight)$")


class LoraError(ValueError):
    """A LoRA file that cannot be used: unreadable, a format diffusers cannot load, or made for another base."""


@dataclass(frozen=True)
class LoraInfo:
    """What a LoRA file's header says: its format, the base model it is for where the keys tell, and the widths
    that tell it."""

    format: str  # "kohya LoRA", "LoCon", "diffusers LoRA", or an UNSUPPORTED name
    supported: bool
    base: str | None = None  # "SD 1.x", "SD 2.x", "SDXL", ... None when the keys do not tell
    context_width: int | None = None  # in-features of a cross-attention to_k/to_v LoRA
    text_widths: dict = field(default_factory=dict)  # "text_encoder" / "text_encoder_2" -> in-features


def read_lora_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors header only; LoraError when it cannot be read."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
    except Exception as exc:  # safetensors raises its own error types
        raise LoraError(f"LoRA file {path.name} is not a readable .safetensors file (truncated or another "
                        f"format): {exc}") from exc


def _text_encoder_of(key: str) -> str | None:
    if key.startswith(("lora_te2_", "text_encoder_2.")):
        return "text_encoder_2"
    if key.startswith(("lora_te_", "lora_te1_", "text_encoder.")):
        return "text_encoder"
    return None


def inspect_lora(path: Path) -> LoraInfo:
    """The format and base of a LoRA file, from its header (no weights are read)."""
    header = read_lora_header(path)
    keys = list(header)
    for pattern, name in UNSUPPORTED:
        if any(pattern.search(k) for k in keys):
            return LoraInfo(name, False)
    kohya = any(k.startswith(KOHYA_PREFIXES) for k in keys)
    diffusers = any(_DOWN.search(k) and not k.startswith(KOHYA_PREFIXES) for k in keys)
    if not (kohya or diffusers):
        sample = ", ".join(keys[:3]) or "no tensors"
        return LoraInfo(f"an unknown layout (keys like {sample})", False)
    conv = any(_DOWN.search(k) and len(shape) == 4 and shape[2:] != (1, 1) for k, shape in header.items())
    fmt = ("LoCon" if conv else "kohya LoRA") if kohya else "diffusers LoRA"

    context = next((header[k][1] for k in keys if _DOWN.search(k) and "attn2" in k
                    and re.search(r"to[._]([kv])([._]|$)", k.split(".lora")[0].split("_lora")[0])), None)
    widths: dict = {}
    for k in keys:
        encoder = _text_encoder_of(k)
        if encoder and encoder not in widths and _DOWN.search(k) and re.search(r"[qkv][._]proj", k):
            widths[encoder] = header[k][1]
    base = next((name for marker, name in TRANSFORMER_MARKERS if any(k.startswith(marker) for k in keys)), None)
    if base is None and context is not None:
        base = BASE_BY_CONTEXT.get(context, f"a model with cross-attention width {context}")
    if base is None and (any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys)
                         or any(k.startswith(("lora_unet_input_blocks", "lora_unet_output_blocks",
                                              "lora_unet_middle_block")) for k in keys)):
        base = "SDXL"
    if base is None and "text_encoder" in widths:
        base = BASE_BY_TEXT_WIDTH.get(widths["text_encoder"])
    return LoraInfo(fmt, True, base, context, widths)


def check_lora_format(info: LoraInfo, name: str) -> None:
    """Raise LoraError naming the format when diffusers cannot load it."""
    if not info.supported:
        if info.format.startswith("an unknown layout"):
            raise LoraError(f"LoRA {name!r} is not a LoRA diffusers can load: {info.format}")
        raise LoraError(f"LoRA {name!r}: {info.format} LoRAs are not supported; convert it to a plain LoRA")


def pipeline_base(pipe) -> str:
    """The family a loaded pipeline belongs to, for messages: "SD 1.x", "SD 2.x", "SDXL", "SDXL refiner", or
    its shape when no real family has it (tiny test models)."""
    xl = getattr(pipe, "text_encoder_2", None) is not None
    width = pipe.unet.config.cross_attention_dim
    known = BASE_BY_CONTEXT.get(width)
    if known and known.startswith("SDXL") == xl:
        return known
    return f"{'SDXL' if xl else 'SD 1.x/2.x'}-style (cross-attention width {width})"


def _text_width(pipe, encoder: str) -> int | None:
    module = getattr(pipe, encoder, None)
    return None if module is None else module.get_input_embeddings().weight.shape[-1]


def check_lora_base(info: LoraInfo, pipe, name: str, model: str = "") -> None:
    """Raise LoraError naming both when the LoRA's widths or key names say it was made for another base."""
    model_base = pipeline_base(pipe)
    mismatch = info.context_width is not None and info.context_width != pipe.unet.config.cross_attention_dim
    for encoder, width in info.text_widths.items():
        mismatch = mismatch or width != _text_width(pipe, encoder)
    xl = getattr(pipe, "text_encoder_2", None) is not None
    if info.base and not mismatch:  # no width to compare: the key names decide
        mismatch = info.base in dict(TRANSFORMER_MARKERS).values() or info.base.startswith("SDXL") != xl
    if mismatch:
        lora_base = info.base or "another base model"
        model_text = f"the model {model!r}" if model else "the model"
        raise LoraError(f"LoRA {name!r} is for {lora_base}; {model_text} is {model_base}")


def _adapters(pipe) -> set[str]:
    try:
        return {a for names in pipe.get_list_adapters().values() for a in names}
    except Exception:  # noqa: BLE001  no adapters loaded yet
        return set()


def _discard_adapter(pipe, adapter_name: str, others: set[str]) -> None:
    """Remove what a failed load left behind: diffusers keeps injected layers after a shape mismatch."""
    if not others:
        pipe.unload_lora_weights()
        return
    from peft.tuners.tuners_utils import BaseTunerLayer

    for component in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, component, None)
        if module is None:
            continue
        for layer in module.modules():
            if isinstance(layer, BaseTunerLayer) and adapter_name in getattr(layer, "lora_A", {}):
                layer.delete_adapter(adapter_name)
        getattr(module, "peft_config", {}).pop(adapter_name, None)


def load_lora_file(pipe, path, adapter_name: str, name: str | None = None, model: str = "") -> LoraInfo:
    """Load the LoRA `.safetensors` at `path` into `pipe` as adapter `adapter_name`; returns what it is.

    The format and base are checked from the header first (LoraError naming the format, or the LoRA's base and
    the model's: `name` and `model` are used in those messages). A load that still fails leaves no trace of the
    adapter in the pipeline. The folder and file name are passed apart: given a bare file path in offline mode
    (HF_HUB_OFFLINE=1), diffusers asks for a `weight_name` instead of reading the file."""
    path = Path(path)
    name = name or path.stem
    info = inspect_lora(path)
    check_lora_format(info, name)
    check_lora_base(info, pipe, name, model)
    others = _adapters(pipe) - {adapter_name}
    try:
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter_name)
    except Exception as exc:
        _discard_adapter(pipe, adapter_name, others)
        cause = str(exc).strip().splitlines()
        cause = next((line.strip() for line in cause if "mismatch" in line or "not found" in line), cause[0]
                     if cause else type(exc).__name__)
        model_text = f"the model {model!r}" if model else "the model"
        raise LoraError(f"LoRA {name!r} ({info.format}, for {info.base or 'an unknown base'}) does not fit "
                        f"{model_text}, which is {pipeline_base(pipe)}: {cause}") from exc
    return info
