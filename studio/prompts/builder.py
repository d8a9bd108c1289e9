"""The prompt builder: pick terms per category (subject, medium, style, lighting, framing, colours) from editable
lists and compose a prompt, each category's weight written in A1111 syntax, `(term:1.2)`.

Lists ship in `assets/prompt-builder/<category>.txt`; a user's edited copy in `<data>/prompt-builder/` wins. The
built-in model gets its own vocabulary (its shapes, colours, sizes, positions and backgrounds), composed as the
phrases it was trained on ("a small red circle at the top on a blue background")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from studio.errors import ValidationError, check_range
from studio.prompts.wildcards import parse_options
from studio.settings import PROJECT_ROOT

CATEGORIES = ("subject", "medium", "style", "lighting", "framing", "colours")
SHIPPED_LISTS = PROJECT_ROOT / "assets" / "prompt-builder"
USER_LISTS = "prompt-builder"  # under the data dir
MIN_WEIGHT, MAX_WEIGHT = 0.0, 2.0
MAX_LIST = 5000


@dataclass(frozen=True)
class Vocabulary:
    """The builder's lists for one kind of model: terms and a label per category, the order categories are
    written in and what joins them."""

    lists: dict[str, list[str]]
    labels: dict[str, str]
    order: tuple[str, ...] = CATEGORIES
    joiner: str = ", "
    prefix: str = ""


def weighted(term: str, weight: float) -> str:
    """A term in A1111 syntax: brackets escaped, `(term:w)` unless the weight is 1."""
    term = re.sub(r"([()\[\]])", r"\\\1", term.strip())
    weight = round(float(weight), 2)
    return term if weight == 1 else f"({term}:{weight:g})"


def compose(vocabulary: Vocabulary, picks: dict[str, list[str]], weights: dict[str, float] | None = None) -> str:
    """The prompt for the picked terms of each category (custom terms allowed), in the vocabulary's order."""
    weights = weights or {}
    parts = []
    for category in vocabulary.order:
        terms = [t for t in (picks.get(category) or []) if t and t.strip()]
        weight = check_range(f"{category} weight", weights.get(category, 1.0), MIN_WEIGHT, MAX_WEIGHT, float)
        parts += [weighted(term, weight) for term in terms]
    text = vocabulary.joiner.join(parts)
    return f"{vocabulary.prefix}{text}" if text else ""


def builtin_vocabulary() -> Vocabulary:
    """The shapes world's words, so a composed prompt reads like the captions the built-in model learned."""
    from training import world

    lists = {"subject": list(world.SHAPES), "medium": list(world.SIZES),
             "style": [f"on a {p} background" if p != "plain" else "on a plain background" for p in world.PATTERNS],
             "lighting": [f"on a {c} background" for c in world.COLOURS],
             "framing": ["in the center" if p == "center" else f"at the {p}" for p in world.POSITIONS],
             "colours": list(world.COLOURS)}
    labels = {"subject": "Shape", "medium": "Size", "style": "Background pattern", "lighting": "Background colour",
              "framing": "Position", "colours": "Shape colour"}
    return Vocabulary(lists, labels, ("medium", "colours", "subject", "framing", "lighting", "style"), " ", "a ")


class BuilderLists:
    """The editable lists: shipped, or the user's saved copy."""

    def __init__(self, data_dir: Path, shipped: Path = SHIPPED_LISTS):
        self.user_dir, self.shipped = Path(data_dir) / USER_LISTS, Path(shipped)

    def terms(self, category: str) -> list[str]:
        self._check(category)
        for folder in (self.user_dir, self.shipped):
            path = folder / f"{category}.txt"
            if path.is_file():
                return parse_options(path.read_text(encoding="utf-8", errors="replace"))
        return []

    def save(self, category: str, text: str) -> list[str]:
        """Replace the user's list of `category` with `text` (one term per line)."""
        self._check(category)
        terms = parse_options(text or "")
        if len(terms) > MAX_LIST:
            raise ValidationError(f"{category} list has {len(terms)} terms; at most {MAX_LIST}", "terms")
        from studio.stores.atomic_storage import atomic_write_text

        self.user_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.user_dir / f"{category}.txt", "\n".join(terms) + "\n", keep_backup=False)
        return terms

    def vocabulary(self, builtin: bool = False) -> Vocabulary:
        """The built-in model's vocabulary, or the editable lists."""
        if builtin:
            return builtin_vocabulary()
        return Vocabulary({c: self.terms(c) for c in CATEGORIES}, {c: c.capitalize() for c in CATEGORIES})

    @staticmethod
    def _check(category: str) -> None:
        if category not in CATEGORIES:
            raise ValidationError(f"category must be one of {', '.join(CATEGORIES)}; got {category!r}", "category")
