"""Caption handling shared by the trainer and the dataset tools: phrasing variants and flip-aware edits."""

from __future__ import annotations

import random
import re

_SIDES = re.compile(r"\b(left|right)(?=\b|-)", re.IGNORECASE)
_VARIANT_BREAK = re.compile(r"\s*(?:\n|\|)\s*")


def caption_variants(caption: str) -> list[str]:
    """The phrasings a caption holds: one per line (a caption .txt file) or separated by "|" (the caption
    table); empty pieces are dropped. A plain caption is its own single variant."""
    return [part for part in _VARIANT_BREAK.split(caption.strip()) if part]


def join_variants(variants) -> str:
    """One caption holding these phrasings, in the caption table's form (the inverse of caption_variants)."""
    return " | ".join(variants)


def pick_variant(caption: str, rng: random.Random) -> str:
    """One phrasing of the caption, drawn with `rng` only when there are several (a plain caption leaves the
    random stream untouched, so runs without variants stay reproducible)."""
    variants = caption_variants(caption)
    if len(variants) < 2:
        return variants[0] if variants else ""
    return variants[rng.randrange(len(variants))]


def mirror_caption(caption: str) -> str:
    """The caption of the horizontally mirrored image: "left" and "right" trade places (case kept), so a flip
    augmentation never teaches that the left side is called "right"."""

    def swap(match: re.Match) -> str:
        word = match.group(0)
        other = "right" if word.lower() == "left" else "left"
        if word.isupper():
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return _SIDES.sub(swap, caption)
