"""Generation parameters read from an image file, whichever tool made it: AUTOMATIC1111 (and the studio, and
Fooocus' "a1111" scheme) infotext in a PNG text chunk, a JPEG/WebP EXIF UserComment or hidden in the pixels
("stealth"), and ComfyUI, Fooocus, InvokeAI and NovelAI metadata (read with sd-parsers), normalised to one
ImageMetadata.

PNG text is read without decoding pixels (studio.png_chunks); pixels are decoded only to look for stealth
infotext in an 8-bit RGB(A) PNG whose text holds no generation parameters (studio.stealth_info: sd-parsers'
own stealth reader walks the pixels as Python tuples and caches its last result in module globals keyed by
id(image), which is slow and unsafe across threads). sd-parsers' parsers are called directly on the text
chunks, one new parser per call. Every text is returned as valid UTF-8 and `extra` as plain JSON.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from sd_parsers.exceptions import ParserError
from sd_parsers.parsers import MANAGED_PARSERS

from studio.errors import CorruptImageError
from studio.infotext import build_infotext, infotext_to_fields, parse_infotext, read_png_parameters
from studio.png_chunks import SIGNATURE, read_png_text
from studio.stealth_info import read_stealth_text
from studio.tool_samplers import studio_sampler

AUTOMATIC1111 = "AUTOMATIC1111"
TOOLS = (AUTOMATIC1111, "ComfyUI", "Fooocus", "InvokeAI", "NovelAI")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
DISPLAY_LIMIT = 500  # characters of one field shown in the UI; the full value is kept
INFOTEXT_FIELDS = {"Prompt", "Negative prompt", "Steps", "Sampler", "CFG scale", "Seed", "Size", "Size-1", "Size-2",
                   "Model"}  # what ImageMetadata holds in its own fields; every other infotext key goes to `extra`
CONSUMED_PARAMETERS = {"seed", "noise_seed", "steps", "cfg_scale", "scale", "width", "height"}
RESOLUTION_RE = re.compile(r"\(?\s*(\d+)\s*[,x]\s*(\d+)\s*\)?")
JPEG_END, JPEG_TAIL = b"\xff\xd9", 64  # a JPEG ends with EOI, allowing for a little padding after it
CONTROL_CHARACTERS = {code: "\ufffd" for code in range(32) if chr(code) not in "\n\t"}


@dataclass(frozen=True)
class ImageMetadata:
    """One image's generation parameters, normalised across tools (None / "" where the tool says nothing)."""

    tool: str  # one of TOOLS
    carrier: str  # where they were: "PNG text", "EXIF UserComment" or "stealth pixels"
    prompt: str = ""
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None
    sampler: str | None = None  # the studio's sampler name (pipelines.samplers), when one matches
    tool_sampler: str = ""  # the sampler as the tool wrote it
    cfg_scale: float | None = None
    width: int | None = None  # the generation size the tool recorded, else the image's own size
    height: int | None = None
    model: str = ""
    extra: dict = field(default_factory=dict)  # the tool's other fields, plain JSON values
    raw: str = ""  # the metadata as stored: A1111 infotext, or a JSON object of the tool's text chunks
    raw_is_infotext: bool = False

    @property
    def description(self) -> str:
        """What was read, for messages: 'the ComfyUI metadata', 'the AUTOMATIC1111 metadata hidden in the pixels'."""
        where = " hidden in the pixels" if self.carrier == "stealth pixels" else ""
        return f"the {self.tool} metadata{where}"

    def infotext(self) -> str:
        """A1111 infotext: the image's own for A1111, else one built from the normalised fields."""
        if self.raw_is_infotext:
            return self.raw
        size = f"{self.width}x{self.height}" if self.width and self.height else None
        return build_infotext(self.prompt, self.negative_prompt, {
            "Steps": self.steps, "Sampler": self.sampler or self.tool_sampler or None, "CFG scale": self.cfg_scale,
            "Seed": self.seed, "Size": size, "Model": self.model or None})

    def form_fields(self) -> dict:
        """The Generate form's fields it fills (only those it knows): prompt, negative_prompt, seed, steps,
        sampler (only a studio one), cfg_scale, width, height, model; infotext adds its other fields
        (cfg_rescale, denoising_strength; see studio.infotext.infotext_to_fields)."""
        fields = infotext_to_fields(parse_infotext(self.raw)) if self.raw_is_infotext else {}
        for name in ("prompt", "negative_prompt", "seed", "steps", "cfg_scale", "width", "height", "model"):
            value = getattr(self, name)
            if value not in (None, ""):
                fields[name] = value
        fields.pop("sampler", None)
        if self.sampler:
            fields["sampler"] = self.sampler
        return fields

    def display_extra(self, limit: int = DISPLAY_LIMIT) -> dict[str, str]:
        """`extra` for display (see display_fields)."""
        return display_fields(self.extra, limit)


