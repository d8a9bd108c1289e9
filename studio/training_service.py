"""LoRA training runs for the Train tab: datasets, background runs with live state, history, resume, compare."""

from __future__ import annotations

import logging
import math
import re
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from pipelines.embeddings import sidecar_path, trigger_embeddings, use_trigger_tokens
from pipelines.loras import load_lora_file
from pipelines.registry import recommended_settings
from studio.errors import BusyError, StudioError, ValidationError, check_range
from studio.paths import PathGuard
from training.captions import caption_variants, join_variants
from training.curves import smooth
from training.lora_trainer import (LR_SCHEDULERS, PRECISIONS, LoraTrainer, LoraTrainingConfig, TrainingEvent,
                                   TrainingSample, list_checkpoints, saved_loss_history)
from training.recipes import LORA_LAYERS, PRESET_FIELDS, PRESETS  # the Train tab's presets (one table for all recipes)

log = logging.getLogger(__name__)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}


@dataclass
class DatasetItem:
    path: str
    caption: str


QUICK = PRESETS["quick"]


@dataclass
class TrainingRequest:
    """What the Train tab (or an API client) asks for: the dataset and every parameter as the person set them;
    `TrainingService.train` checks it and turns it into the trainer's LoraTrainingConfig."""

    dataset: list[DatasetItem]
    base_model: str
    name: str = "my-lora"
    rank: int = QUICK["rank"]
    alpha: float = QUICK["alpha"]
    learning_rate: float = QUICK["learning_rate"]
    lr_scheduler: str = QUICK["lr_scheduler"]
    max_steps: int = QUICK["max_steps"]
    epochs: float = 0  # > 0: train this many passes over the dataset instead of max_steps
    batch_size: int = QUICK["batch_size"]
    resolution: int = 128
    seed: int = 0
    validation_prompts: str = ""  # one per line
    validation_every: int = QUICK["validation_every"]
    checkpoint_every: int = QUICK["checkpoint_every"]
    flip: bool = False
    random_crop: bool = False
    train_text_encoder: bool = False
    text_encoder_learning_rate: float = 0.0
    loraplus_lr_ratio: float = 1.0
    lora_dropout: float = QUICK["lora_dropout"]
    lora_layers: str = QUICK["lora_layers"]  # a LORA_LAYERS choice
    train_embedding: bool = QUICK["train_embedding"]
    embedding_init: str = ""
    embedding_learning_rate: float = QUICK["embedding_learning_rate"]
    embedding_only_steps: int = 0
    color_jitter: float = 0.0
    caption_dropout: float = 0.0
    subject_weight: float = QUICK["subject_weight"]
    min_snr_gamma: float = 0.0
    mixed_precision: str = "no"
    skip_blocks: str = ""  # "up_blocks.2, mid_block"
    regularization_folder: str = ""  # a folder inside the allowed roots (studio.paths)
    regularization_share: float = 0.0
    prior_distillation: bool = False
    trigger_word: str = ""


@dataclass
class LiveRun:
    """What the Train tab polls while a run goes: curve, rates, validation images, log."""

    run_id: str
    name: str
    total: int
    status: str = "starting"
    step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    lr: float = 0.0
    steps_per_second: float = 0.0
    eta_seconds: float = 0.0
    validation: list[tuple[str, str]] = field(default_factory=list)  # (image path, caption)
    log: list[str] = field(default_factory=list)
    lora_path: str = ""
    error: str = ""


UNET_BLOCK_RE = re.compile(r"(down_blocks|up_blocks)\.\d{1,2}|mid_block")


def parse_skip_blocks(text: str) -> list[str]:
    """UNet blocks to leave without LoRA from "up_blocks.2, mid_block" (commas or spaces between names)."""
    names = [n for n in re.split(r"[,\s]+", text or "") if n]
    bad = [n for n in names if not UNET_BLOCK_RE.fullmatch(n)]
    if bad:
        raise ValidationError(f"skip UNet blocks: {bad[0]!r} is not a block name; use down_blocks.N, mid_block or "
                              "up_blocks.N (N from 0), separated by commas", "skip_blocks")
    return list(dict.fromkeys(names))


