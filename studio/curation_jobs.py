"""Batch curation as a studio queue job (kind "curate"): the request is stored as JSON and scored by
CurationService with the queue's cancel event and progress listener. Scored images are stored as it goes; after a
restart the job scores only the images its interrupted run had not stored (manual verdicts are always kept)."""

from __future__ import annotations

from dataclasses import asdict

from studio.curation_service import CurationReport, CurationRequest
from studio.job_queue import JobContext, JobKind, JobQueue, JobSpec


def describe(req: CurationRequest) -> str:
    if req.ids:
        return f"{len(req.ids)} image(s)"
    if req.query:
        return f"images matching {req.query!r}"
    return f"folder {req.folder}" if req.folder else "the whole gallery"


class CurationJobs:
    """Encodes and runs curation jobs; `register(queue)` adds the kind."""

    def __init__(self, curation):
        self.curation = curation

    def register(self, queue: JobQueue) -> None:
        queue.register("curate", JobKind(run=self.run, encode=self.encode, cancelled=self.cancelled))

    @staticmethod
    def encode(req: CurationRequest, job_id: str) -> JobSpec:
        return JobSpec(payload=asdict(req), title=f"Curate {describe(req)}"[:80], total=max(1, len(req.ids)))

    @staticmethod
    def cancelled(payload: dict) -> CurationReport:
        """What the page gets for a curation cancelled before it started: nothing scored, stopped."""
        return CurationReport(0, 0, [], {}, {}, [], 0.0, True)

    def run(self, payload: dict, ctx: JobContext) -> CurationReport:
        def report(update):
            ctx.image_done(done=update.done, total=update.total, durable=False)
            if ctx.progress is not None:
                ctx.progress(update)
        req = CurationRequest(**payload)
        if ctx.job.get("started"):  # the job's first start: after a kill, what its run stored is not scored again
            req.scored_since = float(ctx.job["started"])
        return self.curation.run(req, report, ctx.cancel)