def display_fields(fields: dict, limit: int = DISPLAY_LIMIT) -> dict[str, str]:
    """A tool's fields (ImageMetadata.extra, or an imported record's params["extra"]) for display: every key,
    each value as text cut to `limit` characters (see shorten)."""
    return {shorten(key, limit): shorten(value, limit) for key, value in fields.items()}


def shorten(value, limit: int = DISPLAY_LIMIT) -> str:
    """`value` as one display string (JSON for lists and dicts, control characters replaced), cut to `limit`
    characters with the full length noted."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    text = text.translate(CONTROL_CHARACTERS)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text):,} characters in all)"


def read_image_metadata(path, stealth: bool = True) -> ImageMetadata | None:
    """The generation parameters an image file carries, or None when it carries none that a supported tool
    wrote. `stealth` also looks for infotext hidden in the pixels of a PNG whose text holds none (this decodes
    them). CorruptImageError when the file is not a readable PNG, JPEG or WebP (or is truncated)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            magic = fh.read(12)
    except OSError as exc:
        raise CorruptImageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    if magic.startswith(SIGNATURE):
        return _from_png(path, stealth)
    if magic.startswith(b"\xff\xd8\xff") or (magic[:4] == b"RIFF" and magic[8:12] == b"WEBP"):
        return _from_exif(path)
    raise CorruptImageError(f"{path}: not a PNG, JPEG or WebP image")


def _from_png(path: Path, stealth: bool) -> ImageMetadata | None:
    png = read_png_text(path)
    size = (png.width, png.height)
    found = _from_text(png.text, "PNG text", size)
    if found is None and png.text:  # text before the image data, but not ours: look after it too
        png = read_png_text(path, all_chunks=True)
        found = _from_text(png.text, "PNG text", size)
    if found is None and stealth and png.may_hide_bits:
        hidden = _stealth_text(path)
        if hidden:
            found = _from_text(_stealth_chunks(hidden), "stealth pixels", size)
    return found


def _stealth_text(path: Path) -> str | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return read_stealth_text(image)
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptImageError(f"{path}: damaged PNG image data ({exc})") from None


def _stealth_chunks(hidden: str) -> dict:
    """Stealth text as text chunks: NovelAI hides its chunks as one JSON object, A1111 its infotext."""
    try:
        chunks = json.loads(hidden)
    except json.JSONDecodeError:
        chunks = None
    if not isinstance(chunks, dict):
        return {"parameters": hidden}
    return {str(key): value if isinstance(value, str) else json.dumps(value) for key, value in chunks.items()}


def _from_exif(path: Path) -> ImageMetadata | None:
    from PIL import Image, UnidentifiedImageError

    _check_tail(path)
    try:
        with Image.open(path) as image:
            size = image.size
            text = read_png_parameters(image)
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as exc:
        raise CorruptImageError(f"{path}: damaged image ({exc})") from None
    return _from_text({"parameters": text}, "EXIF UserComment", size) if text else None


def _check_tail(path: Path) -> None:
    """CorruptImageError unless a JPEG ends with its EOI marker, or a WebP is as long as its RIFF header says."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        fh.seek(0, 2)
        size = fh.tell()
        fh.seek(max(0, size - JPEG_TAIL))
        tail = fh.read()
    if head[:4] == b"RIFF":
        if int.from_bytes(head[4:8], "little") + 8 > size:
            raise CorruptImageError(f"{path}: truncated WebP ({size} bytes)")
    elif JPEG_END not in tail:
        raise CorruptImageError(f"{path}: truncated JPEG (no end-of-image marker)")


def _from_text(chunks: dict, carrier: str, size: tuple[int, int]) -> ImageMetadata | None:
    """Normalised parameters from an image's text chunks, or None when no supported tool wrote them."""
    parameters = chunks.get("parameters")
    if isinstance(parameters, str) and parameters.strip() and not parameters.lstrip().startswith("{"):
        return _from_infotext(parameters, carrier, size)
    info = _parse_with_sd_parsers(chunks)
    return _from_prompt_info(info, chunks, carrier, size) if info else None


