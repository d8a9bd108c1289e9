"""A1111-style generation parameters ("infotext") in PNG text chunks: build, parse, read, write."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

PARAM_RE = re.compile(r'\s*([\w ]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
SIZE_RE = re.compile(r"^(\d+)x(\d+)$")


def _quote(value) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text and '"' not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def build_infotext(prompt: str, negative_prompt: str, params: dict) -> str:
    """`prompt\\nNegative prompt: ...\\nSteps: 20, Sampler: Euler a, ...` exactly as A1111 writes it."""
    lines = [prompt]
    if negative_prompt:
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in params.items() if value is not None))
    return "\n".join(lines)


def parse_infotext(text: str) -> dict:
    """Parse A1111 infotext into {"Prompt", "Negative prompt", key: value, "Size-1", "Size-2"}."""
    result: dict = {}
    lines = text.strip().split("\n")
    last = lines[-1] if lines else ""
    if len(PARAM_RE.findall(last)) < 3:  # no parameters line
        last = ""
    else:
        lines = lines[:-1]
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result["Prompt"] = "\n".join(prompt).strip()
    result["Negative prompt"] = "\n".join(negative).strip()
    for key, value in PARAM_RE.findall(last):
        key, value = key.strip(), _unquote(value.strip())
        result[key] = value
        size = SIZE_RE.match(value) if key in ("Size", "Hires resize") else None
        if size:
            result[f"{key}-1"], result[f"{key}-2"] = size.group(1), size.group(2)
    return result


def read_png_parameters(image_or_path) -> str | None:
    """The `parameters` text of a PNG (or the EXIF UserComment of a JPEG/WebP), or None."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = image_or_path if isinstance(image_or_path, Image.Image) else Image.open(image_or_path)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    text = image.info.get("parameters")
    if text:
        return str(text)
    try:
        exif = image.getexif().get_ifd(0x8769)
        comment = exif.get(0x9286)
    except Exception:  # noqa: BLE001 - malformed EXIF means "no parameters"
        return None
    if isinstance(comment, bytes):
        for prefix, codec in ((b"UNICODE\x00", "utf-16-be"), (b"ASCII\x00\x00\x00", "ascii")):
            if comment.startswith(prefix):
                return comment[len(prefix):].decode(codec, errors="ignore").strip("\x00") or None
        return comment.decode("utf-8", errors="ignore").strip("\x00") or None
    return comment or None


def save_png_with_infotext(image, path: Path, infotext: str) -> Path:
    """Write a PNG with the `parameters` chunk atomically (temp file, fsync, rename)."""
    from PIL.PngImagePlugin import PngInfo

    path = Path(path)
    info = PngInfo()
    info.add_itxt("parameters", infotext)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        image.save(fh, format="PNG", pnginfo=info)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def infotext_to_fields(info: dict) -> dict:
    """Map parsed infotext to Generate-tab fields; keys that are missing or unreadable are left out."""
    fields: dict = {}
    conversions = [("prompt", "Prompt", str), ("negative_prompt", "Negative prompt", str),
                   ("steps", "Steps", int), ("sampler", "Sampler", str), ("cfg_scale", "CFG scale", float),
                   ("cfg_rescale", "CFG rescale", float),
                   ("seed", "Seed", int), ("width", "Size-1", int), ("height", "Size-2", int),
                   ("denoising_strength", "Denoising strength", float), ("model", "Model", str),
                   ("variation_seed", "Variation seed", int),
                   ("variation_strength", "Variation seed strength", float)]
    for name, key, kind in conversions:
        if key in info and info[key] != "":
            try:
                fields[name] = kind(info[key])
            except (TypeError, ValueError):
                continue
    if "sampler" in fields and not fields["sampler"].endswith(" Karras") and info.get("Schedule type") == "Karras":
        fields["sampler"] = f"{fields['sampler']} Karras"
    return fields


# ---------------------------------------------------------------------- ControlNet units (A1111's extension)
CONTROLNET_KEY = re.compile(r"^ControlNet (\d+)$")
CONTROLNET_UNIT_FIELDS = (  # (name in the unit text, field, type), in the order A1111's extension writes them
    ("Module", "preprocessor", str), ("Model", "model", str), ("Weight", "weight", float),
    ("Resize Mode", "resize_mode", str), ("Low Vram", "low_vram", str), ("Processor Res", "resolution", int),
    ("Threshold A", "threshold_a", float), ("Threshold B", "threshold_b", float),
    ("Guidance Start", "guidance_start", float), ("Guidance End", "guidance_end", float),
    ("Pixel Perfect", "pixel_perfect", str), ("Control Mode", "control_mode", str))
UNIT_PAIR_RE = re.compile(r"\s*([A-Za-z][\w ]*?):\s*([^,]*)(?:,|$)")


def controlnet_unit_text(values: dict) -> str:
    """One unit as A1111's ControlNet extension writes it: `Module: canny, Model: ..., Weight: 1, ...` (numbers
    without trailing zeros; an unused threshold as -1); `values` maps the names of CONTROLNET_UNIT_FIELDS."""
    parts = []
    for name, _, kind in CONTROLNET_UNIT_FIELDS:
        value = values.get(name)
        if value is None:
            value = -1 if kind is not str else ""
        parts.append(f"{name}: {value:g}" if isinstance(value, float) else f"{name}: {value}")
    return ", ".join(parts)


def controlnet_units_from_infotext(info: dict) -> list[dict]:
    """The ControlNet units of parsed infotext (`ControlNet 0: "Module: ..., ..."`), in order, each as
    {preprocessor, model, weight, resize_mode, resolution, threshold_a, threshold_b, guidance_start, guidance_end,
    pixel_perfect, control_mode}; a threshold of -1 (unused) is None and a model's " [hash]" is dropped.
    Unreadable values are left out."""
    units = []
    for key in sorted((k for k in info if CONTROLNET_KEY.match(k)), key=lambda k: int(CONTROLNET_KEY.match(k)[1])):
        pairs = {name.strip(): value.strip() for name, value in UNIT_PAIR_RE.findall(str(info[key]))}
        unit: dict = {}
        for name, field, kind in CONTROLNET_UNIT_FIELDS:
            if name not in pairs or field == "low_vram":
                continue
            try:
                value = kind(float(pairs[name])) if kind is int else kind(pairs[name])
            except ValueError:
                continue
            if field.startswith("threshold") and value < 0:
                value = None
            if field == "model":
                value = re.sub(r"\s*\[[0-9a-fA-F]+\]$", "", value)
            if field == "pixel_perfect":
                value = value == "True"
            unit[field] = value
        units.append(unit)
    return units
