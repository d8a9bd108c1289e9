"""Upscale tab (A1111's Extras): upscale a pasted or uploaded image, a batch of uploads, a folder, or gallery images
(their ids in the "Gallery images" box, which Curate and Gallery fill), with a resampler or a model from the
models folder's ESRGAN/, an optional second upscaler blended in, and tiles sized from the device's memory. The
job waits in the studio queue like Generate; the result shows before/after and lands in the gallery."""

from __future__ import annotations

import threading

import gradio as gr

from studio.job_queue import WAITING_INDEX
from studio.upscale_service import NONE, UpscaleRequest, split_ids
from studio.ui.common import (ON_QUEUE, PLUMBING, Form, Tab, queue_wait_text, session_owner, stop_jobs, stream_job,
                              user_errors)

SETTINGS = ("upscaler", "scale", "target_width", "target_height", "upscaler_2", "upscaler_2_visibility",
            "tile_size", "tile_overlap", "refine_strength", "refine_prompt", "refine_model", "refine_steps",
            "refine_seed")


def request_from_form(values: dict) -> UpscaleRequest:
    """The UpscaleRequest a filled-in form asks for: the gallery ids when there are any, else every upload and
    the folder."""
    settings = {name: values[name] for name in SETTINGS if values.get(name) is not None}
    ids = split_ids(values.get("ids") or "")
    if ids:
        return UpscaleRequest(**settings, ids=ids)
    uploads = [values["image"]] if values.get("image") else []
    uploads += [f if isinstance(f, str) else getattr(f, "name", f) for f in values.get("images") or []]
    return UpscaleRequest(**settings, images=uploads, folder=(values.get("folder") or "").strip())


