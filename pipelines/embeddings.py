"""Trigger-word embeddings that travel beside a LoRA file (pivotal tuning).

A LoRA trained with "train the trigger word's embedding" has a sidecar `<name>.embedding.safetensors` next to
`<name>.safetensors`: one tensor `emb_params` (AUTOMATIC1111's textual-inversion layout) and the word in its
metadata. While the LoRA is active the word in the prompt is rewritten to a token `<word>` that is added to the
tokenizer with the learned vector (diffusers' textual-inversion loader), so it overrides whatever the base
vocabulary says about the word; the token is removed again afterwards. The LoRA file itself stays a plain
diffusers LoRA. Outside the studio: `pipe.load_textual_inversion("<name>.embedding.safetensors", token="<word>")`.

Textual inversions from an A1111 models folder's embeddings/ use the same mechanism (`added_embeddings`): a prompt
that mentions an embedding's file name as a word gets it for that generation, as in A1111. Layouts read:
A1111 `.safetensors` (`emb_params`), diffusers' `{"<token>": tensor}`, SDXL's `clip_l` + `clip_g`, and A1111
`.pt` / diffusers `.bin` files (`string_to_param`), which are read with `torch.load(weights_only=True)` only, so a
pickle holding anything but plain tensors and values is refused. A multi-vector embedding becomes one token per
vector (`<name.0> <name.1> ...`) written into the prompt, so the studio's own weighted-prompt encoding and the
pipeline's plain one read it alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipelines.tensor_files import read_tensor_file

SIDECAR_SUFFIX = ".embedding.safetensors"
# text encoder width -> the family whose (first) text encoder has it, for messages
FAMILY_BY_WIDTH = {768: "SD 1.x", 1024: "SD 2.x"}
ENCODERS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"))


class EmbeddingError(ValueError):
    """A textual inversion that cannot be used: unreadable, an unknown layout, a refused pickle, or the wrong
    width for the model's text encoder."""


@dataclass
class TextualInversion:
    """Learned vectors for a word: text encoder attribute ("text_encoder", SDXL's "text_encoder_2") -> a
    (vectors, width) tensor. `path` is the file it came from, when one."""

    word: str
    vectors: dict
    path: Path | None = None

    @property
    def count(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def tokens(self) -> list[str]:
        """The added tokens: `<word>` for one vector, `<word.0> <word.1> ...` for several (never `<word>_1`,
        which the pipeline's own multi-vector rewriting would expand a second time)."""
        base = re.sub(r"\s+", "_", self.word)
        if self.count == 1:
            return [embedding_token(base)]
        return [embedding_token(f"{base}.{i}") for i in range(self.count)]


def embedding_token(word: str) -> str:
    """The added token that stands for a trained trigger word."""
    return f"<{word}>"


def sidecar_path(lora_path: str | Path) -> Path:
    lora_path = Path(lora_path)
    return lora_path.with_name(lora_path.name.removesuffix(".safetensors") + SIDECAR_SUFFIX)


def is_sidecar(path: str | Path) -> bool:
    return str(path).endswith(SIDECAR_SUFFIX)


def save_embedding(lora_path: str | Path, word: str, vector) -> Path:
    """Write the sidecar of `lora_path` atomically (temp file, then rename)."""
    import os

    from safetensors.torch import save_file

    path = sidecar_path(lora_path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"emb_params": vector.detach().reshape(1, -1).contiguous().cpu()}, str(tmp),
              metadata={"trigger_word": word})
    os.replace(tmp, path)
    return path


def load_embedding(lora_path: str | Path):
    """(word, vector) from the LoRA's sidecar, or None when it has none."""
    from safetensors import safe_open

    path = sidecar_path(lora_path)
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata()["trigger_word"], fh.get_tensor("emb_params")


def _as_rows(tensor, where: str):
    import torch

    if not isinstance(tensor, torch.Tensor) or tensor.ndim not in (1, 2) or tensor.numel() == 0:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise EmbeddingError(f"{where}: expected a (vectors, width) tensor, found {shape}")
    return tensor.detach().float().reshape(-1, tensor.shape[-1]).cpu()


def _vectors_of(data, where: str) -> dict:
    """The vectors per text encoder from the layouts in use (see the module doc)."""
    import torch

    if isinstance(data, torch.Tensor):
        return {"text_encoder": _as_rows(data, where)}
    if not isinstance(data, Mapping) or not data:
        raise EmbeddingError(f"{where}: not a textual inversion (found {type(data).__name__})")
    if "clip_l" in data or "clip_g" in data:
        found = {enc: _as_rows(data[key], where) for key, enc in (("clip_l", "text_encoder"),
                                                                   ("clip_g", "text_encoder_2")) if key in data}
        if len({v.shape[0] for v in found.values()}) > 1:
            raise EmbeddingError(f"{where}: clip_l and clip_g hold different numbers of vectors")
        return found
    if "emb_params" in data:
        return {"text_encoder": _as_rows(data["emb_params"], where)}
    if isinstance(data.get("string_to_param"), Mapping) and data["string_to_param"]:
        params = data["string_to_param"]
        return {"text_encoder": _as_rows(params.get("*", next(iter(params.values()))), where)}
    tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
    if len(data) == 1 and tensors:  # diffusers: {"<token>": tensor}
        return {"text_encoder": _as_rows(tensors[0], where)}
    keys = ", ".join(list(map(str, data))[:5])
    raise EmbeddingError(f"{where}: not a textual-inversion layout the studio reads (emb_params, string_to_param, "
                         f"clip_l/clip_g or one token); found keys {keys}")


