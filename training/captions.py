"""Caption edits that follow an image augmentation."""

from __future__ import annotations

import re

_SIDES = re.compile(r"\b(left|right)(?=\b|-)", re.IGNORECASE)


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