def _from_infotext(text: str, carrier: str, size: tuple[int, int]) -> ImageMetadata:
    info = parse_infotext(text)
    fields = infotext_to_fields(info)
    tool = "Fooocus" if str(info.get("Version", "")).startswith("Fooocus") else AUTOMATIC1111
    return ImageMetadata(
        tool, carrier, _utf8(fields.get("prompt", "")), _utf8(fields.get("negative_prompt", "")), fields.get("seed"),
        fields.get("steps"), studio_sampler(info.get("Sampler"), info.get("Schedule type")),
        _utf8(str(info.get("Sampler", ""))), fields.get("cfg_scale"), fields.get("width", size[0]),
        fields.get("height", size[1]), _utf8(fields.get("model", "")),
        _plain({key: value for key, value in info.items() if key not in INFOTEXT_FIELDS}), text, raw_is_infotext=True)


def _parse_with_sd_parsers(chunks: dict):
    """sd-parsers' PromptInfo from the first of its parsers that reads these chunks, or None."""
    if "prompt" in chunks and "workflow" not in chunks:  # ComfyUI's API-format save: prompt graph only
        chunks = {**chunks, "workflow": '{"links": []}'}
    for parser in MANAGED_PARSERS:
        try:
            return parser().parse(dict(chunks))
        except (ParserError, KeyError, TypeError, ValueError, AttributeError, IndexError):
            continue  # not this tool's metadata (or malformed for it)
    return None


def _from_prompt_info(info, chunks: dict, carrier: str, size: tuple[int, int]) -> ImageMetadata:
    first, *others = info.samplers or [None]
    parameters = dict(first.parameters) if first else {}
    known = {**_plain(info.metadata), **_plain(parameters)}
    width, height = _size(known) or size
    extra = {key: value for key, value in known.items() if key not in CONSUMED_PARAMETERS}
    model = first.model if first else None
    if model is not None and model.hash:
        extra["model_hash"] = model.hash
    if model is not None and model.metadata:
        extra["model_details"] = _plain(model.metadata)
    if others:
        extra["other_samplers"] = [_plain({"name": s.name, **s.parameters}) for s in others]
    tool_sampler = _utf8(str(first.name)) if first else ""
    return ImageMetadata(
        info.generator.value, carrier, _utf8(", ".join(str(p.value) for p in info.prompts)),
        _utf8(", ".join(str(p.value) for p in info.negative_prompts)),
        _number(known.get("seed", known.get("noise_seed")), int), _number(known.get("steps"), int),
        studio_sampler(tool_sampler, known.get("scheduler") or known.get("noise_schedule")), tool_sampler,
        _number(known.get("cfg_scale", known.get("scale")), float), width, height,
        _utf8(str(model.name or "")) if model is not None else "", extra, json.dumps(chunks, ensure_ascii=False))


def _size(values: dict) -> tuple[int, int] | None:
    """The generation size a tool recorded: width/height, or Fooocus' "resolution": "(768, 1280)"."""
    width, height = _number(values.get("width"), int), _number(values.get("height"), int)
    if width and height:
        return width, height
    match = RESOLUTION_RE.fullmatch(str(values.get("resolution", "")))
    return (int(match[1]), int(match[2])) if match else None


def _number(value, kind):
    """`value` (a number or its text) as `kind` (int or float), or None when it is missing, not a finite number,
    or not whole where an int is wanted. Whole numbers stay exact however long (64-bit seeds)."""
    text = str(value).strip()
    if kind is int and text.lstrip("-").isdigit():
        return int(text)
    try:
        number = float(text)
    except ValueError:
        return None
    if not math.isfinite(number) or (kind is int and not number.is_integer()):
        return None
    return kind(number)


def _utf8(text: str) -> str:
    """`text` as valid UTF-8: JSON escapes can decode to lone surrogates, which a database refuses to store."""
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def _plain(value):
    """`value` as plain JSON data: dict keys as strings, tuples and sets as lists, non-finite floats and
    unknown objects as strings, every string valid UTF-8."""
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, dict):
        return {_utf8(str(key)): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return _utf8(str(value))