def read_textual_inversion(path: Path, word: str | None = None) -> TextualInversion:
    """Read an embedding file (layouts in the module doc); `word` defaults to the file name without extension.
    Pickled files go through `torch.load(weights_only=True)` only; a pickle that needs more is refused."""
    path = Path(path)
    word = word or path.stem
    where = f"embedding {word!r} ({path.name})"
    data = read_tensor_file(path, where, EmbeddingError)
    return TextualInversion(word, _vectors_of(data, where), path)


def mentioned(texts, names) -> list[str]:
    """The names that the texts mention as words (case-insensitive, whole words: `easynegative,` yes,
    `easynegatives` no), longest first where one name contains another, each once."""
    found = []
    for name in sorted(names, key=len, reverse=True):
        pattern = re.compile(rf"(?<![\w<]){re.escape(name)}(?![\w>])", re.IGNORECASE)
        if any(pattern.search(text or "") for text in texts):
            found.append(name)
    return found


def use_trigger_tokens(text: str, words) -> str:
    """Rewrite each whole-word occurrence of a trained trigger word or embedding name to its token(s)
    (`star` -> `<star>`). `words` is a list of words (one token `<word>` each) or the word -> replacement
    mapping that `added_embeddings` yields. Longer words are matched first, in one pass."""
    table = dict(words) if isinstance(words, Mapping) else {word: embedding_token(word) for word in words}
    if not table:
        return text
    lookup = {word.lower(): replacement for word, replacement in table.items()}
    alternatives = "|".join(re.escape(word) for word in sorted(table, key=len, reverse=True))
    return re.sub(rf"(?<![\w<])(?:{alternatives})(?![\w>])", lambda m: lookup[m.group(0).lower()], text,
                  flags=re.IGNORECASE)


def _width(pipe, encoder: str) -> int | None:
    module = getattr(pipe, encoder, None)
    return None if module is None else module.get_input_embeddings().weight.shape[-1]


def _family(widths: dict) -> str:
    """The suffix ' (SD 1.x)' (or SD 2.x, SDXL) for the widths of an embedding or of a model's text encoders; ''
    when no family has them."""
    family = "SDXL" if widths.get("text_encoder_2") else FAMILY_BY_WIDTH.get(widths.get("text_encoder"), "")
    return f" ({family})" if family else ""


def check_widths(pipe, inversion: TextualInversion) -> None:
    """Raise EmbeddingError naming both widths when the vectors do not fit the pipeline's text encoder(s): the
    same encoders (one, or SDXL's two) and the same width for each."""
    model = {encoder: _width(pipe, encoder) for encoder, _ in ENCODERS if _width(pipe, encoder)}
    found = {encoder: vectors.shape[-1] for encoder, vectors in inversion.vectors.items()}
    if found != model:
        raise EmbeddingError(f"embedding {inversion.word!r} is {' + '.join(map(str, found.values()))} wide"
                             f"{_family(found)}; the model's text encoder takes "
                             f"{' + '.join(map(str, model.values()))}{_family(model)}")


@contextmanager
def added_embeddings(pipe, inversions):
    """Add these textual inversions to `pipe`'s tokenizer(s) and text encoder(s) for the duration; yields
    word -> replacement text for `use_trigger_tokens`. A word that two of them bring is taken from the first
    (case-insensitive). Every width is checked before anything is added; the tokens are removed afterwards."""
    chosen: dict[str, TextualInversion] = {}
    for inversion in inversions:
        chosen.setdefault(inversion.word.lower(), inversion)
    for inversion in chosen.values():
        check_widths(pipe, inversion)
    added: list[tuple[str, str, list[str]]] = []  # (text encoder, tokenizer, tokens)
    try:
        for encoder, tokenizer in ENCODERS:
            tokens, rows = [], []
            for inversion in chosen.values():
                if encoder in inversion.vectors:
                    tokens += inversion.tokens()
                    rows += list(inversion.vectors[encoder])
            if tokens:
                text_encoder = getattr(pipe, encoder)
                rows = [row.to(text_encoder.dtype) for row in rows]
                pipe.load_textual_inversion(rows, token=tokens, text_encoder=text_encoder,
                                            tokenizer=getattr(pipe, tokenizer))
                added.append((encoder, tokenizer, tokens))
        yield {inversion.word: " ".join(inversion.tokens()) for inversion in chosen.values()}
    finally:
        for encoder, tokenizer, tokens in reversed(added):
            pipe.unload_textual_inversion(tokens, tokenizer=getattr(pipe, tokenizer),
                                          text_encoder=getattr(pipe, encoder))


def sidecar_inversions(lora_paths) -> list[TextualInversion]:
    """The trigger-word embeddings that travel beside these LoRA files (those that have one)."""
    found = []
    for path in lora_paths:
        loaded = load_embedding(path)
        if loaded:
            found.append(TextualInversion(loaded[0], {"text_encoder": loaded[1].reshape(-1, loaded[1].shape[-1])},
                                          sidecar_path(path)))
    return found


@contextmanager
def trigger_embeddings(pipe, lora_paths):
    """Add the trigger embeddings of these LoRAs to `pipe` for the duration; yields word -> replacement for
    `use_trigger_tokens`. A word that two LoRAs both bring is taken from the first."""
    with added_embeddings(pipe, sidecar_inversions(lora_paths)) as words:
        yield words
