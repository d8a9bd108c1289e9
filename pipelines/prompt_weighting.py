"""AUTOMATIC1111 prompt syntax for diffusers pipelines: attention weights, BREAK, long prompts, LoRA tags.

`(word)` x1.1, `((word))` x1.21, `[word]` /1.1, `(word:1.4)`, `\\(` literal bracket, `BREAK` starts a new
75-token chunk; prompts longer than 75 tokens are encoded chunk by chunk and concatenated (A1111's way) instead
of being cut. Written by hand (after A1111's `prompt_parser.py`) because compel uses different syntax and
semantics; a prompt without weights is left to diffusers' own encoder, so its image is pixel-identical.
"""

from __future__ import annotations

import re

RE_ATTENTION = re.compile(r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:
""", re.X)
RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
RE_LORA = re.compile(r"<lora:([^:>]+)(?::([-+]?\d*\.?\d+))?>")
ROUND, SQUARE = 1.1, 1 / 1.1
BREAK = -1.0


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs; a ("BREAK", -1) entry marks a forced chunk break."""
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            if res[p][1] != BREAK:
                res[p][1] *= multiplier

    for m in RE_ATTENTION.finditer(text):
        piece, weight = m.group(0), m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_brackets.append(len(res))
        elif piece == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif piece == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND)
        elif piece == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE)
        else:
            for i, part in enumerate(RE_BREAK.split(piece)):
                if i > 0:
                    res.append(["BREAK", BREAK])
                res.append([part, 1.0])
    for pos in round_brackets:
        multiply_range(pos, ROUND)
    for pos in square_brackets:
        multiply_range(pos, SQUARE)
    if not res:
        res = [["", 1.0]]
    i = 0
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1] and res[i][1] != BREAK:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(t, w) for t, w in res]


def extract_lora_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Remove `<lora:name:weight>` tags; returns the clean prompt and [(name, weight)] (weight 1.0 if absent)."""
    tags = [(m.group(1).strip(), float(m.group(2)) if m.group(2) else 1.0) for m in RE_LORA.finditer(prompt or "")]
    clean = re.sub(r"\s{2,}", " ", RE_LORA.sub("", prompt or "")).strip()
    return clean, tags


def _weighted_tokens(tokenizer, prompt: str) -> list[list[tuple[int, float]]]:
    """Token ids with weights, split into chunks of at most (model_max_length - 2) tokens."""
    size = tokenizer.model_max_length - 2
    chunks: list[list[tuple[int, float]]] = [[]]
    for text, weight in parse_prompt_attention(prompt):
        if weight == BREAK:
            chunks.append([])
            continue
        ids = tokenizer(text, add_special_tokens=False, truncation=False).input_ids if text else []
        for token in ids:
            if len(chunks[-1]) == size:
                chunks.append([])
            chunks[-1].append((token, weight))
    return chunks


def has_weighting(prompt: str, tokenizer=None) -> bool:
    """True when the prompt needs our encoder: weights other than 1, BREAK, or more tokens than one chunk."""
    if not prompt:
        return False
    parsed = parse_prompt_attention(prompt)
    if any(w != 1.0 for _, w in parsed):
        return True
    if tokenizer is not None:
        return len(_weighted_tokens(tokenizer, prompt)) > 1
    return False


def _chunk_ids(tokenizer, chunk: list[tuple[int, float]]):
    """[BOS] + tokens + [EOS] + padding to model_max_length, like diffusers' padding="max_length"."""
    length = tokenizer.model_max_length
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id] + [t for t, _ in chunk] + [tokenizer.eos_token_id]
    weights = [1.0] + [w for _, w in chunk] + [1.0]
    ids += [pad] * (length - len(ids))
    weights += [1.0] * (length - len(weights))
    return ids, weights


def _apply_weights(z, weights):
    """A1111: scale token embeddings by their weights, then restore the chunk's original mean."""
    import torch

    if all(w == 1.0 for w in weights):
        return z
    original_mean = z.mean()
    w = torch.tensor(weights, dtype=z.dtype, device=z.device).reshape(1, -1, 1)
    z = z * w
    return z * (original_mean / z.mean())


def _encode_sd(pipe, prompt: str, n_chunks: int, device):
    import torch

    chunks = _weighted_tokens(pipe.tokenizer, prompt)
    chunks += [[]] * (n_chunks - len(chunks))
    out = []
    for chunk in chunks:
        ids, weights = _chunk_ids(pipe.tokenizer, chunk)
        with torch.no_grad():
            z = pipe.text_encoder(torch.tensor([ids], device=device))[0]
        out.append(_apply_weights(z, weights))
    return torch.cat(out, dim=1).to(pipe.text_encoder.dtype)


def _encode_sdxl(pipe, prompt: str, n_chunks: int, device):
    import torch

    pieces, pooled = [], None
    chunk_lists = [_weighted_tokens(tok, prompt) for tok in (pipe.tokenizer, pipe.tokenizer_2)]
    for c in range(n_chunks):
        per_encoder = []
        for tok, enc, chunks in ((pipe.tokenizer, pipe.text_encoder, chunk_lists[0]),
                                 (pipe.tokenizer_2, pipe.text_encoder_2, chunk_lists[1])):
            ids, weights = _chunk_ids(tok, chunks[c] if c < len(chunks) else [])
            with torch.no_grad():
                out = enc(torch.tensor([ids], device=device), output_hidden_states=True)
            if enc is pipe.text_encoder_2 and pooled is None:
                pooled = out[0]
            per_encoder.append(_apply_weights(out.hidden_states[-2], weights))
        pieces.append(torch.cat(per_encoder, dim=-1))
    return torch.cat(pieces, dim=1), pooled


def encode_weighted_prompt(pipe, prompt: str, negative_prompt: str, device) -> dict:
    """Pipeline kwargs (prompt_embeds, negative_prompt_embeds[, pooled...]) for A1111-weighted prompts."""
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if sdxl else [])
    n_chunks = max(len(_weighted_tokens(tok, text)) for tok in tokenizers for text in (prompt, negative_prompt or ""))
    if not sdxl:
        return {"prompt_embeds": _encode_sd(pipe, prompt, n_chunks, device),
                "negative_prompt_embeds": _encode_sd(pipe, negative_prompt or "", n_chunks, device)}
    import torch

    pos, pos_pooled = _encode_sdxl(pipe, prompt, n_chunks, device)
    if not negative_prompt and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        neg, neg_pooled = torch.zeros_like(pos), torch.zeros_like(pos_pooled)
    else:
        neg, neg_pooled = _encode_sdxl(pipe, negative_prompt or "", n_chunks, device)
    return {"prompt_embeds": pos, "negative_prompt_embeds": neg, "pooled_prompt_embeds": pos_pooled,
            "negative_pooled_prompt_embeds": neg_pooled}
