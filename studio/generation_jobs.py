"""Generation as studio queue jobs (kinds "generate" and "controlnet"): a validated request is stored as JSON
(its images as PNG files under `<data>/queue/<job id>/`, its seed fixed when it is queued), and run through
GenerationService (or ControlNetService) with the queue's cancel event and progress listener.

Resume: every saved image is recorded on the job (index, seed, image id) and carries the job's id in the gallery;
a job that starts again (after a crash or restart) skips the images the gallery already holds for it, so it goes
on at the next image with the same seeds and never makes an image twice.
"""

from __future__ import annotations

import dataclasses
import random
import shutil
from dataclasses import replace
from pathlib import Path

from studio.generation_service import MAX_SEED, GenerationRequest, GenerationResult
from studio.job_queue import JobContext, JobKind, JobQueue, JobSpec

IMAGE_KEY = "$image"
IMAGE_FIELDS = ("init_image", "mask_image", "image")  # request and ControlNet-unit fields that hold images


def _encode(value, name: str, folder: Path, counter: list[int]):
    """JSON for a request value; images (PIL, numpy, or an upload's path) become PNG files in `folder`."""
    from PIL import Image

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name), f.name, folder, counter) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: _encode(v, k, folder, counter) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v, name, folder, counter) for v in value]
    if name in IMAGE_FIELDS and value is not None:
        from studio.images import load_image

        image = value if isinstance(value, Image.Image) else load_image(value, name, mode="RGBA")
        folder.mkdir(parents=True, exist_ok=True)
        counter[0] += 1
        file = folder / f"{name}-{counter[0]}.png"
        image.save(file)
        return {IMAGE_KEY: str(file)}
    if isinstance(value, Path):
        return str(value)
    return value


def _decode(value):
    if isinstance(value, dict):
        if IMAGE_KEY in value:
            return value[IMAGE_KEY]  # a path: the services open images from paths
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


class GenerationJobs:
    """Encodes, runs and cleans up generation jobs; `register(queue)` adds the kinds."""

    def __init__(self, generation, controlnet, files_dir: Path):
        self.generation, self.controlnet = generation, controlnet
        self.files_dir = Path(files_dir)

    def register(self, queue: JobQueue) -> None:
        for kind in ("generate", "controlnet"):
            queue.register(kind, JobKind(run=self._runner(kind), encode=self.encode, cancelled=self.cancelled,
                                         finished=self.finished, made=self.made))

    def encode(self, req: GenerationRequest, job_id: str) -> JobSpec:
        """The job for a validated request: seed fixed now (so a resumed job makes the same images)."""
        def fixed(seed):
            return seed if seed is not None and seed >= 0 else random.randrange(MAX_SEED)

        req = replace(req, seed=fixed(req.seed), job_id=job_id)
        if req.variation_strength:
            req = replace(req, variation_seed=fixed(req.variation_seed))
        payload = _encode(req, "", self.files_dir / job_id, [0])
        total = req.batch_count * req.batch_size
        return JobSpec(payload=payload, title=req.prompt[:80], model=req.model, total=total)

    @staticmethod
    def request(payload: dict, kind: str) -> GenerationRequest:
        """The typed request a stored payload holds (fields this version no longer has are left out)."""
        from studio.controlnet_service import ControlNetRequest

        cls = ControlNetRequest if kind == "controlnet" else GenerationRequest
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in _decode(payload).items() if k in known})

    def cancelled(self, payload: dict) -> GenerationResult:
        """What a person's page gets for a job cancelled before it started: no image, stopped."""
        return GenerationResult([], payload["batch_count"] * payload["batch_size"], True, payload["job_id"], 0.0)

    def made(self, payload: dict) -> int:
        """Images the gallery holds for the job (each saved with the job's id)."""
        return len(self.generation.gallery.store.by_job(payload["job_id"]))

    def finished(self, payload: dict) -> None:
        shutil.rmtree(self.files_dir / payload["job_id"], ignore_errors=True)

    def _runner(self, kind: str):
        def run(payload: dict, ctx: JobContext) -> GenerationResult:
            req = self.request(payload, kind)
            made = max(self.made(payload) if ctx.resumed else 0, ctx.job["done"])

            def saved(index, image):
                made_list = ctx.job["progress"].get("made", [])
                entry = {"index": index, "seed": image.seed, "image_id": image.id}
                # the gallery record (job id, seed) is the durable one: no queue write per image
                ctx.image_done({"made": [*made_list, entry]}, done=index + 1, durable=False)

            service = self.controlnet if kind == "controlnet" else self.generation
            return service.generate(req, ctx.cancel, ctx.progress, skip=made, on_saved=saved)
        return run
