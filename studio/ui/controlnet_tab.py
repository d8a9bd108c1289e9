"""ControlNet tab: txt2img, img2img or inpaint guided by up to three ControlNet units, each with a control image
(uploaded, or drawn on a blank canvas: the strokes become white lines on black), a preprocessor whose map can be
previewed, a ControlNet and its weights; live preview, Stop, and PNG info that restores the units."""

from __future__ import annotations

import gradio as gr

from studio.controlnet_service import MAX_UNITS, RESIZE_MODES, ControlNetRequest, ControlUnit
from studio.ui.common import (ON_QUEUE, PLUMBING, Form, Tab, generation_fields, mode_visibility, session_owner,
                              stop_jobs, stream_generation, user_errors)
from studio.ui.generate_tab import mask_from_editor

CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
UNIT_FIELDS = ("image", "sketch", "enabled", "preprocessor", "pixel_perfect", "resolution", "threshold_a",
               "threshold_b", "model", "weight", "guidance_start", "guidance_end", "control_mode", "resize_mode")
CANVAS = 512


def control_image(value):
    """The picture a unit's canvas holds: strokes drawn on the blank canvas become white lines on black (the map a
    scribble ControlNet reads, whatever the brush colour); an uploaded picture comes with any strokes drawn on it,
    flattened. A path or image given directly (API callers) is passed on as it is; None when there is none."""
    from PIL import Image

    if not isinstance(value, dict):
        return value
    background, layers = value.get("background"), [x for x in value.get("layers") or [] if x is not None]
    if isinstance(background, str):
        background = Image.open(background)
    blank = background is None or all(low == high for low, high in background.convert("RGB").getextrema())
    if blank and layers:
        size = background.size if background is not None else layers[0].size
        strokes = Image.new("L", size, 0)
        for layer in layers:
            alpha = layer.convert("RGBA").getchannel("A").point(lambda a: 255 if a > 0 else 0)
            strokes.paste(255, (0, 0), alpha.resize(size))
        return strokes.convert("RGB")
    image = value.get("composite")
    image = image if image is not None else background
    if image is None:
        return None
    if isinstance(image, str):
        image = Image.open(image)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (0, 0, 0))
        flat.paste(rgba, (0, 0), rgba)
        return flat
    return image.convert("RGB")


def unit_image(upload, sketch):
    """A unit's control image: the uploaded picture, else the drawing (white lines on black), else None."""
    return upload if upload is not None else control_image(sketch)


def unit_from_values(values: dict, n: int) -> ControlUnit:
    """Unit `n`'s settings from form values named unit<n>_<field>."""
    unit = {name: values.get(f"unit{n}_{name}") for name in UNIT_FIELDS}
    unit["image"] = unit_image(unit["image"], unit.pop("sketch"))
    return ControlUnit(**{k: v for k, v in unit.items() if v is not None or k.startswith("threshold")})


def request_from_form(values: dict) -> ControlNetRequest:
    """The ControlNetRequest a filled-in ControlNet form asks for (enabled units only)."""
    values = dict(values)
    units = [unit_from_values(values, n) for n in range(1, MAX_UNITS + 1)]
    for key in [k for k in values if k.startswith("unit")]:
        values.pop(key)
    editor = values.pop("inpaint_image", None)
    if values.get("mode") == "inpaint":
        values["init_image"], values["mask_image"] = mask_from_editor(editor)
    elif values.get("mode") != "img2img":
        values["init_image"] = None
    values["model"] = values.get("model") or ""
    return ControlNetRequest(**values, units=[u for u in units if u.enabled])


