"""Other tools' sampler names (ComfyUI's `dpmpp_2m` + scheduler `karras`, InvokeAI's `dpmpp_2m_k`, NovelAI's
`k_euler_ancestral`, ...) mapped to the studio's A1111 names (pipelines.samplers.SAMPLERS) when one matches."""

from __future__ import annotations

from pipelines.samplers import SAMPLERS

BASE_NAMES = {  # a tool's sampler, lower case without "k_" / "sample_" prefixes and "_gpu" -> the A1111 name
    "euler": "Euler", "euler_a": "Euler a", "euler_ancestral": "Euler a", "dpmpp_2m": "DPM++ 2M",
    "dpmpp_sde": "DPM++ SDE", "ddim": "DDIM", "uni_pc": "UniPC", "unipc": "UniPC", "lcm": "LCM", "heun": "Heun",
    "lms": "LMS",
}
PREFIXES = ("sample_", "k_")
KARRAS_SUFFIXES = ("_karras", "_k")


def studio_sampler(name: str | None, scheduler: str | None = None) -> str | None:
    """The studio's name for a tool's sampler (and its noise schedule, e.g. "karras"), or None when the studio
    has no match."""
    text = (name or "").strip()
    if not text:
        return None
    karras = (scheduler or "").strip().lower() == "karras"
    if text in SAMPLERS:
        return _with_schedule(text, karras)
    key = text.lower().replace(" ", "_").removesuffix("_gpu")
    for prefix in PREFIXES:
        key = key.removeprefix(prefix)
    for suffix in KARRAS_SUFFIXES:
        if key.endswith(suffix) and key.removesuffix(suffix) in BASE_NAMES:
            key, karras = key.removesuffix(suffix), True
    base = BASE_NAMES.get(key)
    return _with_schedule(base, karras) if base else None


def _with_schedule(name: str, karras: bool) -> str | None:
    if not karras or name.endswith(" Karras"):
        return name
    return f"{name} Karras" if f"{name} Karras" in SAMPLERS else None
