"""Generate tab: txt2img, img2img and inpaint with live previews, Stop, and PNG-info import."""

from __future__ import annotations

import random

import gradio as gr

from studio.generation_service import GenerationRequest
from studio.ui.common import (ON_QUEUE, PLUMBING, Form, LoadEvent, Tab, mode_visibility, session_owner, stop_jobs,
                              stream_generation, user_errors)

PNG_INFO_FIELDS = ("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "cfg_rescale", "width", "height",
                   "seed", "variation_seed", "variation_strength")
MAX_SEED = 2**32 - 1


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


def with_prompt_library(prompts, values: dict) -> dict:
    """The form's values with the prompt library applied: a template prompt expanded for the seed (a random
    seed is fixed first, so the image can be made again), then the negative template and the styles."""
    values = dict(values)
    styles, negative_template = values.pop("styles", None) or [], values.pop("negative_template", None) or ""
    templated = prompts.is_template(values.get("prompt")) or prompts.is_template(values.get("negative_prompt"))
    if templated and (values.get("seed") is None or values["seed"] < 0):
        values["seed"] = random.randrange(MAX_SEED)
    values["prompt"], values["negative_prompt"] = prompts.prepare(
        values.get("prompt") or "", values.get("negative_prompt") or "", styles, negative_template, values.get("seed"))
    return values


def request_from_form(values: dict) -> GenerationRequest:
    """The GenerationRequest a filled-in Generate form asks for (the inpaint editor gives image and mask)."""
    values = dict(values)
    editor = values.pop("inpaint_image", None)
    if values.get("mode") == "inpaint":
        values["init_image"], values["mask_image"] = mask_from_editor(editor)
    elif values.get("mode") != "img2img":
        values["init_image"] = None
    values["model"] = values.get("model") or ""
    return GenerationRequest(**values)


