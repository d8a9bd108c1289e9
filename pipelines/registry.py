"""Where models come from: the built-in model, an A1111-style models folder, and Hugging Face ids.

Model ids shown to the user:
  builtin:shapes                     the shipped shapes-world model (assets/builtin-shapes)
  local:<path under Stable-diffusion> a diffusers folder or a single-file .safetensors checkpoint
  hf:<owner>/<name>                  a Hugging Face repo id (downloaded on first use when online)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipelines.embeddings import is_sidecar

BUILTIN_ID = "builtin:shapes"
CHECKPOINT_DIR = "Stable-diffusion"
LORA_DIR = "Lora"
LYCORIS_DIR = "LyCORIS"
EMBEDDINGS_DIR = "embeddings"
VAE_DIR = "VAE"
CONTROLNET_DIR = "ControlNet"
UPSCALER_DIR = "ESRGAN"
HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
SINGLE_FILE_EXT = (".safetensors",)
UNSAFE_EXT = (".ckpt", ".pt", ".pth", ".bin")
EMBEDDING_EXT = (".safetensors", ".pt", ".bin")  # pickles are read with torch.load(weights_only=True) or refused
VAE_EXT = (".safetensors", ".pt", ".ckpt")  # likewise
VAE_BESIDE = tuple(f".vae{ext}" for ext in VAE_EXT)  # A1111: <checkpoint name>.vae.safetensors next to it


class ModelNotFound(LookupError):
    """The requested model id does not name an installed or downloadable model."""


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: how to load it and from where."""

    id: str
    kind: str  # builtin | diffusers | single_file | hub
    location: str  # folder/file path, or the hub repo id
    family: str = "sd"  # sd | sdxl

    @property
    def label(self) -> str:
        return self.id.split(":", 1)[1]


RECOMMENDED_FILE = "generation_defaults.json"
DEFAULT_GENERATION = {"cfg_scale": 7.0, "cfg_rescale": 0.0}


def recommended_settings(source: ModelSource) -> dict:
    """The generation settings a model folder recommends in its generation_defaults.json (CFG scale, CFG
    rescale), over the studio's defaults; unknown keys and unreadable files are ignored."""
    settings = dict(DEFAULT_GENERATION)
    path = Path(source.location) / RECOMMENDED_FILE
    if source.kind in ("builtin", "diffusers") and path.is_file():
        try:
            found = json.loads(path.read_text())
        except (OSError, ValueError):
            return settings
        settings.update({k: float(v) for k, v in found.items() if k in settings and isinstance(v, (int, float))})
    return settings


def check_relative_name(name: str, field: str = "name") -> str:
    """Refuse names that could escape a folder (``..``, absolute paths, backslashes, NUL)."""
    if not name or "\x00" in name or "\\" in name or name.startswith("/") or ".." in Path(name).parts:
        raise ValueError(f"{field} must be a plain relative name without '..' or absolute paths; got {name!r}")
    return name


def detect_family_from_index(folder: Path) -> str:
    index = json.loads((folder / "model_index.json").read_text())
    return "sdxl" if "XL" in index.get("_class_name", "") or "text_encoder_2" in index else "sd"


def detect_family_from_file(path: Path) -> str:
    """"sd" or "sdxl" for a single-file checkpoint, from its safetensors header (and an A1111 .yaml beside it);
    a corrupt, non-checkpoint or unknown-family file raises ValueError naming what it holds."""
    from pipelines.single_file import resolve_family

    return resolve_family(Path(path)).family.base


def diffusers_folder_above(path: Path, root: Path) -> Path | None:
    """The diffusers model folder (one with model_index.json) that `path` lies inside, below `root`; None when
    `path` is not part of one."""
    for parent in Path(path).parents:
        if parent == root or root not in parent.parents:
            return None
        if (parent / "model_index.json").is_file():
            return parent
    return None


def is_vae_beside(path: Path) -> bool:
    """A `<checkpoint>.vae.safetensors` beside a checkpoint: the checkpoint's VAE (A1111), not a model."""
    return path.name.lower().endswith(".vae" + path.suffix.lower())