def create_tab(services) -> Tab:
    upscale = services.upscale
    with gr.Tab("Upscale", id="upscale"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=320):
                ids = gr.Textbox(label="Gallery images", elem_id="upscale-ids", lines=1,
                                 placeholder="image ids, comma-separated",
                                 info="Sent here by the Gallery and Curate. When set, these are upscaled "
                                      "(the upload, batch and folder below are not).")
                with gr.Tabs():
                    with gr.Tab("Single image"):
                        image = gr.Image(label="Image (upload or paste)", type="filepath", image_mode=None,
                                         sources=["upload", "clipboard"], format="png", height=260,
                                         elem_id="upscale-image")
                    with gr.Tab("Batch"):
                        images = gr.File(label="Images", file_count="multiple", file_types=["image"],
                                         type="filepath", elem_id="upscale-batch")
                    with gr.Tab("Folder"):
                        folder = gr.Textbox(label="Folder", elem_id="upscale-folder",
                                            info="its images (not sub-folders), inside the data or models folder "
                                                 "or an --allow-dir folder")
                with gr.Row():
                    upscaler = gr.Dropdown(upscale.choices(), value=upscale.default_upscaler(), label="Upscaler",
                                           scale=4, elem_id="upscale-upscaler",
                                           info="Models from the models folder's ESRGAN/ (.safetensors, .pth)")
                    refresh = gr.Button("↻", scale=0, min_width=40, elem_id="upscale-refresh")
                scale = gr.Slider(1, 8, value=4, step=0.25, label="Scale", elem_id="upscale-scale")
                with gr.Row():
                    target_width = gr.Number(0, label="Target width (0 = by scale)", precision=0, minimum=0)
                    target_height = gr.Number(0, label="Target height (0 = by scale)", precision=0, minimum=0)
                with gr.Row():
                    upscaler_2 = gr.Dropdown(upscale.choices(second=True), value=NONE, label="Upscaler 2")
                    visibility = gr.Slider(0, 1, value=0, step=0.05, label="Upscaler 2 visibility")
                with gr.Accordion("Tiles", open=False):
                    tile_size = gr.Slider(0, 4096, value=0, step=8, label="Tile size (0 = from the device's memory)")
                    tile_overlap = gr.Slider(0, 256, value=32, step=4, label="Tile overlap (px)")
                with gr.Accordion("Refine with the diffusion model (SD upscale)", open=False,
                                  visible=upscale.generation is not None, elem_id="upscale-refine"):
                    refine_strength = gr.Slider(0, 1, value=0, step=0.05, label="Denoising strength (0 = off)",
                                                info="img2img over the upscaled image in overlapping tiles of the "
                                                     "model's own size. Every tile sees the whole prompt, so high "
                                                     "values draw its objects again in each tile: 0.1-0.3 adds "
                                                     "detail, or describe textures rather than objects. For "
                                                     "Stable Diffusion models: the built-in model redraws its "
                                                     "shapes in every tile",
                                                elem_id="upscale-refine-strength")
                    refine_prompt = gr.Textbox(label="Prompt (empty: the source image's prompt)", lines=2)
                    with gr.Row():
                        refine_model = gr.Dropdown([("The source's model", "")] + services.models.choices(),
                                                   value="", label="Model", allow_custom_value=True)
                        refine_steps = gr.Slider(1, 150, value=20, step=1, label="Steps")
                        refine_seed = gr.Number(-1, label="Seed (-1 = random)", precision=0)
            with gr.Column(scale=6, min_width=320):
                with gr.Row():
                    go = gr.Button("Upscale", variant="primary", elem_id="upscale-go", scale=3)
                    stop = gr.Button("Stop", variant="stop", elem_id="upscale-stop", scale=1)
                status = gr.Markdown("", elem_id="upscale-status")
                compare = gr.ImageSlider(label="Before / after", type="filepath", format="png", interactive=False,
                                         elem_id="upscale-compare")
                output = gr.Gallery(label="Output", columns=4, height="auto", format="png", interactive=False,
                                    preview=False, object_fit="contain", elem_id="upscale-output")

    form = Form(ids=ids, image=image, images=images, folder=folder, upscaler=upscaler, scale=scale,
                target_width=target_width, target_height=target_height, upscaler_2=upscaler_2,
                upscaler_2_visibility=visibility, tile_size=tile_size, tile_overlap=tile_overlap,
                refine_strength=refine_strength, refine_prompt=refine_prompt, refine_model=refine_model,
                refine_steps=refine_steps, refine_seed=refine_seed)

    def run(req, owner: str, progress=None):
        """Queue a validated request, stream (status, before/after, gallery) while it runs; return the result."""
        refs = upscale.sources(req)

        def render(update):
            index, total, step = update
            if index == WAITING_INDEX:
                return queue_wait_text(step), gr.update(), gr.update()
            share = step.tiles_done / step.tiles_total if step.tiles_total else 0
            if progress is not None:
                progress((index + share) / max(1, total), desc=f"image {index + 1}/{total}")
            tiles = f", tile {step.tiles_done}/{step.tiles_total}" if step.tiles_total else ""
            return f"Image {index + 1}/{total} ({step.label}){tiles}", gr.update(), gr.update()

        work = services.queue.interactive("upscale", req, owner)
        result = yield from stream_job(services.jobs, owner, lambda cancel, report: work(
            cancel, lambda i, n, u: report((i, n, u))), render)
        return refs, result

    @form.handler
    def on_upscale(values: dict, request: gr.Request, progress=gr.Progress()):
        req = upscale.validate(request_from_form(values))
        yield f"Queued… ({len(upscale.sources(req))} image(s))", gr.update(), gr.update()
        refs, result = yield from run(req, session_owner(request), progress)
        items = [(str(i.path), f"{i.source} → {i.size[0]}x{i.size[1]}") for i in result.images]
        before = upscale.source_file(refs[result.images[0].index]) if result.images else None
        pair = (str(before), str(result.images[0].path)) if before else None
        yield result.message, pair, items

    go.click(on_upscale, form.inputs, [status, compare, output], **ON_QUEUE, **PLUMBING)

    def on_stop(request: gr.Request):
        return stop_jobs(services.jobs, request)

    stop.click(on_stop, None, status, queue=False, **PLUMBING)

    def on_refresh(first, second):
        """List the models folder again (new or removed upscaler files)."""
        return (gr.update(choices=upscale.choices(), value=first),
                gr.update(choices=upscale.choices(second=True), value=second))

    refresh.click(on_refresh, [upscaler, upscaler_2], [upscaler, upscaler_2], queue=False, **PLUMBING)

    return Tab("Upscale", components={"ids": ids, "image": image}, api={"upscale": _api(services)})


def _api(services):
    """The `upscale` API endpoint: typed parameters in, the saved images out as plain JSON."""
    upscale = services.upscale

    def upscale_images(ids: str = "", paths: list[str] | None = None, upscaler: str = "Lanczos",
                       scale: float = 4.0, refine_strength: float = 0.0, refine_prompt: str = "") -> dict:
        """Upscale gallery images (comma-separated ids) and/or image files inside the studio's folders (paths)
        with an upscaler (a resampler, a file in the models folder's ESRGAN/, or builtin:upscaler) by `scale`
        1..8, then (refine_strength > 0) img2img over it in tiles with the source's model and prompt (or
        refine_prompt); waits its turn in the studio queue. Returns {"images": [{id, image_path, source, width,
        height}], "failures": [[source, why]], "message"}."""
        def call():
            req = upscale.validate(UpscaleRequest(upscaler=upscaler, scale=scale, ids=split_ids(ids or ""),
                                                  paths=list(paths or []), refine_strength=refine_strength,
                                                  refine_prompt=refine_prompt))
            result = services.queue.interactive("upscale", req, "api")(threading.Event())
            images = [{"id": i.id, "image_path": str(i.path), "source": i.source, "width": i.size[0],
                       "height": i.size[1]} for i in result.images]
            return {"images": images, "failures": [list(f) for f in result.failures], "message": result.message}
        return user_errors(call)()

    return upscale_images