def threshold_updates(thresholds: list, current: tuple = (None, None)) -> list:
    """Slider updates for a preprocessor's threshold A and B (hidden where it has none); a current value inside
    the new range is kept (so PNG info's restored thresholds survive), any other becomes the default."""
    out = []
    for t, value in zip(thresholds, current):
        if t is None:
            out.append(gr.update(visible=False))
            continue
        keep = value is not None and t["minimum"] <= value <= t["maximum"]
        out.append(gr.update(visible=True, label=t["label"], minimum=t["minimum"], maximum=t["maximum"],
                             value=value if keep else t["value"], step=t["step"]))
    return out


def create_tab(services) -> Tab:
    models, controlnet, generation = services.models, services.controlnet, services.generation
    default_model = models.default_model(services.settings.model)
    recommended = models.recommended(default_model)
    default_net = controlnet.default_controlnet(default_model)
    units = []

    with gr.Tab("ControlNet", id="controlnet"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=5, min_width=320):
                with gr.Row():
                    model = gr.Dropdown(models.choices(), value=default_model, label="Model", allow_custom_value=True,
                                        info="Installed models, or a Hugging Face id (owner/name)", scale=4)
                    refresh = gr.Button("↻", scale=0, min_width=40, elem_id="cn-refresh")
                mode = gr.Radio(generation.modes(), value="txt2img", label="Mode")
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="cn-prompt",
                                    placeholder="a red circle on a blue background")
                negative = gr.Textbox(label="Negative prompt", lines=1)
                fields = generation_fields(services, recommended, prefix="cn-", rescale=False)  # none in diffusers
                with gr.Group(visible=False) as img2img_group:
                    init_image = gr.Image(label="Init image", type="filepath", sources=["upload", "clipboard"])
                with gr.Group(visible=False) as inpaint_group:
                    editor = gr.ImageEditor(label="Inpaint: upload an image, paint the area to change", type="pil",
                                            brush=gr.Brush(colors=["#ffffff"], color_mode="fixed"), layers=False,
                                            transforms=(), format="png")
                strength = gr.Slider(0.01, 1.0, value=0.75, step=0.01, label="Denoising strength", visible=False)
                for n in range(1, MAX_UNITS + 1):
                    units.append(_unit_widgets(n, controlnet, default_net))
                png_info = gr.File(label="PNG info: drop an image made with ControlNet here or in A1111 to reuse "
                                   "its parameters and units", file_types=["image"], type="filepath")
            with gr.Column(scale=6, min_width=320):
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="cn-generate", scale=3)
                    stop = gr.Button("Stop", variant="stop", elem_id="cn-stop", scale=1)
                status = gr.Markdown("", elem_id="cn-status")
                preview = gr.Image(label="Live preview", interactive=False, height=256, format="png")
                gallery = gr.Gallery(label="Output", columns=4, height=420, format="png", elem_id="cn-output",
                                     interactive=False, preview=False, object_fit="contain")
                info = gr.Textbox(label="Parameters (A1111 infotext)", lines=4, interactive=False, elem_id="cn-info")

    unit_components = {f"unit{n}_{name}": w[name] for n, w in enumerate(units, 1) for name in UNIT_FIELDS}
    form = Form(model=model, mode=mode, prompt=prompt, negative_prompt=negative, **fields, init_image=init_image,
                inpaint_image=editor, strength=strength, **unit_components)

    mode.change(mode_visibility, mode, [img2img_group, inpaint_group, strength], queue=False, **PLUMBING)

    @user_errors
    def on_model(model_id):
        """The model's native size, recommended CFG, and its default ControlNet in every unit."""
        if not model_id:
            return [gr.update()] * (4 + MAX_UNITS)
        size, settings = models.native_size(model_id), models.recommended(model_id)
        net = controlnet.default_controlnet(model_id) or None
        return [size, size, settings["cfg_scale"], settings["cfg_rescale"]] + [gr.update(value=net)] * MAX_UNITS

    model.change(on_model, model, [fields["width"], fields["height"], fields["cfg_scale"], fields["cfg_rescale"]]
                 + [w["model"] for w in units], queue=False, **PLUMBING)

    def on_refresh(current):
        nets, steps = controlnet.controlnet_choices(), controlnet.preprocessor_choices()
        return ([gr.update(choices=models.choices(), value=current)] + [gr.update(choices=nets)] * MAX_UNITS
                + [gr.update(choices=steps)] * MAX_UNITS)

    refresh.click(on_refresh, model, [model] + [w["model"] for w in units] + [w["preprocessor"] for w in units],
                  queue=False, **PLUMBING)

    for n, widgets in enumerate(units, 1):
        _wire_unit(n, widgets, controlnet, fields)

    @form.handler
    def on_generate(values: dict, request: gr.Request, progress=gr.Progress()):
        req, _ = controlnet.validate(request_from_form(values))
        yield from stream_generation(services.jobs, session_owner(request), req,
                                     services.queue.interactive("controlnet", req, session_owner(request)),
                                     progress)

    generate.click(on_generate, form.inputs, [preview, gallery, info, status], api_name="controlnet", **ON_QUEUE)

    def on_stop(request: gr.Request):
        return stop_jobs(services.jobs, request)

    stop.click(on_stop, None, status, queue=False, **PLUMBING)

    def on_select(evt: gr.SelectData, items):
        return generation.infotext_of(items[evt.index][0] if items else None)

    gallery.select(on_select, gallery, info, queue=False, **PLUMBING)

    restored = ["prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "cfg_rescale", "width", "height", "seed"]
    unit_restored = ("preprocessor", "model", "weight", "resize_mode", "resolution", "threshold_a", "threshold_b",
                     "guidance_start", "guidance_end", "pixel_perfect", "control_mode")
    png_outputs = ([form.components[name] for name in restored]
                   + [units[n][name] for n in range(MAX_UNITS) for name in ("enabled", *unit_restored)])

    @user_errors
    def on_png_info(image):
        if not image:
            return [gr.update()] * len(png_outputs)
        found = controlnet.parameters_of(image)
        out = [gr.update(value=found[name]) if name in found else gr.update() for name in restored]
        saved_units = found.get("controlnet", [])
        for n in range(MAX_UNITS):
            unit = saved_units[n] if n < len(saved_units) else None
            out.append(gr.update(value=unit is not None))
            out += [gr.update(value=unit[name]) if unit and unit.get(name) is not None else gr.update()
                    for name in unit_restored]
        gr.Info(f"{found['message']} {len(saved_units)} ControlNet unit(s) restored.")
        return out

    png_info.upload(on_png_info, png_info, png_outputs, **PLUMBING)
    return Tab("ControlNet", components={"control_image": units[0]["image"], "prompt": prompt, "model": model})


def _unit_widgets(n: int, controlnet, default_net: str) -> dict:
    """One unit's accordion: control image (uploaded or drawn) and its map, preprocessor and its settings,
    ControlNet and its weights."""
    first = n == 1
    thresholds = controlnet.thresholds("canny")
    w: dict = {}
    with gr.Accordion(f"ControlNet unit {n}", open=first, elem_id=f"cn-unit{n}"):
        w["enabled"] = gr.Checkbox(first, label="Enable", elem_id=f"cn-unit{n}-enabled")
        w["image"] = gr.Image(label="Control image", type="pil", image_mode="RGB", sources=["upload", "clipboard"],
                              format="png", height=300, elem_id=f"cn-unit{n}-image")
        with gr.Accordion("…or draw one (used when no image is uploaded)", open=False):
            w["sketch"] = gr.ImageEditor(
                label="Sketch: the strokes become white lines on black", type="pil", sources=(),
                brush=gr.Brush(colors=["#000000"], color_mode="fixed"), layers=False, transforms=(), format="png",
                canvas_size=(CANVAS, CANVAS), height=380, elem_id=f"cn-unit{n}-sketch")
        with gr.Row():
            w["preprocessor"] = gr.Dropdown(controlnet.preprocessor_choices(), value="canny", label="Preprocessor",
                                            elem_id=f"cn-unit{n}-preprocessor")
            w["pixel_perfect"] = gr.Checkbox(True, label="Pixel perfect",
                                             info="processor resolution from the output size")
            w["resolution"] = gr.Slider(64, 2048, value=512, step=8, label="Processor resolution", visible=False)
        with gr.Row():
            w["threshold_a"] = gr.Slider(thresholds[0]["minimum"], thresholds[0]["maximum"], thresholds[0]["value"],
                                         step=thresholds[0]["step"], label=thresholds[0]["label"])
            w["threshold_b"] = gr.Slider(thresholds[1]["minimum"], thresholds[1]["maximum"], thresholds[1]["value"],
                                         step=thresholds[1]["step"], label=thresholds[1]["label"])
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=140):
                w["preview"] = gr.Button("Preview map", size="sm", elem_id=f"cn-unit{n}-preview")
                w["note"] = gr.Markdown("", elem_id=f"cn-unit{n}-note")
            w["map"] = gr.Image(label="Map the ControlNet sees", interactive=False, format="png", height=200,
                                scale=1, elem_id=f"cn-unit{n}-map")
        w["model"] = gr.Dropdown(controlnet.controlnet_choices(), value=default_net or None, label="ControlNet",
                                 allow_custom_value=True, info="from the models folder's ControlNet/, the built-in "
                                 "one, or a Hugging Face id", elem_id=f"cn-unit{n}-model")
        with gr.Row():
            w["weight"] = gr.Slider(0, 2, value=1, step=0.05, label="Control weight")
            w["guidance_start"] = gr.Slider(0, 1, value=0, step=0.01, label="Starting control step")
            w["guidance_end"] = gr.Slider(0, 1, value=1, step=0.01, label="Ending control step")
        w["control_mode"] = gr.Radio(list(CONTROL_MODES), value=CONTROL_MODES[0], label="Control mode")
        w["resize_mode"] = gr.Radio(list(RESIZE_MODES), value=RESIZE_MODES[0], label="Resize mode")
    return w


