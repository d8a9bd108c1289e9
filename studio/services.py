"""Composition root: build every service once from Settings and hand them to the UI."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from studio.settings import Settings


@dataclass
class Services:
    settings: Settings
    models: "ModelService"
    generation: "GenerationService"
    gallery: "GalleryService"
    jobs: "JobRegistry"
    training: "TrainingService"
    device_lock: threading.Lock
    captions: "CaptionService"
    controlnet: "ControlNetService" = None
    curation: "CurationService" = None
    schedules: "ScheduleService" = None
    prompts: "PromptLibrary" = None
    queue: "JobQueue" = None
    upscale: "UpscaleService" = None


def build_services(settings: Settings) -> Services:
    """Create the data folders, the model cache, stores and services (no model is loaded here)."""
    from pipelines.devices import choose_device, free_device_memory
    from pipelines.model_cache import ModelCache
    from pipelines.registry import (CHECKPOINT_DIR, CONTROLNET_DIR, EMBEDDINGS_DIR, LORA_DIR, UPSCALER_DIR, VAE_DIR,
                                    ModelRegistry)
    from studio.captioning import CAPTION_DIR, CaptionService
    from studio.gallery_service import GalleryService
    from studio.generation_service import GenerationService
    from studio.jobs import JobRegistry
    from studio.model_service import ModelService
    from studio.paths import PathGuard
    from studio.stores.gallery_store import GalleryStore
    from studio.stores.atomic_storage import JsonStore
    from studio.stores.runs_store import RunsStore
    from studio.training_service import TrainingService

    if settings.offline:  # before any model library touches the network (pipelines.offline)
        from pipelines.offline import enforce_offline
        enforce_offline()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for sub in (CHECKPOINT_DIR, LORA_DIR, CONTROLNET_DIR, UPSCALER_DIR, EMBEDDINGS_DIR, VAE_DIR, CAPTION_DIR):
        (settings.models_root / sub).mkdir(parents=True, exist_ok=True)
    device = choose_device(settings.device, settings.dtype)
    registry = ModelRegistry(settings.builtin_model_dir, settings.models_root, settings.offline)
    cache = ModelCache(settings.cache_budget_bytes, on_evict=free_device_memory)
    models = ModelService(registry, cache, device, settings.offline, settings.data_dir / "cache" / "model_hashes.json")
    gallery = GalleryService(GalleryStore(settings.data_dir / "db", settings.data_dir), settings.data_dir,
                             PathGuard(settings.path_roots))
    device_lock = threading.Lock()
    generation = GenerationService(models, gallery, settings.data_dir, device_lock,
                                   settings.max_batch_size, settings.max_batch_count)
    training = TrainingService(RunsStore(settings.data_dir / "db" / "training_runs.json"), settings.data_dir,
                               settings.models_root / LORA_DIR, models, device_lock,
                               JsonStore(settings.data_dir / "db" / "training_presets.json"),
                               PathGuard(settings.path_roots), gallery)
    captions = CaptionService(settings.models_root / CAPTION_DIR, cache, device, device_lock)
    controlnet = build_controlnet(settings, generation, cache, CONTROLNET_DIR)
    curation = build_curation(settings, gallery, generation)
    prompts = build_prompts(settings, generation, gallery)
    upscale = build_upscale(settings, cache, device, gallery, device_lock, generation)
    schedules = build_schedules(settings, generation, curation, gallery, training, prompts, upscale)
    queue = build_queue(settings, generation, controlnet, curation, upscale)
    schedules.use_queue(queue)  # scheduled runs wait in the studio queue with everyone's jobs
    return Services(settings, models, generation, gallery, JobRegistry(), training, device_lock, captions, controlnet,
                    curation, schedules, prompts=prompts, queue=queue, upscale=upscale)


def build_queue(settings: Settings, generation, controlnet, curation, upscale=None):
    """The studio job queue (<data>/db/queue.json; queued input images under <data>/queue/) with the generation,
    curation and upscale job kinds; the schedule service adds its kind and starts the worker with its scheduler."""
    from studio.curation_jobs import CurationJobs
    from studio.generation_jobs import GenerationJobs
    from studio.job_queue import JobQueue
    from studio.stores.queue_store import QueueStore
    from studio.upscale_jobs import UpscaleJobs

    queue = JobQueue(QueueStore(settings.data_dir / "db" / "queue.json"), start_state=settings.queue_start)
    GenerationJobs(generation, controlnet, settings.data_dir / "queue").register(queue)
    CurationJobs(curation).register(queue)
    if upscale is not None:
        UpscaleJobs(upscale, settings.data_dir / "queue").register(queue)
    return queue


def build_upscale(settings: Settings, cache, device, gallery, device_lock, generation=None):
    """The upscale service: model files from <models>/ESRGAN/, the built-in upscaler from
    settings.builtin_upscaler_dir (listed once its weights exist), run on the studio device through the cache; the
    refine pass (SD upscale) runs img2img through the generation service."""
    from pipelines.devices import free_device_memory
    from pipelines.registry import UPSCALER_DIR
    from studio.paths import PathGuard
    from studio.upscale_service import UpscaleService

    return UpscaleService(cache, device, gallery, PathGuard(settings.path_roots),
                          settings.models_root / UPSCALER_DIR, settings.builtin_upscaler_dir, settings.data_dir,
                          device_lock, free_device_memory, generation, settings.model)


def build_prompts(settings: Settings, generation, gallery):
    """The prompt library (stores in <data>/db/, wildcards in <data>/wildcards/); every generated image's prompt
    goes into its history."""
    from studio.prompts.library import PromptLibrary

    prompts = PromptLibrary(settings.data_dir)
    generation.after_save.append(lambda ids: prompts.history.record_images([gallery.get(i) for i in ids]))
    return prompts


def build_schedules(settings: Settings, generation, curation, gallery, training, prompts=None, upscale=None):
    """The schedule service: schedules and run reports in <data>/db/, contact sheets in <data>/reports/, SMTP
    settings for e-mailed reports in <data>/db/ (`services.schedules.email`); its scheduler is started by the app
    (`services.schedules.start()`), not here."""
    from studio.notify_email import EmailNotifier
    from studio.schedule_service import ScheduleService
    from studio.stores.atomic_storage import JsonStore

    db = settings.data_dir / "db"
    email = EmailNotifier(JsonStore(db / "email_settings.json"), db / "smtp_password")
    return ScheduleService(JsonStore(db / "schedules.json"), JsonStore(db / "schedule_runs.json"), generation,
                           curation, gallery, settings.data_dir, training, email=email, prompts=prompts,
                           upscale=upscale)


def build_curation(settings: Settings, gallery, generation):
    """The curation service: records in <data>/db/curation/, the verdict history and settings beside them;
    newly generated images are scored in the background when its auto-curate setting is on."""
    from studio.curation_service import CurationService
    from studio.paths import PathGuard
    from studio.stores.atomic_storage import JsonStore
    from studio.stores.curation_store import CurationStore

    db = settings.data_dir / "db"
    curation = CurationService(CurationStore(db), gallery, settings.data_dir, PathGuard(settings.path_roots),
                               settings.models_root, JsonStore(db / "curation_settings.json"))
    generation.after_save.append(curation.after_generation)
    return curation


def build_controlnet(settings: Settings, generation, cache, controlnet_dir: str):
    """The ControlNet service: ControlNets and detector weights from <models>/ControlNet/ (annotators/ for the
    detectors), the built-in ControlNet beside the built-in model (assets/builtin-controlnet)."""
    from pipelines.controlnets import ANNOTATORS_DIR
    from pipelines.preprocessors import Preprocessors
    from studio.controlnet_service import ControlNetService

    root = settings.models_root / controlnet_dir
    preprocessors = Preprocessors(root / ANNOTATORS_DIR, settings.offline, cache)
    return ControlNetService(generation, preprocessors, root, settings.builtin_model_dir.parent / "builtin-controlnet",
                             settings.offline)