class ModelRegistry:
    """Lists and resolves models; knows nothing about loading them."""

    def __init__(self, builtin_dir: Path, models_dir: Path, offline: bool = False):
        self.builtin_dir = Path(builtin_dir)
        self.models_dir = Path(models_dir)
        self.offline = offline

    def builtin_available(self) -> bool:
        return (self.builtin_dir / "model_index.json").exists()

    def checkpoints_dir(self) -> Path:
        return self.models_dir / CHECKPOINT_DIR

    def list_models(self) -> list[ModelSource]:
        """Every installed model, the built-in one first."""
        found = []
        if self.builtin_available():
            found.append(ModelSource(BUILTIN_ID, "builtin", str(self.builtin_dir)))
        root = self.checkpoints_dir()
        if root.is_dir():
            folders: list[Path] = []  # diffusers folders: one model each, nothing inside them is listed
            for path in sorted(root.rglob("*")):
                if any(folder in path.parents for folder in folders):
                    continue
                rel = path.relative_to(root).as_posix()
                if path.is_dir() and (path / "model_index.json").exists():
                    folders.append(path)
                    found.append(ModelSource(f"local:{rel}", "diffusers", str(path), self._safe_family(path)))
                elif path.is_file() and path.suffix.lower() in SINGLE_FILE_EXT and not is_vae_beside(path):
                    found.append(ModelSource(f"local:{rel}", "single_file", str(path)))
        return found

    @staticmethod
    def _safe_family(folder: Path) -> str:
        try:
            return detect_family_from_index(folder)
        except (OSError, ValueError):
            return "sd"

    def resolve(self, model_id: str) -> ModelSource:
        """Turn a model id (or a bare Hugging Face id) into a ModelSource, or raise a clear error."""
        model_id = (model_id or "").strip()
        if not model_id:
            raise ModelNotFound(self.no_model_message())
        if model_id == BUILTIN_ID:
            if not self.builtin_available():
                raise ModelNotFound(self.no_model_message())
            return ModelSource(BUILTIN_ID, "builtin", str(self.builtin_dir))
        if model_id.startswith("local:"):
            rel = check_relative_name(model_id[len("local:"):], "model")
            path = self.checkpoints_dir() / rel
            if path.suffix.lower() in UNSAFE_EXT:
                raise ValueError(f"model {rel}: pickled checkpoints ({', '.join(UNSAFE_EXT)}) are refused; "
                                 "convert it to .safetensors")
            folder = diffusers_folder_above(path, self.checkpoints_dir())
            if folder is not None:
                whole = folder.relative_to(self.checkpoints_dir()).as_posix()
                raise ValueError(f"model {rel!r} is a part of the diffusers model {whole!r}, not a model of its "
                                 f"own; pick 'local:{whole}'")
            if path.is_dir() and (path / "model_index.json").exists():
                return ModelSource(model_id, "diffusers", str(path), detect_family_from_index(path))
            if path.is_file() and path.suffix.lower() in SINGLE_FILE_EXT:
                return ModelSource(model_id, "single_file", str(path), detect_family_from_file(path))
            raise ModelNotFound(f"model {rel!r} is not under {self.checkpoints_dir()}")
        repo = model_id[3:] if model_id.startswith("hf:") else model_id
        if not HF_ID.match(repo) or ".." in repo:
            raise ValueError(f"model must be an installed model or a Hugging Face id like 'owner/name'; got {model_id!r}")
        if self.offline:
            raise ModelNotFound(f"model {repo!r} is a Hugging Face id, but the studio runs offline (--offline); "
                                f"download it elsewhere and put it under {self.checkpoints_dir()}")
        return ModelSource(f"hf:{repo}", "hub", repo, "sdxl" if "xl" in repo.lower() else "sd")

    def no_model_message(self) -> str:
        return (f"No model is installed. Put a diffusers folder or a .safetensors checkpoint under "
                f"{self.checkpoints_dir()}, or type a Hugging Face id (e.g. stabilityai/sd-turbo) when online.")

    def lora_files(self) -> dict[str, Path]:
        """LoRA name -> file for every .safetensors under the models folder's Lora/ and LyCORIS/ (and their
        sub-folders), by path relative to its folder without the extension: one namespace, as in A1111. On a name
        clash the file under Lora/ wins."""
        found: dict[str, Path] = {}
        for folder in (LORA_DIR, LYCORIS_DIR):
            root = self.models_dir / folder
            if not root.is_dir():
                continue
            for p in sorted(root.rglob("*.safetensors")):
                if not is_sidecar(p):
                    found.setdefault(p.relative_to(root).with_suffix("").as_posix(), p)
        return found

    def embedding_files(self) -> dict[str, Path]:
        """Textual-inversion name -> file for every embedding under the models folder's embeddings/ (and
        sub-folders). The name is the file name without its extension, the word a prompt uses (as in A1111); on a
        clash the first file in path order wins."""
        root = self.models_dir / EMBEDDINGS_DIR
        if not root.is_dir():
            return {}
        found: dict[str, Path] = {}
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix.lower() in EMBEDDING_EXT:
                found.setdefault(p.stem, p)
        return found

    def vae_files(self) -> dict[str, Path]:
        """VAE name -> file for every VAE under the models folder's VAE/ (and sub-folders); the name is the path
        relative to VAE/ with its extension, as A1111 lists and records it."""
        root = self.models_dir / VAE_DIR
        if not root.is_dir():
            return {}
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*"))
                if p.is_file() and p.suffix.lower() in VAE_EXT}

    @staticmethod
    def vae_beside(checkpoint: Path) -> Path | None:
        """A1111's per-checkpoint VAE: `<checkpoint name>.vae.safetensors` (or .vae.pt / .vae.ckpt) in the same
        folder as a single-file checkpoint, or None."""
        checkpoint = Path(checkpoint)
        stem = checkpoint.name[: -len(checkpoint.suffix)] if checkpoint.suffix else checkpoint.name
        return next((c for c in (checkpoint.with_name(stem + ext) for ext in VAE_BESIDE) if c.is_file()), None)