def _wire_unit(n: int, w: dict, controlnet, fields: dict) -> None:
    def on_preprocessor(name, a, b):
        return threshold_updates(controlnet.thresholds(name), (a, b))

    w["preprocessor"].change(on_preprocessor, [w["preprocessor"], w["threshold_a"], w["threshold_b"]],
                             [w["threshold_a"], w["threshold_b"]], queue=False, **PLUMBING)
    w["pixel_perfect"].change(lambda on: gr.update(visible=not on), w["pixel_perfect"], w["resolution"],
                              queue=False, **PLUMBING)

    preview_form = Form(image=w["image"], sketch=w["sketch"], preprocessor=w["preprocessor"],
                        pixel_perfect=w["pixel_perfect"], resolution=w["resolution"], threshold_a=w["threshold_a"],
                        threshold_b=w["threshold_b"], resize_mode=w["resize_mode"], width=fields["width"],
                        height=fields["height"])

    @preview_form.handler
    def on_preview(values: dict):
        """The map this unit gives the ControlNet at the output size (preprocessed maps are cached)."""
        width, height = values.pop("width"), values.pop("height")
        values["image"] = unit_image(values["image"], values.pop("sketch"))
        unit = ControlUnit(**values)
        shown = controlnet.preview(unit, width, height, n)
        timing = "from the cache" if shown.cached else f"in {shown.seconds * 1000:.0f} ms"
        note = f"{unit.preprocessor} map at {shown.resolution} px {timing}" + (f"; {shown.note}" if shown.note else "")
        return shown.image, note

    # unit 1's button is the named endpoint; the others work the same way in the page only
    named = {"api_name": "controlnet_preview"} if n == 1 else PLUMBING
    w["preview"].click(on_preview, preview_form.inputs, [w["map"], w["note"]], **named)
