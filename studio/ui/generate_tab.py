"""Generate tab: txt2img, img2img and inpaint with live previews, Stop, and PNG-info import."""

from __future__ import annotations

import queue
import threading

import gradio as gr

from pipelines.registry import DEFAULT_GENERATION
from pipelines.samplers import DEFAULT_SAMPLER, sampler_names
from studio.errors import ValidationError
from studio.generation_service import MODES, GenerationRequest
from studio.infotext import infotext_to_fields, parse_infotext, read_png_parameters
from studio.ui.errors import user_errors

GPU_QUEUE = "gpu"
NATIVE_SIZE = {"builtin": 128, "sd": 512, "sdxl": 1024}


def mask_from_editor(editor_value):
    """(init image, mask) from an ImageEditor value: the background, and white wherever any layer is painted."""
    from PIL import Image

    if not editor_value or editor_value.get("background") is None:
        return None, None
    background = editor_value["background"]
    mask = Image.new("L", background.size, 0)
    for layer in editor_value.get("layers") or []:
        if layer is None:
            continue
        alpha = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a > 0 else 0)
        mask.paste(255, (0, 0), alpha.resize(background.size))
    return background.convert("RGB"), mask


def _run_in_thread(fn, on_error):
    """Run fn in a daemon thread; exceptions are handed to on_error."""
    def target():
        try:
            fn()
        except BaseException as exc:  # re-raised in the handler's thread
            on_error(exc)
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def create_tab(services) -> dict:
    """Build the Generate tab; returns its main components for other tabs (e.g. send-to)."""
    models = services.models
    choices = models.choices()
    default_model = models.default_model(services.settings.model)
    recommended = models.recommended(default_model) if default_model else DEFAULT_GENERATION

    with gr.Tab("Generate", id="generate"):
        no_model = gr.Markdown(f"**{models.registry.no_model_message()}**", visible=not choices)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                with gr.Row():
                    model = gr.Dropdown(choices, value=default_model, label="Model", allow_custom_value=True,
                                        info="Installed models, or type a Hugging Face id (owner/name)", scale=4)
                    refresh = gr.Button("↻", scale=0, min_width=40)
                mode = gr.Radio(list(MODES), value="txt2img", label="Mode")
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder="a red circle on a blue background",
                                    elem_id="prompt")
                negative = gr.Textbox(label="Negative prompt", lines=2)
                with gr.Row():
                    lora_pick = gr.Dropdown(sorted(models.registry.lora_files()), label="LoRA", scale=3,
                                            info="adds <lora:name:weight> to the prompt; stack several")
                    lora_weight = gr.Slider(-2, 2, value=0.8, step=0.05, label="LoRA weight", scale=2)
                    lora_add = gr.Button("Add LoRA", scale=1)
                with gr.Row():
                    sampler = gr.Dropdown(sampler_names(), value=DEFAULT_SAMPLER, label="Sampler")
                    steps = gr.Slider(1, 150, value=20, step=1, label="Steps")
                    cfg = gr.Slider(0, 30, value=recommended["cfg_scale"], step=0.5, label="CFG scale")
                    cfg_rescale = gr.Slider(0, 1, value=recommended["cfg_rescale"], step=0.05, label="CFG rescale",
                                            info="tames over-saturation at high CFG (txt2img)")
                with gr.Row():
                    width = gr.Slider(64, 2048, value=128, step=8, label="Width")
                    height = gr.Slider(64, 2048, value=128, step=8, label="Height")
                with gr.Row():
                    seed = gr.Number(-1, label="Seed (-1 = random)", precision=0)
                    batch_count = gr.Slider(1, services.settings.max_batch_count, value=1, step=1,
                                            label="Batch count")
                    batch_size = gr.Slider(1, services.settings.max_batch_size, value=1, step=1, label="Batch size")
                with gr.Group(visible=False) as img2img_group:
                    init_image = gr.Image(label="Init image", type="filepath", sources=["upload", "clipboard"])
                with gr.Group(visible=False) as inpaint_group:
                    editor = gr.ImageEditor(label="Inpaint: upload an image, paint the area to change",
                                            type="pil", brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                            layers=False, transforms=())
                strength = gr.Slider(0.01, 1.0, value=0.75, step=0.01, label="Denoising strength", visible=False)
                png_info = gr.File(label="PNG info: drop an image made here or in A1111 to reuse its parameters",
                                   file_types=["image"], type="filepath")
            with gr.Column(scale=6):
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate-button", scale=3)
                    stop = gr.Button("Stop", variant="stop", elem_id="stop-button", scale=1)
                status = gr.Markdown("", elem_id="generate-status")
                preview = gr.Image(label="Live preview", interactive=False, height=256, format="png")
                gallery = gr.Gallery(label="Output", columns=4, height=420, format="png", elem_id="output-gallery",
                                     interactive=False, preview=False, object_fit="contain")
                info = gr.Textbox(label="Parameters (A1111 infotext)", lines=4, interactive=False,
                                  elem_id="output-info")

    def on_mode(selected):
        return (gr.update(visible=selected == "img2img"), gr.update(visible=selected == "inpaint"),
                gr.update(visible=selected != "txt2img"))

    mode.change(on_mode, mode, [img2img_group, inpaint_group, strength], queue=False)

    @user_errors
    def on_model(model_id):
        """A model's native size and its recommended CFG scale and rescale."""
        if not model_id:
            return [gr.update()] * 4
        source = models.resolve(model_id)
        size = NATIVE_SIZE["builtin" if source.kind == "builtin" else source.family]
        settings = models.recommended(model_id)
        return size, size, settings["cfg_scale"], settings["cfg_rescale"]

    model.change(on_model, model, [width, height, cfg, cfg_rescale], queue=False)

    def on_refresh(current):
        ids = models.choices()
        return gr.update(choices=ids, value=current if current in ids or current else models.default_model()), \
            gr.update(visible=not ids)

    refresh.click(on_refresh, model, [model, no_model], queue=False)

    def on_add_lora(name, weight, text):
        if not name:
            return gr.update(), gr.update(choices=sorted(models.registry.lora_files()))
        tag = f"<lora:{name}:{weight:g}>"
        return (f"{text.rstrip()} {tag}".strip() if tag not in (text or "") else text), gr.update()

    lora_add.click(on_add_lora, [lora_pick, lora_weight, prompt], [prompt, lora_pick], queue=False)
    lora_pick.focus(lambda: gr.update(choices=sorted(models.registry.lora_files())), None, lora_pick, queue=False)

    @user_errors
    def on_png_info(path):
        if not path:
            return [gr.update()] * 9
        text = read_png_parameters(path)
        if not text:
            raise ValidationError("png_info: this image carries no generation parameters", "png_info")
        fields = infotext_to_fields(parse_infotext(text))
        names = ["prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "cfg_rescale", "width", "height",
                 "seed"]
        updates = []
        for name in names:
            value = fields.get(name)
            if name == "sampler" and value not in sampler_names():
                value = None
            updates.append(gr.update(value=value) if value is not None else gr.update())
        gr.Info("Parameters read from the image.")
        return updates

    png_info.upload(on_png_info, png_info, [prompt, negative, sampler, steps, cfg, cfg_rescale, width, height, seed])

    @user_errors
    def on_generate(model_id, mode_value, prompt_text, negative_text, sampler_name, steps_value, cfg_value,
                    rescale_value, width_value, height_value, seed_value, count, size, init_path, editor_value, strength_value,
                    request: gr.Request, progress=gr.Progress()):
        init, mask = None, None
        if mode_value == "img2img":
            init = init_path
        elif mode_value == "inpaint":
            init, mask = mask_from_editor(editor_value)
            if init is None:
                raise ValidationError("init_image is required for inpaint: upload an image in the editor",
                                      "init_image")
        req = GenerationRequest(
            prompt=prompt_text, negative_prompt=negative_text, model=model_id or "", mode=mode_value,
            sampler=sampler_name, steps=steps_value, cfg_scale=cfg_value,
            cfg_rescale=rescale_value, width=width_value, height=height_value,
            seed=-1 if seed_value is None else seed_value, batch_count=count, batch_size=size,
            init_image=init, mask_image=mask, strength=strength_value,
        )
        req = services.generation.validate(req)
        updates: queue.Queue = queue.Queue()
        outcome: dict = {}
        owner = request.session_hash if request else "api"
        total_steps = req.steps if req.mode == "txt2img" else max(1, int(req.steps * req.strength))
        yield None, [], "", f"Queued on the device… ({req.batch_count * req.batch_size} image(s))"

        with services.jobs.track(owner) as cancel:
            def work():
                outcome["result"] = services.generation.generate(
                    req, cancel, lambda i, n, u: updates.put((i, n, u)))

            thread = _run_in_thread(work, lambda exc: outcome.__setitem__("error", exc))
            while thread.is_alive() or not updates.empty():
                try:
                    index, total, update = updates.get(timeout=0.1)
                except queue.Empty:
                    continue
                if index < 0:
                    progress(update.step / max(1, update.total), desc="Downloading model")
                    yield gr.update(), gr.update(), gr.update(), \
                        f"Downloading model… {update.step / 2**20:.0f} of {update.total / 2**20:.0f} MB"
                    continue
                done = index * total_steps + update.step
                progress(done / max(1, total * total_steps), desc=f"image {index + 1}/{total}")
                if update.preview is not None:
                    yield update.preview, gr.update(), gr.update(), \
                        f"Image {index + 1}/{total}, step {update.step}/{update.total}"
            thread.join()
        if "error" in outcome:
            raise outcome["error"]
        result = outcome["result"]
        items = [(str(img.path), f"seed {img.seed}") for img in result.images]
        first = result.images[0].infotext if result.images else ""
        seeds = ", ".join(str(img.seed) for img in result.images)
        message = result.message + (f" · seed {seeds}" if seeds else "")
        yield (str(result.images[-1].path) if result.images else None), items, first, message

    generate.click(
        on_generate,
        [model, mode, prompt, negative, sampler, steps, cfg, cfg_rescale, width, height, seed, batch_count,
         batch_size, init_image, editor, strength],
        [preview, gallery, info, status], concurrency_id=GPU_QUEUE, concurrency_limit=1, api_name="generate",
    )

    def on_stop(request: gr.Request):
        n = services.jobs.cancel(request.session_hash if request else "api")
        return "Stopping…" if n else "Nothing is running."

    stop.click(on_stop, None, status, queue=False, api_name="stop")

    def on_select(evt: gr.SelectData, items):
        path = items[evt.index][0] if items else None
        text = read_png_parameters(path) if path else ""
        return text or ""

    gallery.select(on_select, gallery, info, queue=False)
    return {"prompt": prompt, "model": model}
