"""Style presets as A1111 defines them, and its `styles.csv` format.

A style's text wraps the prompt where it holds `{prompt}`; without the placeholder it is appended after ", ".
Several styles apply in order. A1111 writes no style names into the infotext: the prompt it records is the
styled one, and reading an infotext back strips the known styles off it again (`extract_styles`), which gives
its "Styles array". This module does the same both ways."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from studio.errors import ValidationError

PLACEHOLDER = "{prompt}"
CSV_COLUMNS = ("name", "prompt", "negative_prompt")  # A1111's styles.csv header


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge(style_text: str, prompt: str) -> str:
    """One style text applied to a prompt (A1111's merge_prompts)."""
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def apply_styles(prompt: str, negative: str, styles: list[Style]) -> tuple[str, str]:
    """(prompt, negative prompt) with every style applied, in order."""
    for style in styles:
        prompt, negative = merge(style.prompt, prompt), merge(style.negative_prompt, negative)
    return prompt, negative


def _unwrap(style_text: str, prompt: str) -> tuple[bool, str]:
    """Whether `prompt` ends with (or is wrapped by) `style_text`, and the prompt without it."""
    prompt, style_text = prompt.strip(), style_text.strip()
    if PLACEHOLDER in style_text:
        left, right = style_text.split(PLACEHOLDER, 1)
        if prompt.startswith(left) and prompt.endswith(right) and len(prompt) >= len(left) + len(right):
            return True, prompt[len(left):len(prompt) - len(right)]
        return False, prompt
    if prompt.endswith(style_text):
        rest = prompt[:len(prompt) - len(style_text)]
        return True, rest[:-2] if rest.endswith(", ") else rest
    return False, prompt


def extract_styles(prompt: str, negative: str, styles: list[Style]) -> tuple[list[str], str, str]:
    """The names of the styles a styled prompt was made with (in the order they were applied) and the prompt and
    negative prompt without them (A1111's extract_styles_from_prompt)."""
    found, left = [], [s for s in styles if s.prompt or s.negative_prompt]
    while True:
        for style in left:
            ok_prompt, bare_prompt = _unwrap(style.prompt, prompt)
            ok_negative, bare_negative = _unwrap(style.negative_prompt, negative)
            if ok_prompt and ok_negative:
                prompt, negative = bare_prompt, bare_negative
                found.append(style.name)
                left.remove(style)
                break
        else:
            return list(reversed(found)), prompt, negative


def read_styles_csv(text: str) -> list[Style]:
    """Styles from A1111's styles.csv (name,prompt,negative_prompt; the old `text` column too); rows whose name
    starts with `#` are dividers and skipped. A file without a `name` column is refused."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""), skipinitialspace=True)
    columns = [c.strip() for c in reader.fieldnames or []]
    if "name" not in columns or not ({"prompt", "text"} & set(columns)):
        raise ValidationError(f"styles.csv must have the columns {', '.join(CSV_COLUMNS)}; got "
                              f"{', '.join(columns) or 'none'}", "styles_csv")
    styles = []
    for row in reader:
        row = {(k or "").strip(): v for k, v in row.items()}
        name = (row.get("name") or "").strip()
        if not name or name.startswith("#"):
            continue
        prompt = row.get("prompt") if "prompt" in row else row.get("text")
        styles.append(Style(name, prompt or "", row.get("negative_prompt") or ""))
    return styles


def write_styles_csv(styles: list[Style]) -> str:
    """A1111's styles.csv text for `styles` (csv quoting for commas, quotes and newlines)."""
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS)
    writer.writeheader()
    for style in styles:
        writer.writerow({"name": style.name, "prompt": style.prompt, "negative_prompt": style.negative_prompt})
    return out.getvalue()
