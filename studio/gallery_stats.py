"""Gallery statistics that are not plain SQL aggregates: the most used prompt words."""

from __future__ import annotations

import re
from collections import Counter

WORD_RE = re.compile(r"[^\W\d_][\w'-]+")
STOP_WORDS = frozenset(
    "a an the and or of on in at to with by for from as is are be this that these those it its into over under "
    "very but not no than then there their his her he she they we you your my our up down out off".split())


def top_words(prompts: list[str], n: int = 20) -> list[tuple[str, int]]:
    """The `n` most frequent words of `prompts` (lower-cased, stop words, LoRA tags and numbers left out)."""
    counts: Counter[str] = Counter()
    for prompt in prompts:
        text = re.sub(r"<[^>]*>", " ", prompt.lower())
        counts.update(w for w in WORD_RE.findall(text) if w not in STOP_WORDS)
    return counts.most_common(n)
