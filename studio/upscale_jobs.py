"""Upscaling as a studio queue job (kind "upscale"): a validated UpscaleRequest is stored as versioned JSON (its
uploaded files copied under `<data>/queue/<job id>/`, since the page's upload folder is temporary) and run by
UpscaleService with the queue's cancel event and progress listener. Every saved image carries the job's id and its
source's index in the gallery, so a job that starts again (after a crash or a restart) passes over the sources it
already upscaled. A schedule queues "upscale these ids" with `queue.submit_request("upscale", UpscaleRequest(...))`.
"""

from __future__ import annotations

import dataclasses
import shutil
from dataclasses import replace
from pathlib import Path

from studio.job_queue import JobContext, JobKind, JobQueue, JobSpec
from studio.upscale_service import UpscaleRequest, UpscaleResult

PAYLOAD_VERSION = 1


class UpscaleJobs:
    """Encodes, runs and cleans up upscale jobs; `register(queue)` adds the kind."""

    def __init__(self, upscale, files_dir: Path):
        self.upscale = upscale
        self.files_dir = Path(files_dir)

    def register(self, queue: JobQueue) -> None:
        queue.register("upscale", JobKind(run=self.run, encode=self.encode, cancelled=self.cancelled,
                                          finished=self.finished, made=self.made))

    def encode(self, req: UpscaleRequest, job_id: str) -> JobSpec:
        """The job for a validated request: uploads copied into the job's folder, the request as plain JSON."""
        folder = self.files_dir / job_id
        images = []
        for n, image in enumerate(req.images):
            if not Path(image).is_file():  # reported as missing when the job runs
                images.append(str(image))
                continue
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f"upload-{n}{Path(image).suffix.lower()[:8]}"
            shutil.copyfile(image, target)  # as uploaded: a corrupt one is reported when the job runs
            images.append(str(target))
        req = replace(req, images=images, job_id=job_id)
        payload = {"version": PAYLOAD_VERSION, **dataclasses.asdict(req)}
        total = len(self.upscale.sources(req))
        return JobSpec(payload=payload, title=f"Upscale {total} image(s) with {req.upscaler}"[:80], total=total)

    @staticmethod
    def request(payload: dict) -> UpscaleRequest:
        """The typed request a stored payload holds (fields this version does not know are left out)."""
        known = {f.name for f in dataclasses.fields(UpscaleRequest)}
        return UpscaleRequest(**{k: v for k, v in payload.items() if k in known})

    def done_indexes(self, payload: dict) -> set[int]:
        """Source indexes the gallery already holds an upscaled image of for this job."""
        records = self.upscale.gallery.store.by_job(payload["job_id"])
        return {r.get("params", {}).get("upscale", {}).get("source_index") for r in records} - {None}

    def made(self, payload: dict) -> int:
        return len(self.done_indexes(payload))

    def cancelled(self, payload: dict) -> UpscaleResult:
        """What a waiting page gets for a job cancelled before it started: nothing upscaled, stopped."""
        return UpscaleResult([], [], len(self.upscale.sources(self.request(payload))), True, 0.0)

    def finished(self, payload: dict) -> None:
        shutil.rmtree(self.files_dir / payload["job_id"], ignore_errors=True)

    def run(self, payload: dict, ctx: JobContext) -> UpscaleResult:
        req = self.request(payload)
        skip = self.done_indexes(payload) if ctx.resumed else set()
        last = [-1]

        def progress(index, total, update):
            if index != last[0]:  # a new source: the queue counts it (its image is recorded in the gallery)
                last[0] = index
                ctx.image_done(done=index, total=total, durable=False)
            if ctx.progress is not None:
                ctx.progress(index, total, update)

        result = self.upscale.upscale(req, ctx.cancel, progress, skip)
        ctx.image_done(done=len(skip) + len(result.images) + len(result.failures), total=result.total,
                       durable=False)
        return result
