"""Prompt templates: `{red|green|blue}` picks one choice (choices nest: `{a {big|small}|the} cat`), `__color__` a
line of a wildcard file (whose lines may be templates too), and `{name}` a value of `variables[name]` (the
Schedule tab's variables). Expansion is seeded: one template and one seed always give the same prompt.

Without `variables`, `{word}` (no `|`) stays as written, so A1111's `{prompt}` and other braces survive."""

from __future__ import annotations

import random
import re

from studio.errors import ValidationError, check_range
from studio.prompts.wildcards import Wildcards

WILDCARD_RE = re.compile(r"__([\w\-/ ]+?)__")
MAX_DEPTH = 20  # wildcards that name each other stop here
MAX_SAMPLES = 100


def _split_top(text: str, start: int, field: str) -> tuple[list[str], int]:
    """The `|`-separated parts of the braces opened at `start` and the index after their `}`."""
    parts, depth, begin, i = [], 0, start + 1, start + 1
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                parts.append(text[begin:i])
                return parts, i + 1
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(text[begin:i])
            begin = i + 1
        i += 1
    raise ValidationError(f"{field}: the {{ at character {start + 1} is never closed in {text!r}", field)


class TemplateExpander:
    """Expands templates over one set of wildcard files."""

    def __init__(self, wildcards: Wildcards):
        self.wildcards = wildcards

    def expand(self, template: str, seed: int | random.Random, variables: dict[str, list[str]] | None = None,
               field: str = "template") -> str:
        """The prompt `template` gives for `seed` (an int or a random.Random to draw from)."""
        rng = seed if isinstance(seed, random.Random) else random.Random(int(seed))
        return self._expand(template or "", rng, variables, field, 0)

    def samples(self, template: str, n: int, seed: int, variables: dict[str, list[str]] | None = None,
                field: str = "template") -> list[str]:
        """N prompts, sample i being the template's prompt for seed + i."""
        n = check_range("samples", n, 1, MAX_SAMPLES, int)
        seed = check_range("seed", seed, 0, 2**32 - 1, int)
        return [self.expand(template, seed + i, variables, field) for i in range(n)]

    def check(self, template: str, variables: dict[str, list[str]] | None = None, field: str = "template") -> None:
        """Raise ValidationError for an unclosed brace, an empty choice, an unknown variable or a missing (or
        empty) wildcard anywhere in the template, whatever the seed would pick."""
        self._walk(template or "", variables, field, 0, set())

    # ------------------------------------------------------------------ internals
    def _expand(self, text: str, rng: random.Random, variables, field: str, depth: int) -> str:
        out, i = [], 0
        while i < len(text):
            char = text[i]
            if char == "\\" and i + 1 < len(text) and text[i + 1] in "{}|_":
                out.append(text[i + 1])
                i += 2
            elif char == "{":
                start = i
                choice, i = self._choice(text, i, variables, field)
                if choice is None:  # {word} kept as written
                    out.append(text[start:i])
                else:
                    out.append(self._expand(rng.choice(choice), rng, variables, field, depth + 1))
            elif char == "_" and (match := WILDCARD_RE.match(text, i)):
                self._deep(depth, match.group(1), field)
                option = rng.choice(self.wildcards.options(match.group(1)))
                out.append(self._expand(option, rng, variables, field, depth + 1))
                i = match.end()
            else:
                out.append(char)
                i += 1
        return "".join(out)

    def _choice(self, text: str, start: int, variables, field: str) -> tuple[list[str] | None, int]:
        """The alternatives of the braces opened at `start` (None: a `{word}` kept as written) and the index
        after them."""
        parts, end = _split_top(text, start, field)
        raw = text[start + 1:end - 1]
        if len(parts) > 1:
            if not all(part.strip() for part in parts):
                raise ValidationError(f"{field}: empty choice in {{{raw}}}", field)
            return [part.strip() for part in parts], end
        name = raw.strip()
        if variables is None:
            return None, end
        if name not in variables:
            known = ", ".join(sorted(variables)) or "none defined"
            raise ValidationError(f"{field}: unknown variable {{{raw}}} (variables: {known})", field)
        return list(variables[name]), end

    def _walk(self, text: str, variables, field: str, depth: int, checked: set) -> None:
        i = 0
        while i < len(text):
            if text[i] == "\\":
                i += 2
            elif text[i] == "{":
                choice, i = self._choice(text, i, variables, field)
                for alternative in choice or []:
                    self._walk(alternative, variables, field, depth + 1, checked)
            elif text[i] == "_" and (match := WILDCARD_RE.match(text, i)):
                name = match.group(1)
                self._deep(depth, name, field)
                if name not in checked:
                    checked.add(name)
                    for option in self.wildcards.options(name):
                        if "{" in option or "__" in option:
                            self._walk(option, variables, field, depth + 1, checked)
                i = match.end()
            else:
                i += 1

    @staticmethod
    def _deep(depth: int, name: str, field: str) -> None:
        if depth >= MAX_DEPTH:
            raise ValidationError(f"{field}: wildcards nest deeper than {MAX_DEPTH} levels at __{name}__ (does a "
                                  "wildcard name itself?)", field)