def create_tab(services) -> Tab:
    models, generation, prompts = services.models, services.generation, services.prompts
    choices = models.choices()
    default_model = models.default_model(services.settings.model)
    recommended = models.recommended(default_model)

    with gr.Tab("Generate", id="generate"):
        no_model = gr.Markdown(f"**{models.no_model_message()}**", visible=not choices)
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=320):
                with gr.Row():
                    model = gr.Dropdown(choices, value=default_model, label="Model", allow_custom_value=True,
                                        info="Installed models, or type a Hugging Face id (owner/name)", scale=4)
                    refresh = gr.Button("↻", scale=0, min_width=40)
                    vae = gr.Dropdown(models.vae_choices(), value="", label="VAE", scale=2, min_width=180,
                                      info="the model's own, auto, or one from VAE/")
                mode = gr.Radio(generation.modes(), value="txt2img", label="Mode")
                prompt = gr.Textbox(label="Prompt", lines=3, placeholder="a red circle on a blue background",
                                    elem_id="prompt", info="Ctrl+Enter generates")
                negative = gr.Textbox(label="Negative prompt", lines=2)
                with gr.Row():
                    styles = gr.Dropdown(prompts.styles.names(), value=[], multiselect=True, label="Styles", scale=3,
                                         info="wrap the prompt ({prompt}) or append to it, in order (Prompts tab)")
                    negative_template = gr.Dropdown([""] + prompts.negatives.names(), value="", scale=2,
                                                    label="Negative template", info="added to the negative prompt")
                with gr.Row():
                    lora_pick = gr.Dropdown(models.lora_names(), label="LoRA", scale=3,
                                            info="adds <lora:name:weight> to the prompt; stack several")
                    lora_weight = gr.Slider(-2, 2, value=0.8, step=0.05, label="LoRA weight", scale=2)
                    lora_add = gr.Button("Add LoRA", scale=1)
                with gr.Row():
                    sampler = gr.Dropdown(generation.samplers(), value=generation.default_sampler(), label="Sampler")
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
                with gr.Accordion("Variation seed", open=False):
                    with gr.Row():
                        variation_seed = gr.Number(-1, label="Variation seed (-1 = random)", precision=0)
                        variation_strength = gr.Slider(0, 1, value=0, step=0.01, label="Variation strength",
                                                       info="0 = the seed's image; 1 = the variation seed's")
                with gr.Group(visible=False) as img2img_group:
                    init_image = gr.Image(label="Init image", type="filepath", sources=["upload", "clipboard"],
                                           elem_id="init-image")
                with gr.Group(visible=False) as inpaint_group:
                    editor = gr.ImageEditor(label="Inpaint: upload an image, paint the area to change",
                                            type="pil", brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"),
                                            layers=False, transforms=())
                strength = gr.Slider(0.01, 1.0, value=0.75, step=0.01, label="Denoising strength", visible=False)
                png_info = gr.File(label="PNG info: drop an image made here, in A1111, ComfyUI, Fooocus, InvokeAI "
                                         "or NovelAI to reuse its parameters",
                                   file_types=["image"], type="filepath")
            with gr.Column(scale=6, min_width=320):
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="generate-button", scale=3)
                    stop = gr.Button("Stop", variant="stop", elem_id="stop-button", scale=1)
                status = gr.Markdown("", elem_id="generate-status")
                preview = gr.Image(label="Live preview", interactive=False, height=256, format="png")
                gallery = gr.Gallery(label="Output", columns=4, height=420, format="png", elem_id="output-gallery",
                                     interactive=False, preview=False, object_fit="contain")
                info = gr.Textbox(label="Parameters (A1111 infotext)", lines=4, interactive=False,
                                  elem_id="output-info")
                with gr.Row():
                    send_controlnet = gr.Button("Send to ControlNet", size="sm", elem_id="send-to-controlnet")
                    send_upscale = gr.Button("Send to Upscale", size="sm", elem_id="send-to-upscale")
                chosen = gr.State(None)  # the output picked in the gallery (else its first image is sent)

    form = Form(model=model, mode=mode, prompt=prompt, negative_prompt=negative, sampler=sampler, steps=steps,
                cfg_scale=cfg, cfg_rescale=cfg_rescale, width=width, height=height, seed=seed,
                batch_count=batch_count, batch_size=batch_size, init_image=init_image, inpaint_image=editor,
                strength=strength, vae=vae, styles=styles, negative_template=negative_template,
                variation_seed=variation_seed, variation_strength=variation_strength)

    mode.change(mode_visibility, mode, [img2img_group, inpaint_group, strength], queue=False, **PLUMBING)

    @user_errors
    def on_model(model_id):
        """A model's native size and its recommended CFG scale and rescale."""
        if not model_id:
            return [gr.update()] * 4
        size = models.native_size(model_id)
        settings = models.recommended(model_id)
        return size, size, settings["cfg_scale"], settings["cfg_rescale"]

    model.change(on_model, model, [width, height, cfg, cfg_rescale], queue=False, **PLUMBING)

    def on_refresh(current):
        ids = models.choices()
        return gr.update(choices=ids, value=current if current in ids or current else models.default_model()), \
            gr.update(visible=not ids)

    refresh.click(on_refresh, model, [model, no_model], queue=False, **PLUMBING)

    def on_add_lora(name, weight, text):
        if not name:
            return gr.update(), gr.update(choices=models.lora_names())
        tag = f"<lora:{name}:{weight:g}>"
        return (f"{text.rstrip()} {tag}".strip() if tag not in (text or "") else text), gr.update()

    lora_add.click(on_add_lora, [lora_pick, lora_weight, prompt], [prompt, lora_pick], queue=False, **PLUMBING)
    lora_pick.focus(lambda: gr.update(choices=models.lora_names()), None, lora_pick, queue=False, **PLUMBING)
    styles.focus(lambda: gr.update(choices=prompts.styles.names()), None, styles, queue=False, **PLUMBING)
    negative_template.focus(lambda: gr.update(choices=[""] + prompts.negatives.names()), None, negative_template,
                            queue=False, **PLUMBING)

    png_outputs = [form.components[name] for name in PNG_INFO_FIELDS]

    @user_errors
    def on_png_info(image):
        if not image:
            return [gr.update()] * (len(PNG_INFO_FIELDS) + 1)
        fields = generation.parameters_of(image)
        # A1111's "apply styles if any": a prompt made with known styles comes back as the bare prompt + styles
        found, bare, bare_negative = prompts.extract_styles(fields.get("prompt", ""), fields.get("negative_prompt", ""))
        if found:
            fields.update(prompt=bare, negative_prompt=bare_negative)
        gr.Info(fields["message"] + (f" Styles: {', '.join(found)}." if found else ""))
        return [gr.update(value=fields[name]) if name in fields else gr.update() for name in PNG_INFO_FIELDS] + [
            found if found else gr.update()]

    png_info.upload(on_png_info, png_info, png_outputs + [styles], api_name="png_info")

    @form.handler
    def on_generate(values: dict, request: gr.Request, progress=gr.Progress()):
        req = generation.validate(request_from_form(with_prompt_library(prompts, values)))
        yield from stream_generation(services.jobs, session_owner(request), req,
                                     services.queue.interactive("generate", req, session_owner(request)), progress)

    generate.click(on_generate, form.inputs, [preview, gallery, info, status], api_name="generate", **ON_QUEUE)

    def on_stop(request: gr.Request):
        return stop_jobs(services.jobs, request)

    stop.click(on_stop, None, status, queue=False, api_name="stop")

    def on_select(evt: gr.SelectData, items):
        return generation.infotext_of(items[evt.index][0] if items else None)

    gallery.select(on_select, gallery, info, queue=False, **PLUMBING)

    def on_pick(evt: gr.SelectData, items):
        return items[evt.index][0] if items and evt.index < len(items) else None

    gallery.select(on_pick, gallery, chosen, queue=False, **PLUMBING)
    gallery.change(lambda items: None, gallery, chosen, queue=False, **PLUMBING)

    def picked_output(picked, items, where: str) -> str:
        path = picked or (items[0][0] if items else None)
        if not path:
            raise gr.Error(f"Generate an image first, then send it to {where}.")
        return path

    def connect(tabs: dict, tab_row) -> None:
        """Send to ControlNet: the picked output (or the first) becomes unit 1's control image, with the prompt.
        Send to Upscale: it becomes the Upscale tab's single image (its gallery-ids box is cleared)."""
        target = tabs.get("ControlNet")
        if target is not None:
            send_controlnet.click(
                lambda picked, items, text: (picked_output(picked, items, "ControlNet"), text,
                                             gr.Tabs(selected="controlnet")),
                [chosen, gallery, prompt], [target.components["control_image"], target.components["prompt"], tab_row],
                queue=False, **PLUMBING)
        upscale = tabs.get("Upscale")
        if upscale is not None:
            send_upscale.click(
                lambda picked, items: (picked_output(picked, items, "Upscale"), "", gr.Tabs(selected="upscale")),
                [chosen, gallery], [upscale.components["image"], upscale.components["ids"], tab_row],
                queue=False, **PLUMBING)

    return Tab("Generate", components={"prompt": prompt, "negative_prompt": negative, "model": model,
                                       "init_image": init_image, "mode": mode, "seed": seed, "styles": styles,
                                       "variation_seed": variation_seed, "variation_strength": variation_strength},
               connect=connect)
