"""Trigger-word embeddings that travel beside a LoRA file (pivotal tuning).

A LoRA trained with "train the trigger word's embedding" has a sidecar `<name>.embedding.safetensors` next to
`<name>.safetensors`: one tensor `emb_params` (AUTOMATIC1111's textual-inversion layout) and the word in its
metadata. While the LoRA is active the word in the prompt is rewritten to a token `<word>` that is added to the
tokenizer with the learned vector (diffusers' textual-inversion loader), so it overrides whatever the base
vocabulary says about the word; the token is removed again afterwards. The LoRA file itself stays a plain
diffusers LoRA. Outside the studio: `pipe.load_textual_inversion("<name>.embedding.safetensors", token="<word>")`.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path

SIDECAR_SUFFIX = ".embedding.safetensors"


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


def use_trigger_tokens(text: str, words) -> str:
    """Rewrite each whole-word occurrence of a trained trigger word to its token (`star` -> `<star>`)."""
    for word in words:
        text = re.sub(rf"(?<![\w<]){re.escape(word)}(?![\w>])", embedding_token(word), text, flags=re.IGNORECASE)
    return text


@contextmanager
def trigger_embeddings(pipe, lora_paths):
    """Add the trigger embeddings of these LoRAs to `pipe` for the duration; yields the words to rewrite.
    A word that two LoRAs both bring is taken from the first."""
    found = {}
    for path in lora_paths:
        loaded = load_embedding(path)
        if loaded and loaded[0] not in found:
            found[loaded[0]] = loaded[1]
    tokens = [embedding_token(word) for word in found]
    if tokens:
        pipe.load_textual_inversion([v.reshape(-1, v.shape[-1]) for v in found.values()], token=tokens)
    try:
        yield list(found)
    finally:
        if tokens:
            pipe.unload_textual_inversion(tokens)