def lora_layers(choice: str) -> dict[str, bool]:
    """The trainer's layer switches for a "LoRA layers" choice."""
    if choice not in LORA_LAYERS:
        raise ValidationError(f"LoRA layers must be one of: {', '.join(LORA_LAYERS)}", "lora_layers")
    return LORA_LAYERS[choice]


def _uncaptioned(items: list[DatasetItem]) -> list[str]:
    """File names of the items whose caption is empty."""
    return [Path(i.path).name for i in items if not caption_variants(i.caption)]


def _install(source: str | Path, target: Path) -> None:
    """Copy a file into place atomically (temp file, then rename): a crash never leaves half a file."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)


def _copy_samples(items: list[DatasetItem], folder: Path) -> list[TrainingSample]:
    """Copy images into a run's own folder with their caption in a .txt beside each (resume reads them back)."""
    folder.mkdir(parents=True, exist_ok=True)
    samples = []
    for n, item in enumerate(items):
        dest = folder / f"{n:04d}{Path(item.path).suffix.lower()}"
        shutil.copyfile(item.path, dest)
        dest.with_suffix(".txt").write_text(item.caption)
        samples.append(TrainingSample(str(dest), item.caption))
    return samples


def _read_samples(folder: Path) -> list[TrainingSample]:
    if not folder.is_dir():
        return []
    return [TrainingSample(str(p), p.with_suffix(".txt").read_text())
            for p in sorted(folder.iterdir()) if p.suffix != ".txt"]


