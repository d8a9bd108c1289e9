"""PromptLibrary: the prompt library's stores and helpers behind one object, built once by the composition root;
and `prepare`, which turns what the Generate tab holds (a template, styles, a negative template) into the
prompt and negative prompt a generation runs with."""

from __future__ import annotations

import re
import time
from pathlib import Path

from studio.errors import ValidationError
from studio.prompts.builder import BuilderLists
from studio.prompts.history import PromptHistory
from studio.prompts.presets import PresetCollection
from studio.prompts.saved_prompts import SavedPrompts
from studio.prompts.styles import CSV_COLUMNS, Style, apply_styles, extract_styles, merge, read_styles_csv, \
    write_styles_csv
from studio.prompts.templates import TemplateExpander
from studio.prompts.wildcards import Wildcards, wildcard_folders
from studio.settings import PROJECT_ROOT

SHIPPED_STYLES = PROJECT_ROOT / "assets" / "prompt-styles.csv"
SHIPPED_NEGATIVES = PROJECT_ROOT / "assets" / "negative-templates.csv"
NEGATIVE_COLUMNS = ("name", "negative_prompt")
TEMPLATE_SYNTAX = re.compile(r"__[\w\-/ ]+?__|\{[^{}]*\|")
MAX_CSV_BYTES = 5 * 2**20


class PromptLibrary:
    """Saved prompts, styles, negative templates, wildcards and templates, history and the builder's lists, all
    under one data dir (stores in `<data>/db/`)."""

    def __init__(self, data_dir: Path, shipped_styles: Path = SHIPPED_STYLES,
                 shipped_negatives: Path = SHIPPED_NEGATIVES):
        from studio.stores.atomic_storage import JsonStore

        self.data_dir = Path(data_dir)
        db = self.data_dir / "db"
        self.saved = SavedPrompts(JsonStore(db / "prompts.json"))
        self.styles = PresetCollection(shipped_styles, JsonStore(db / "prompt_styles.json"), CSV_COLUMNS, "style")
        self.negatives = PresetCollection(shipped_negatives, JsonStore(db / "negative_templates.json"),
                                          NEGATIVE_COLUMNS, "negative_template")
        self.history = PromptHistory(JsonStore(db / "prompt_history.json"))
        self.wildcards = Wildcards(wildcard_folders(self.data_dir))
        self.templates = TemplateExpander(self.wildcards)
        self.builder = BuilderLists(self.data_dir)

    # ------------------------------------------------------------------ applying to a generation
    @staticmethod
    def is_template(text: str | None) -> bool:
        """Whether a prompt uses template syntax (`{a|b}` or `__wildcard__`)."""
        return bool(TEMPLATE_SYNTAX.search(text or ""))

    def style_objects(self, names) -> list[Style]:
        return [Style(**{c: p[c] for c in CSV_COLUMNS}) for p in (self.styles.get(n) for n in names or [])]

    def prepare(self, prompt: str, negative_prompt: str = "", styles=(), negative_template: str = "",
                seed: int | None = None) -> tuple[str, str]:
        """The prompt and negative prompt to generate with: a template expanded for `seed` (only when the prompt
        uses `{a|b}` or `__wildcard__`), then the negative template, then the styles, in order."""
        prompt, negative_prompt = prompt or "", negative_prompt or ""
        if seed is not None and self.is_template(prompt):
            prompt = self.templates.expand(prompt, seed, field="prompt")
        if seed is not None and self.is_template(negative_prompt):
            negative_prompt = self.templates.expand(negative_prompt, seed, field="negative_prompt")
        if negative_template:
            negative_prompt = merge(self.negatives.get(negative_template)["negative_prompt"], negative_prompt)
        return apply_styles(prompt, negative_prompt, self.style_objects(styles))

    def extract_styles(self, prompt: str, negative_prompt: str = "") -> tuple[list[str], str, str]:
        """The styles a styled prompt (e.g. read from an infotext) was made with, and the prompts without them."""
        return extract_styles(prompt or "", negative_prompt or "", self.style_objects(self.styles.names()))

    # ------------------------------------------------------------------ styles.csv
    def import_styles_csv(self, path) -> int:
        """Add (or replace, by name) the styles of an A1111 styles.csv; returns how many."""
        path = Path(path or "")
        if not path.is_file():
            raise ValidationError("styles_csv: choose a styles.csv file to import", "styles_csv")
        if path.stat().st_size > MAX_CSV_BYTES:
            raise ValidationError(f"styles_csv is larger than {MAX_CSV_BYTES // 2**20} MB", "styles_csv")
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:  # keeps \r\n inside fields
            styles = read_styles_csv(fh.read())
        return self.styles.save_many([{"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt}
                                      for s in styles])

    def export_styles_csv(self, user_only: bool = False) -> Path:
        """Every style (or the user's only) as an A1111 styles.csv under `<data>/exports/`; returns its path."""
        chosen = [p for p in self.styles.list() if not user_only or p["source"] == "user"]
        text = write_styles_csv([Style(p["name"], p["prompt"], p["negative_prompt"]) for p in chosen])
        out = self.data_dir / "exports" / f"styles-{time.strftime('%Y%m%d-%H%M%S')}.csv"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8-sig", newline="")
        return out
