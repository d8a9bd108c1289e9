"""The metrics that read what an image shows: prompt adherence for the built-in model's images (the shapes-world
evaluator), and the CLIP score and LAION aesthetic score when their weights are on disk.

A metric that cannot be computed is reported as unavailable with its reason, never as a made-up number.
CLIP weights: an open_clip model folder (the Hugging Face layout: `open_clip_config.json` and
`open_clip_model.safetensors` or `open_clip_pytorch_model.bin`) under `<models>/CLIP/<name>/`. The LAION aesthetic
head (the linear or MLP predictor over ViT-L/14 image embeddings) as a `.pth` under `<models>/CLIP/aesthetic/`,
read with `torch.load(weights_only=True)` (tensors only, never arbitrary pickles).
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

import numpy as np

from studio.curation.embedding_store import EmbeddingStore

log = logging.getLogger(__name__)
BUILTIN_MODEL = "builtin:shapes"
CLIP_DIR = "CLIP"
AESTHETIC_DIR = "aesthetic"
_TAGS = re.compile(r"<[^<>]*>")  # <lora:name:0.8> and the like


def adherence(prompt: str, img, model: str) -> tuple[float | None, str | None]:
    """(the shapes-world evaluator's overall score 0..1, None) for the built-in model's images, else
    (None, why it is unavailable)."""
    if model != BUILTIN_MODEL:
        return None, "only for the built-in model's images (the shapes-world evaluator)"
    from training.evaluator import score

    text = _TAGS.sub(" ", prompt or "").strip()
    result = score(text, img.convert("RGB")) if text else {}
    if "overall" not in result:
        return None, "the prompt names nothing the shapes-world evaluator reads"
    return float(result["overall"]), None


def find_clip_model(models_root: Path) -> Path | None:
    """The first open_clip model folder under <models>/CLIP/, or None."""
    root = Path(models_root) / CLIP_DIR
    if not root.is_dir():
        return None
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name != AESTHETIC_DIR):
        weights = [folder / n for n in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")]
        if (folder / "open_clip_config.json").is_file() and any(w.is_file() for w in weights):
            return folder
    return None


def find_aesthetic_head(models_root: Path) -> Path | None:
    folder = Path(models_root) / CLIP_DIR / AESTHETIC_DIR
    found = sorted(folder.glob("*.pth")) if folder.is_dir() else []
    return found[0] if found else None


def load_aesthetic_head(path: Path):
    """The linear layers of a LAION aesthetic predictor `.pth` (tensors only), in order: [(weight, bias)].
    The predictor has no activations between its layers, so applying them in turn is the whole model."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise ValueError(f"{path.name} is not a state dict of tensors")
    prefixes = sorted({k[:-len(".weight")] if k.endswith(".weight") else "" for k in state
                       if k.endswith("weight")},
                      key=lambda p: [int(t) if t.isdigit() else t for t in re.split(r"[.]", p)])
    layers = []
    for prefix in prefixes:
        dot = f"{prefix}." if prefix else ""
        weight, bias = state[f"{dot}weight"], state.get(f"{dot}bias")
        if weight.ndim != 2:
            raise ValueError(f"{path.name}: {dot}weight is not a linear layer")
        layers.append((weight.float(), None if bias is None else bias.float()))
    if not layers or layers[-1][0].shape[0] != 1:
        raise ValueError(f"{path.name} does not end in one output (not an aesthetic predictor)")
    return layers


class ClipScorer:
    """CLIP score and LAION aesthetic score with open-clip-torch, one embedding pass per image: each image's
    embedding is stored once (an EmbeddingStore under `<cache_dir>/<model folder name>/`) and reused while the
    image's stamp matches, for near-duplicate grouping and search by meaning. Runs in the calling process."""

    def __init__(self, models_root: Path, cache_dir: Path):
        self.models_root = Path(models_root)
        self.cache_dir = Path(cache_dir)
        self._lock = threading.Lock()
        self._loaded = None
        self._stores: dict[str, EmbeddingStore] = {}

    def unavailable(self) -> dict[str, str]:
        """metric -> reason, for the CLIP metrics that cannot run here (empty when both can)."""
        out = {}
        clip_dir = self.models_root / CLIP_DIR
        if find_clip_model(self.models_root) is None:
            reason = f"unavailable (no CLIP weights in {clip_dir})"
            return {"clip_score": reason, "aesthetic": reason}
        if find_aesthetic_head(self.models_root) is None:
            out["aesthetic"] = f"unavailable (no aesthetic head .pth in {clip_dir / AESTHETIC_DIR})"
        return out

    def embeddings(self) -> EmbeddingStore | None:
        """The embedding store of the CLIP model on disk (None without one). The first open takes in the
        `<id>.npy` files the former per-image cache left in `cache_dir`."""
        folder = find_clip_model(self.models_root)
        if folder is None:
            return None
        with self._lock:
            if folder.name not in self._stores:
                store = EmbeddingStore(self.cache_dir / folder.name)
                if store.import_npy_files(self.cache_dir):
                    log.info("took the per-image CLIP embedding files into %s", store.root)
                self._stores[folder.name] = store
            return self._stores[folder.name]

    def _load(self):
        if self._loaded is None:
            import open_clip
            import torch

            folder = find_clip_model(self.models_root)
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
            tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
            model.eval()
            head = find_aesthetic_head(self.models_root)
            layers = load_aesthetic_head(head) if head is not None else None
            self._loaded = (torch, model, preprocess, tokenizer, layers)
        return self._loaded

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Unit-norm text embeddings (float32, one row per text)."""
        with self._lock:
            torch, model, _, tokenizer, _ = self._load()
            with torch.no_grad():
                text = model.encode_text(tokenizer(list(texts))).float()
            return (text / text.norm(dim=-1, keepdim=True)).numpy()

    def _image_embeddings(self, items, stamps: list[str] | None) -> np.ndarray:
        """Unit-norm image embeddings of `items`: stored ones whose stamp matches, the others computed (one
        pass) and stored."""
        store = self.embeddings()
        ids = [image_id for image_id, _, _ in items]
        stamps = list(stamps) if stamps is not None else None
        known = store.stamps(ids)
        reuse = [i for n, i in enumerate(ids) if i in known and (stamps is None or known[i] == stamps[n])]
        found, rows = store.get_many(reuse)
        vectors = dict(zip(found, rows.astype(np.float32)))
        todo = [n for n, image_id in enumerate(ids) if image_id not in vectors]
        if todo:
            with self._lock:
                torch, model, preprocess, _, _ = self._load()
                with torch.no_grad():
                    pixels = torch.stack([preprocess(_image(items[n][1]).convert("RGB")) for n in todo])
                    image = model.encode_image(pixels).float()
                    image = (image / image.norm(dim=-1, keepdim=True)).numpy()
            store.put_many([ids[n] for n in todo], image, [stamps[n] for n in todo] if stamps else None)
            stored = image.astype(np.float16).astype(np.float32)  # as stored: a re-run scores the same
            vectors.update((ids[n], stored[k]) for k, n in enumerate(todo))
        return np.stack([vectors[i] for i in ids])

    def score(self, items: list[tuple[str, object, str]], stamps: list[str] | None = None) -> list[dict]:
        """[(image id, PIL image or a function that opens it, prompt)] -> [{"clip_score": ..., "aesthetic":
        ...}] (keys only where computable; a prompt-less image gets no CLIP score). `stamps` (one per item, e.g.
        the file's size and time) decide whether a stored embedding still fits its image; without them any
        stored embedding of the id is used."""
        if not items or find_clip_model(self.models_root) is None:
            return [{} for _ in items]
        image = self._image_embeddings(items, stamps)
        prompts = [p or "" for _, _, p in items]
        text = self.encode_text(prompts)
        out = [{"clip_score": float(image[i] @ text[i])} if prompts[i] else {} for i in range(len(items))]
        layers = self._load()[4]
        if layers is not None and layers[0][0].shape[1] == image.shape[1]:
            x = image
            for weight, bias in layers:
                x = x @ weight.numpy().T + (bias.numpy() if bias is not None else 0)
            for i, value in enumerate(x[:, 0].tolist()):
                out[i]["aesthetic"] = float(value)
        return out


def _image(source):
    """A PIL image, or what a zero-argument opener returns."""
    return source() if callable(source) else source