class TrainingService:
    """One training at a time in a background thread; every run recorded in the runs store."""

    def __init__(self, runs_store, data_dir: Path, lora_dir: Path, models, device_lock: threading.Lock,
                 presets_store=None, paths: PathGuard | None = None, gallery=None):
        self.runs = runs_store
        self.paths = paths or PathGuard([data_dir])
        self.gallery = gallery
        self.presets_store = presets_store
        self.data_dir = Path(data_dir)
        self.root = self.data_dir / "training"
        self.lora_dir = Path(lora_dir)
        self.models = models
        self.device_lock = device_lock
        self._lock = threading.Lock()
        self._live: dict[str, LiveRun] = {}
        self._stop: dict[str, threading.Event] = {}
        self._thread: threading.Thread | None = None
        self._mark_interrupted()

    # ------------------------------------------------------------------ datasets
    def load_dataset(self, paths: list[str],
                     captions: dict[str, str] | None = None) -> tuple[list[DatasetItem], list[str]]:
        """Check every image (corrupt ones are skipped and listed); captions from `captions`, a .txt beside
        the image or given among `paths` with the image's name (uploads land in folders of their own), or
        empty."""
        from PIL import Image

        items, skipped = [], []
        given_texts = {Path(p).stem: Path(p) for p in paths if Path(p).suffix.lower() == ".txt"}
        for raw in paths:
            path = Path(raw)
            if path.suffix.lower() == ".txt":
                continue
            if path.is_dir():
                sub, bad = self.load_dataset([str(p) for p in sorted(path.iterdir())
                                              if p.suffix.lower() in IMAGE_EXT], captions)
                items += sub
                skipped += bad
                continue
            try:
                with Image.open(path) as img:
                    img.verify()
                with Image.open(path) as img:
                    img.load()
            except Exception as exc:  # noqa: BLE001 - any decoder failure means "skip this file"
                skipped.append(f"{path.name}: {type(exc).__name__}")
                continue
            text = (captions or {}).get(str(path))
            caption_file = path.with_suffix(".txt") if path.with_suffix(".txt").exists() else given_texts.get(path.stem)
            if text is None and caption_file is not None:
                text = join_variants(caption_variants(caption_file.read_text()))  # a line per variant
            items.append(DatasetItem(str(path), text or ""))
        return items, skipped

    @staticmethod
    def add_trigger(items: list[DatasetItem], trigger: str) -> list[DatasetItem]:
        trigger = trigger.strip()
        if not trigger:
            return items
        def tagged(caption: str) -> str:
            return caption if caption.startswith(trigger) else f"{trigger}, {caption}".strip(", ")

        return [replace(i, caption=join_variants(tagged(v) for v in caption_variants(i.caption) or [""]))
                for i in items]

    def dataset_from_folder(self, folder: str, field: str = "folder") -> tuple[list[DatasetItem], list[str]]:
        """The images of a typed folder, which must lie inside the allowed roots (studio.paths)."""
        return self.load_dataset([str(self.paths.resolve(folder, field))])

    def dataset_from_gallery(self, query: str, limit: int = 500) -> tuple[list[DatasetItem], list[str]]:
        """Gallery images whose prompt matches `query`, captioned with their prompt unless a .txt says more."""
        if self.gallery is None:
            raise StudioError("the gallery is not available here", "gallery")
        records, _ = self.gallery.list(limit=limit, query=(query or "").strip() or None)
        paths = {str(self.data_dir / r["path"]): r["prompt"] for r in records}
        items, skipped = self.load_dataset(list(paths))
        return [DatasetItem(i.path, i.caption or paths.get(i.path, "")) for i in items], skipped

    @staticmethod
    def merge_datasets(items: list[DatasetItem], new: list[DatasetItem]) -> list[DatasetItem]:
        """`items` followed by the new images not already in it."""
        known = {i.path for i in items}
        return list(items) + [i for i in new if i.path not in known]

    @staticmethod
    def with_captions(items: list[DatasetItem], captions: dict[int, str]) -> list[DatasetItem]:
        """The dataset with item n's caption replaced by captions[n] where given."""
        return [DatasetItem(i.path, captions.get(n, i.caption)) for n, i in enumerate(items)]

    @staticmethod
    def describe_dataset(items: list[DatasetItem], skipped=()) -> str:
        """One line for the Train tab: images, how many captioned (and phrasings), what was skipped."""
        variants = [len(caption_variants(i.caption)) for i in items]
        captioned, phrasings = sum(1 for v in variants if v), sum(variants)
        text = f"Dataset: **{len(items)}** images, {captioned} captioned"
        if phrasings > captioned:
            text += f" ({phrasings} phrasings)"
        if skipped:
            text += f" · skipped {len(skipped)} unreadable: " + ", ".join(skipped[:5])
        return text

    # ------------------------------------------------------------------ choices for the UI
    @staticmethod
    def lr_schedulers() -> list[str]:
        return list(LR_SCHEDULERS)

    @staticmethod
    def precisions() -> list[str]:
        return list(PRECISIONS)

    @staticmethod
    def layer_choices() -> list[str]:
        return list(LORA_LAYERS)

    @staticmethod
    def smoothed(values: list[float]) -> list[float]:
        """The loss curve's smoothed line."""
        return smooth(values)

    def base_models(self) -> list[str]:
        """Models a LoRA can be trained on (diffusers folders: the built-in model and Stable-diffusion/)."""
        return [m.id for m in self.models.registry.list_models() if m.kind in ("builtin", "diffusers")]

    # ------------------------------------------------------------------ presets
    @staticmethod
    def preset_fields() -> tuple[str, ...]:
        """What a preset sets, in the Train tab's order."""
        return PRESET_FIELDS

    def presets(self) -> dict[str, dict]:
        """Built-in presets, then the user's own (saved ones may not reuse a built-in name)."""
        saved = {p["name"]: p["params"] for p in self.presets_store.all()} if self.presets_store else {}
        return {**PRESETS, **saved}

    def save_preset(self, name: str, params: dict) -> None:
        name = (name or "").strip()
        if not NAME_RE.match(name) or name in PRESETS:
            raise ValidationError("preset name must be 1-64 letters, digits, '_', '-' or '.', and not one of "
                                  f"{', '.join(PRESETS)}", "preset")
        unknown = set(params) - set(PRESET_FIELDS)
        if unknown:
            raise ValidationError(f"preset has unknown parameters: {', '.join(sorted(unknown))}", "preset")
        params = {f: type(QUICK[f])(v or 0) for f, v in params.items()}
        self.presets_store.remove_where("name", name)
        self.presets_store.insert({"name": name, "params": params})

    @staticmethod
    def steps_for_epochs(epochs: float, dataset_size: int, batch_size: int) -> int:
        """Steps that show every image `epochs` times at this batch size."""
        epochs = check_range("epochs", epochs, 0.01, 10_000, float)
        return max(1, math.ceil(epochs * dataset_size / max(1, int(batch_size))))

    # ------------------------------------------------------------------ config
    def validate(self, cfg: LoraTrainingConfig, items: list[DatasetItem]) -> LoraTrainingConfig:
        if not items:
            raise ValidationError("dataset is empty: add at least one image", "dataset")
        missing = _uncaptioned(items)
        if missing:
            raise ValidationError(f"captions missing for {len(missing)} image(s) (e.g. {missing[0]}): write one "
                                  "or add a trigger word to all", "captions")
        if not NAME_RE.match(cfg.name or ""):
            raise ValidationError("name must be 1-64 letters, digits, '_', '-' or '.', starting with a letter "
                                  "or digit", "name")
        if cfg.lr_scheduler not in LR_SCHEDULERS:
            raise ValidationError(f"lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}", "lr_scheduler")
        if cfg.train_embedding and not cfg.trigger_word.strip():
            raise ValidationError("training the trigger word's embedding needs a trigger word: type one (e.g. "
                                  "'star') or untick 'Trigger embedding'", "trigger_word")
        if cfg.train_embedding and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", cfg.trigger_word.strip()):
            raise ValidationError("trigger word for a trained embedding must be one word of 1-32 letters, digits, "
                                  "'_' or '-', starting with a letter", "trigger_word")
        if len(cfg.embedding_init) > 200:
            raise ValidationError("embedding start words must be at most 200 characters", "embedding_init")
        if not (cfg.train_attention or cfg.train_conv):
            raise ValidationError("a LoRA needs some layers: attention, convolutions or both", "lora_layers")
        if cfg.mixed_precision not in PRECISIONS:
            raise ValidationError(f"mixed_precision must be one of {', '.join(PRECISIONS)}", "mixed_precision")
        if cfg.prior_distillation and not cfg.regularization_share:
            raise ValidationError("distilling the prior needs regularization images: set the regularization share "
                                  "above 0 (at most 0.9) or turn distillation off", "prior_distillation")
        max_steps = check_range("max_steps", cfg.max_steps, 1, 100_000, int)
        return replace(
            cfg,
            rank=check_range("rank", cfg.rank, 1, 256, int),
            alpha=check_range("alpha", cfg.alpha, 0.1, 512, float),
            learning_rate=check_range("learning_rate", cfg.learning_rate, 1e-7, 1e-1, float),
            text_encoder_learning_rate=check_range("text_encoder_learning_rate", cfg.text_encoder_learning_rate,
                                                   0, 1e-1, float),
            loraplus_lr_ratio=check_range("loraplus_lr_ratio", cfg.loraplus_lr_ratio, 1, 64, float),
            embedding_learning_rate=check_range("embedding_learning_rate", cfg.embedding_learning_rate, 1e-6, 1.0,
                                                float),
            trigger_word=cfg.trigger_word.strip(), embedding_init=cfg.embedding_init.strip(),
            skip_blocks=parse_skip_blocks(" ".join(cfg.skip_blocks)),
            max_steps=max_steps,
            embedding_only_steps=check_range("embedding_only_steps", cfg.embedding_only_steps, 0, max_steps - 1, int),
            batch_size=check_range("batch_size", cfg.batch_size, 1, 64, int),
            resolution=check_range("resolution", cfg.resolution, 64, 2048, int),
            color_jitter=check_range("color_jitter", cfg.color_jitter, 0, 0.5, float),
            regularization_share=check_range("regularization_share", cfg.regularization_share, 0, 0.9, float),
            caption_dropout=check_range("caption_dropout", cfg.caption_dropout, 0, 0.5, float),
            subject_weight=check_range("subject_weight", cfg.subject_weight, 1, 20, float),
            min_snr_gamma=check_range("min_snr_gamma", cfg.min_snr_gamma, 0, 20, float),
            lora_dropout=check_range("lora_dropout", cfg.lora_dropout, 0, 0.9, float),
            validation_every=check_range("validation_every", cfg.validation_every, 0, 100_000, int),
            checkpoint_every=check_range("checkpoint_every", cfg.checkpoint_every, 0, 100_000, int),
            seed=check_range("seed", cfg.seed, 0, 2**32 - 1, int),
        )

    # ------------------------------------------------------------------ runs
    def train(self, req: TrainingRequest) -> str:
        """Check a Train-tab request, read its regularization folder, and start the run; returns its id."""
        regularization: list[DatasetItem] = []
        if (req.regularization_folder or "").strip():
            regularization, _ = self.dataset_from_folder(req.regularization_folder, "regularization_folder")
        max_steps = (self.steps_for_epochs(req.epochs, len(req.dataset), req.batch_size) if req.epochs
                     else req.max_steps or 0)
        cfg = LoraTrainingConfig(
            base_model="", name=(req.name or "").strip(), rank=req.rank, alpha=req.alpha,
            learning_rate=req.learning_rate, lr_scheduler=req.lr_scheduler, max_steps=max_steps,
            batch_size=req.batch_size, resolution=req.resolution, seed=req.seed or 0, flip=bool(req.flip),
            random_crop=bool(req.random_crop), color_jitter=req.color_jitter or 0.0,
            train_text_encoder=bool(req.train_text_encoder),
            text_encoder_learning_rate=req.text_encoder_learning_rate or 0.0,
            loraplus_lr_ratio=1.0 if req.loraplus_lr_ratio is None else req.loraplus_lr_ratio,
            mixed_precision=req.mixed_precision,
            validation_prompts=[p.strip() for p in (req.validation_prompts or "").splitlines() if p.strip()],
            validation_every=req.validation_every or 0, checkpoint_every=req.checkpoint_every or 0,
            regularization_share=req.regularization_share or 0.0, prior_distillation=bool(req.prior_distillation),
            caption_dropout=req.caption_dropout or 0.0, train_embedding=bool(req.train_embedding),
            embedding_learning_rate=(QUICK["embedding_learning_rate"] if req.embedding_learning_rate is None
                                     else req.embedding_learning_rate),
            embedding_only_steps=(req.embedding_only_steps or 0) if req.train_embedding else 0,
            **lora_layers(req.lora_layers), subject_weight=req.subject_weight or 1.0,
            min_snr_gamma=req.min_snr_gamma or 0.0, lora_dropout=req.lora_dropout or 0.0,
            trigger_word=(req.trigger_word or "").strip(), embedding_init=(req.embedding_init or "").strip(),
            skip_blocks=parse_skip_blocks(req.skip_blocks), device=self.models.device.device,
        )
        return self.start(cfg, list(req.dataset), req.base_model, regularization)

    def busy(self) -> str | None:
        with self._lock:
            if self._thread and self._thread.is_alive():
                return next((r for r, live in self._live.items() if live.status in ("starting", "running")), "?")
            return None

    def start(self, cfg: LoraTrainingConfig, items: list[DatasetItem], model_id: str,
              regularization: list[DatasetItem] = ()) -> str:
        """Validate, copy the dataset (and any regularization images) into the run folder, and train in the
        background; returns the run id."""
        source = self.models.resolve(model_id)
        if source.kind not in ("builtin", "diffusers"):
            raise ValidationError("base model must be a diffusers folder (the built-in model or one under "
                                  "Stable-diffusion/)", "base_model")
        guidance = recommended_settings(source)  # validation images look as the Generate tab would draw them
        cfg = self.validate(replace(cfg, base_model=source.location, base_model_id=source.id,
                                    validation_guidance=guidance["cfg_scale"],
                                    validation_rescale=guidance["cfg_rescale"]), items)
        if cfg.regularization_share > 0 and not regularization:
            raise ValidationError("regularization share is above 0 but no regularization images were given: add "
                                  "a folder of them or set the share to 0", "regularization")
        unlabeled = _uncaptioned(regularization)
        if unlabeled:
            raise ValidationError(f"regularization images need captions (a .txt beside each image): "
                                  f"{len(unlabeled)} have none (e.g. {unlabeled[0]})", "regularization")
        running = self.busy()
        if running:
            raise BusyError(f"training run {running} is still going: stop it first (one training at a time)",
                            "train")
        run_id = time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        run_dir = self.root / "runs" / run_id
        samples = _copy_samples(items, run_dir / "dataset")
        prior = _copy_samples(regularization if cfg.regularization_share > 0 else [], run_dir / "regularization")
        self.runs.insert({"id": run_id, "name": cfg.name, "status": "queued", "config": asdict(cfg),
                          "dataset_size": len(samples), "regularization_size": len(prior), "created": time.time(),
                          "final_loss": None, "lora_path": "", "step": 0})
        self._launch(run_id, cfg, samples, prior)
        return run_id

    def resume(self, run_id: str) -> str:
        if not run_id:
            raise ValidationError("run: pick a run to resume", "run")
        record = self._record(run_id)
        if record["status"] in ("running", "queued") and self.busy() == run_id:
            raise BusyError(f"run {run_id} is already running", "run")
        if self.busy():
            raise BusyError(f"training run {self.busy()} is still going: stop it first", "run")
        run_dir = self.root / "runs" / run_id
        cfg = LoraTrainingConfig(**record["config"])
        self._launch(run_id, cfg, _read_samples(run_dir / "dataset"), _read_samples(run_dir / "regularization"))
        return run_id

    def stop(self, run_id: str | None = None) -> bool:
        """Ask run `run_id` (None: every run) to stop after its current step; False when none was running."""
        with self._lock:
            targets = [rid for rid in ([run_id] if run_id else list(self._stop))
                       if rid in self._stop and self._live[rid].status in ("starting", "running")]
            for rid in targets:
                self._stop[rid].set()
            return bool(targets)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop any running training and wait for its thread (it keeps a checkpoint of its last step)."""
        self.stop()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _launch(self, run_id: str, cfg: LoraTrainingConfig, samples: list[TrainingSample],
                regularization: list[TrainingSample]) -> None:
        run_dir = self.root / "runs" / run_id
        live = LiveRun(run_id, cfg.name, cfg.max_steps)
        live.losses = saved_loss_history(run_dir)
        live.step = live.losses[-1][0] if live.losses else 0
        stop = threading.Event()
        with self._lock:
            self._live[run_id] = live
            self._stop[run_id] = stop
        trainer = LoraTrainer(cfg, samples, run_dir, lambda e: self._on_event(run_id, run_dir, e), self.device_lock,
                              regularization)
        self._thread = threading.Thread(target=self._run, args=(run_id, trainer, stop), daemon=True,
                                        name=f"train-{run_id}")
        self._thread.start()

    def _run(self, run_id: str, trainer: LoraTrainer, stop: threading.Event) -> None:
        live = self._live[run_id]
        live.status = "running"
        live.log.append(f"{time.strftime('%H:%M:%S')} started: {len(trainer.samples)} images, "
                        f"{trainer.config.max_steps} steps, rank {trainer.config.rank}")
        self.runs.update_where("id", run_id, {"status": "running"})
        try:
            event = trainer.run(stop)
        except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the studio keeps going
            log.exception("training run %s failed", run_id)
            event = TrainingEvent("error", live.step, live.total, message=f"{type(exc).__name__}: {exc}")
            self._on_event(run_id, trainer.run_dir, event)
        status = {"done": "done", "stopped": "stopped", "error": "failed"}[event.kind]
        final_loss = live.losses[-1][1] if live.losses else None
        lora_path = ""
        if event.kind in ("done", "stopped") and event.path:
            self.lora_dir.mkdir(parents=True, exist_ok=True)
            target = self.lora_file(trainer.config.name)
            _install(event.path, target)
            if sidecar_path(event.path).exists():  # the trained trigger embedding travels with the LoRA
                _install(sidecar_path(event.path), sidecar_path(target))
            else:  # an earlier LoRA of the same name may have left one that does not belong to this LoRA
                sidecar_path(target).unlink(missing_ok=True)
            lora_path = str(target)
            self._save_curve(run_id, trainer.run_dir)
        live.status, live.lora_path = status, lora_path
        self.runs.update_where("id", run_id, {"status": status, "final_loss": final_loss, "lora_path": lora_path,
                                              "step": live.step, "error": live.error})

    def _on_event(self, run_id: str, run_dir: Path, event: TrainingEvent) -> None:
        live = self._live[run_id]
        stamp = time.strftime("%H:%M:%S")
        if event.kind == "step":
            live.step, live.lr = event.step, event.lr or 0.0
            live.losses.append((event.step, event.loss))
            steps_done = len([1 for s, _ in live.losses if s > live.losses[0][0]]) or 1
            live.steps_per_second = steps_done / max(event.seconds, 1e-6)
            live.eta_seconds = (live.total - event.step) / max(live.steps_per_second, 1e-6)
            if event.step % 25 == 0:
                live.log.append(f"{stamp} step {event.step}/{live.total} loss {event.loss:.4f}")
        elif event.kind == "validation":
            folder = run_dir / "validation"
            folder.mkdir(exist_ok=True)
            for i, (prompt, image) in enumerate(event.images):
                path = folder / f"step-{event.step:06d}-{i}.png"
                image.save(path)
                live.validation.append((str(path), f"step {event.step}: {prompt}"))
            live.log.append(f"{stamp} validation images at step {event.step}")
        elif event.kind == "checkpoint":
            live.log.append(f"{stamp} checkpoint saved at step {event.step}")
            self.runs.update_where("id", run_id, {"step": event.step})
        elif event.kind in ("log", "done", "stopped"):
            live.log.append(f"{stamp} {event.message or event.kind} (step {event.step})")
        elif event.kind == "error":
            live.error = event.message
            live.log.append(f"{stamp} ERROR {event.message}")

    def _save_curve(self, run_id: str, run_dir: Path) -> None:
        from training.curves import save_loss_curve

        save_loss_curve(self._live[run_id].losses, run_dir / "loss.png", title=self._live[run_id].name)

    def _mark_interrupted(self) -> None:
        for record in self.runs.all():
            if record.get("status") in ("running", "queued", "starting"):
                self.runs.update_where("id", record["id"], {"status": "interrupted"})

    def _record(self, run_id: str) -> dict:
        found = [r for r in self.runs.all() if r.get("id") == run_id]
        if not found:
            raise ValidationError(f"run {run_id!r} does not exist", "run")
        return found[0]

    # ------------------------------------------------------------------ views
    def live(self, run_id: str | None) -> LiveRun | None:
        with self._lock:
            if run_id:
                return self._live.get(run_id)
            return next(reversed(self._live.values()), None) if self._live else None

    def list_runs(self) -> list[dict]:
        return sorted(self.runs.all(), key=lambda r: r.get("created", 0), reverse=True)

    def lora_file(self, name: str) -> Path:
        """Where a finished run named `name` installs its LoRA (replacing one of the same name)."""
        return self.lora_dir / f"{name}.safetensors"

    def checkpoints(self, run_id: str) -> list[Path]:
        self._record(run_id)
        return [c / "lora.safetensors" for c in list_checkpoints(self.root / "runs" / run_id)]

    def compare_request(self, run_id: str, prompt: str, seed, weights_text: str):
        """The Train tab's X/Y grid from its fields: weights typed as "0, 0.5, 1"."""
        if not run_id:
            raise ValidationError("run: pick a run to compare its checkpoints", "run")
        if not (prompt or "").strip():
            raise ValidationError("prompt must not be empty", "prompt")
        try:
            weights = [float(w) for w in (weights_text or "").replace(";", ",").split(",") if w.strip()]
        except ValueError:
            raise ValidationError("weights must be numbers separated by commas, e.g. 0, 0.5, 1", "weights") from None
        return self.compare(run_id, prompt, check_range("seed", seed or 0, 0, 2**32 - 1, int), weights)

    def compare(self, run_id: str, prompt: str, seed: int, weights: list[float], steps: int = 20):
        """X/Y grid: rows = saved checkpoints (and the final LoRA), columns = LoRA weights; returns PIL grid."""
        import torch

        from training.curves import image_grid

        record = self._record(run_id)
        cfg = LoraTrainingConfig(**record["config"])
        files = self.checkpoints(run_id)
        if not files:
            raise StudioError("this run has no checkpoints yet", "run")
        if not weights:
            raise ValidationError("weights: give at least one LoRA weight, e.g. 0, 0.5, 1", "weights")
        rows, labels = [], []
        guidance = self.models.recommended(cfg.base_model_id)
        with self.device_lock, self.models.pipeline(cfg.base_model_id, "txt2img") as pipe:
            for f in files:
                load_lora_file(pipe, f, "compare")
                row = []
                try:
                    with trigger_embeddings(pipe, [f]) as words:
                        for w in weights:
                            pipe.set_adapters(["compare"], [w])
                            g = torch.Generator("cpu").manual_seed(seed)
                            row.append(pipe(use_trigger_tokens(prompt, words), num_inference_steps=steps,
                                            guidance_scale=guidance["cfg_scale"],
                                            guidance_rescale=guidance["cfg_rescale"], generator=g,
                                            width=cfg.resolution, height=cfg.resolution).images[0])
                finally:
                    pipe.delete_adapters(["compare"])
                rows.append(row)
                labels.append(f.parent.name)
        return image_grid(rows, labels, [f"weight {w:g}" for w in weights])
