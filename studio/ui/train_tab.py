"""Train tab: build a dataset, set LoRA parameters, train in the background and watch the loss fall live."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from studio.training_service import TrainingRequest
from studio.ui.common import ON_GPU, PLUMBING, Form, LoadEvent, Tab, user_errors

POLL_SECONDS = 1.5
RUN_COLUMNS = ["run", "name", "status", "step", "final loss", "images", "rank", "lr", "LoRA file"]
FINISHED = {"done": gr.Info, "stopped": gr.Info, "failed": gr.Warning}  # toast when a run ends


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}:{seconds % 60:02d}"


def _row_label(index: int, path: str) -> str:
    """What the caption table shows for an image: its number and file name (the full path is kept in state)."""
    return f"{index + 1}. {Path(path).name}"


def _row_index(label) -> int:
    """The dataset index a caption-table row stands for (-1 when the label is not one of ours)."""
    head = str(label).split(".", 1)[0]
    return int(head) - 1 if head.isdigit() else -1


def curve_frame(losses: list[tuple[int, float]], smooth):
    """The loss plot's frame: the raw losses and `smooth(raw)` as two series."""
    import pandas as pd

    if not losses:
        # a text-typed empty series keeps the legend categorical (raw / smoothed), not a numeric colour ramp
        return pd.DataFrame({"step": pd.Series([], dtype=int), "loss": pd.Series([], dtype=float),
                             "series": pd.Series([], dtype=object)})
    steps = [s for s, _ in losses]
    raw = [v for _, v in losses]
    return pd.DataFrame({"step": steps * 2, "loss": raw + smooth(raw),
                         "series": ["raw"] * len(raw) + ["smoothed"] * len(raw)})


def create_tab(services) -> Tab:
    training = services.training
    model_choices = training.base_models()
    default_model = services.models.default_model()
    start = training.presets()["quick"]  # the fields open on the preset the dropdown shows
    with gr.Tab("Train", id="train"):
        gr.Markdown("Train a LoRA on your images. The curve updates live; the rest of the studio stays usable.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                with gr.Accordion("1 · Dataset", open=True):
                    uploads = gr.File(label="Images (a .txt beside an image is read as its caption, one phrasing "
                                            "per line)",
                                      file_count="multiple", type="filepath", elem_id="train-upload")
                    with gr.Row():
                        folder = gr.Textbox(label="…or a folder on this machine", scale=4,
                                            info="inside the data or models folder, or one the studio was "
                                                 "started with (--allow-dir)")
                        add_folder = gr.Button("Add folder", scale=1)
                    with gr.Row():
                        gallery_query = gr.Textbox(label="…or gallery images whose prompt contains", scale=4)
                        add_gallery = gr.Button("Add from gallery", scale=1)
                    with gr.Row():
                        trigger = gr.Textbox(label="Trigger word", placeholder="e.g. sks star", scale=4)
                        add_trigger = gr.Button("Add to all captions", scale=1)
                    caption_models = services.captions.models()
                    with gr.Row():
                        caption_model = gr.Dropdown(
                            caption_models, value=caption_models[0] if caption_models else None, scale=3,
                            label="Auto-caption model", interactive=bool(caption_models),
                            info="models/Caption/<name> (BLIP, GIT, ...)" if caption_models else
                            f"unavailable: no captioning model in {services.captions.folder}")
                        with gr.Column(scale=2, min_width=180):
                            caption_overwrite = gr.Checkbox(False, label="Overwrite existing captions")
                            auto_caption = gr.Button("Auto-caption", interactive=bool(caption_models),
                                                     elem_id="train-autocaption")
                    dataset_info = gr.Markdown("Dataset: 0 images")
                    table = gr.Dataframe(headers=["image", "caption"], datatype=["str", "str"], interactive=True,
                                         label="Captions (edit in place; separate several phrasings of one image "
                                               "with |: each step trains on one of them)",
                                         wrap=True, elem_id="train-captions", static_columns=[0],
                                         column_widths=["22%", "78%"])
                    grid = gr.Gallery(label="Dataset", columns=8, height=200, interactive=False)
                with gr.Accordion("2 · Parameters", open=True):
                    with gr.Row():
                        preset = gr.Dropdown(list(training.presets()), value="quick", label="Preset", scale=3,
                                             info="'new shape': for a shape the model cannot draw yet "
                                                  "(give it a trigger word)")
                        preset_name = gr.Textbox(label="Save current settings as preset", scale=2)
                        save_preset = gr.Button("Save preset", scale=1)
                    with gr.Row():
                        base = gr.Dropdown(model_choices, value=default_model, label="Base model")
                        name = gr.Textbox("my-lora", label="LoRA name")
                    with gr.Row():
                        rank = gr.Slider(1, 128, value=start["rank"], step=1, label="Rank")
                        alpha = gr.Slider(1, 128, value=start["alpha"], step=1, label="Alpha")
                        lr = gr.Number(start["learning_rate"], label="Learning rate")
                        scheduler = gr.Dropdown(training.lr_schedulers(), value=start["lr_scheduler"], label="LR scheduler")
                    with gr.Row():
                        steps = gr.Number(start["max_steps"], label="Steps", precision=0)
                        epochs = gr.Number(0, label="…or epochs (0 = use steps)")
                        batch = gr.Slider(1, 32, value=start["batch_size"], step=1, label="Batch size")
                        resolution = gr.Slider(64, 1024, value=128, step=64, label="Resolution (aspect buckets)")
                        seed = gr.Number(0, label="Seed", precision=0)
                    val_prompts = gr.Textbox(label="Validation prompts (one per line)", lines=2)
                    with gr.Row():
                        val_every = gr.Number(start["validation_every"], label="Validate every N steps", precision=0)
                        ck_every = gr.Number(start["checkpoint_every"], label="Checkpoint every N steps", precision=0)
                    with gr.Accordion("Advanced: augmentation, layers, trigger embedding, regularization",
                                      open=False, elem_id="train-advanced"):
                        with gr.Row():
                            flip = gr.Checkbox(False, label="Random flip", info="mirrored captions swap left/right")
                            crop = gr.Checkbox(False, label="Random crop")
                            train_te = gr.Checkbox(False, label="Train text encoder")
                        with gr.Row():
                            te_lr = gr.Number(0.0, label="Text encoder LR", minimum=0, maximum=0.1,
                                              info="0 = the learning rate above; 5-10x lower is usual")
                            loraplus = gr.Number(1.0, label="LoRA+ ratio", minimum=1, maximum=64,
                                                 info="up matrices learn this many times faster; 1 = plain LoRA")
                            lora_dropout = gr.Slider(0, 0.9, value=start["lora_dropout"], step=0.05,
                                                     label="LoRA dropout",
                                                     info="drops a share of each LoRA layer's input while training "
                                                          "(regularizes; 0.1 is usual)")
                        with gr.Row():
                            layers = gr.Radio(training.layer_choices(), value=start["lora_layers"], label="LoRA layers",
                                              info="LoCon or convolutions only: for shapes the base model cannot draw "
                                                   "yet (convolutions only leaves its colour binding alone)")
                        with gr.Row():
                            train_emb = gr.Checkbox(start["train_embedding"], label="Trigger embedding",
                                                    info="pivotal tuning: learns a new embedding for the trigger word")
                            emb_init = gr.Textbox(label="Embedding starts from",
                                                  placeholder="the trigger word itself",
                                                  info="a known word close to the concept (e.g. 'triangle' for a "
                                                       "star) teaches it a little faster, but some of that word's "
                                                       "own images turn into the new concept; empty leaves it be")
                        with gr.Row():
                            emb_lr = gr.Number(start["embedding_learning_rate"], label="Embedding LR",
                                               minimum=1e-6, maximum=1,
                                               info="high (4e-2) moves it away from its start word fast, which "
                                                    "keeps that word's own concept intact")
                            emb_only = gr.Number(0, label="Embedding-only steps", precision=0, minimum=0,
                                                 info="pivotal tuning's first phase: the embedding trains alone "
                                                      "for these first steps, then the LoRA joins")
                        with gr.Row():
                            jitter = gr.Slider(0, 0.5, value=0.0, step=0.05, label="Colour jitter")
                            caption_dropout = gr.Slider(0, 0.5, value=0.0, step=0.05, label="Caption dropout",
                                                        info="share of steps trained with an empty caption")
                            subject_weight = gr.Slider(1, 20, value=start["subject_weight"], step=0.5,
                                                       label="Subject weight",
                                                       info="loss weight where an image's alpha channel marks the "
                                                            "subject (PNG cut-outs); 1 = even")
                        with gr.Row():
                            min_snr = gr.Number(0.0, label="Min-SNR gamma", minimum=0, maximum=20,
                                                info="evens out the noise levels' pull on the weights (5 is usual); "
                                                     "0 = off. Fewer duplicate objects, but a new shape learns "
                                                     "slower")
                            precision = gr.Dropdown(training.precisions(), value="no", label="Mixed precision",
                                                    info="bf16/fp16 where the device supports it")
                            skip_blocks = gr.Textbox(label="Skip UNet blocks",
                                                     placeholder="e.g. up_blocks.2, mid_block",
                                                     info="blocks left without LoRA (a block weight of 0)")
                        with gr.Row():
                            reg_folder = gr.Textbox(label="Regularization images folder (optional)", scale=3,
                                                    info="images + .txt captions of what the base model already "
                                                         "knows: they keep its other concepts intact")
                            reg_share = gr.Slider(0, 0.9, value=0.0, step=0.05, scale=2,
                                                  label="Regularization share of each batch")
                        with gr.Row():
                            prior_distill = gr.Checkbox(False, label="Distil the prior",
                                                        info="regularization images aim at the base model's own "
                                                             "prediction (LoRA off) instead of their pixels; about "
                                                             "7% slower per step")
            with gr.Column(scale=6):
                with gr.Row():
                    train = gr.Button("Train", variant="primary", elem_id="train-button", scale=3)
                    stop = gr.Button("Stop", variant="stop", elem_id="train-stop", scale=1)
                stats = gr.Markdown("No training yet.", elem_id="train-stats")
                plot = gr.LinePlot(curve_frame([], training.smoothed), x="step", y="loss", color="series", height=320,
                                   x_axis_format="d", color_map={"raw": "#c4b5fd", "smoothed": "#6d28d9"}, label="Loss",
                                   elem_id="train-plot", x_title="step", y_title="loss")
                validation = gr.Gallery(label="Validation images", columns=6, height=220, format="png",
                                        interactive=False, elem_id="train-validation", preview=False)
                log_box = gr.Textbox(label="Log", lines=6, max_lines=12, interactive=False, autoscroll=True)
                with gr.Accordion("Runs", open=True):
                    runs = gr.Dataframe(headers=RUN_COLUMNS, interactive=False, elem_id="train-runs")
                    with gr.Row():
                        run_pick = gr.Dropdown([], label="Run", scale=3)
                        resume = gr.Button("Resume", scale=1)
                        refresh = gr.Button("Refresh", scale=1)
                with gr.Accordion("Compare checkpoints (X/Y grid)", open=False):
                    with gr.Row():
                        cmp_prompt = gr.Textbox(label="Prompt", scale=3)
                        cmp_seed = gr.Number(1, label="Seed", precision=0, scale=1)
                        cmp_weights = gr.Textbox("0, 0.5, 1", label="LoRA weights", scale=1)
                    compare = gr.Button("Make grid")
                    cmp_image = gr.Image(label="Checkpoints × weights", format="png", interactive=False)
        current = gr.State(None)
        started = gr.Textbox(visible=False, label="Run id")  # what /train returns to API clients
        runs_shown = gr.State("")  # what the run list last showed (see poll)
        items_state = gr.State([])
        timer = gr.Timer(POLL_SECONDS, active=True)

    def show_dataset(items, skipped=()):
        rows = [[_row_label(n, i.path), i.caption] for n, i in enumerate(items)]
        return items, rows, [i.path for i in items[:64]], training.describe_dataset(items, skipped)

    @user_errors
    def on_upload(files, items):
        new, skipped = training.load_dataset(list(files or []))
        return show_dataset(training.merge_datasets(items, new), skipped)

    @user_errors
    def on_folder(folder, items):
        new, skipped = training.dataset_from_folder(folder)
        return show_dataset(training.merge_datasets(items, new), skipped)

    @user_errors
    def on_gallery(query, items):
        new, skipped = training.dataset_from_gallery(query)
        return show_dataset(training.merge_datasets(items, new), skipped)

    def on_table_edit(frame, items):
        rows = frame.values.tolist() if hasattr(frame, "values") else frame
        return training.with_captions(items, {_row_index(r[0]): str(r[1] or "") for r in rows})

    def on_trigger(trigger_word, items):
        return show_dataset(training.add_trigger(items, trigger_word or ""))

    @user_errors
    def on_auto_caption(model, overwrite, items):
        return show_dataset(services.captions.caption(items, model, overwrite))

    outs = [items_state, table, grid, dataset_info]
    auto_caption.click(on_auto_caption, [caption_model, caption_overwrite, items_state], outs,
                       api_name="dataset_auto_caption", **ON_GPU)
    uploads.upload(on_upload, [uploads, items_state], outs, api_name="dataset_add_files")
    add_folder.click(on_folder, [folder, items_state], outs, api_name="dataset_add_folder")
    add_gallery.click(on_gallery, [gallery_query, items_state], outs, api_name="dataset_add_gallery")
    add_trigger.click(on_trigger, [trigger, items_state], outs, api_name="dataset_add_trigger")
    table.input(on_table_edit, [table, items_state], items_state, **PLUMBING)

    form = Form(
        dataset=items_state, base_model=base, name=name, rank=rank, alpha=alpha, learning_rate=lr,
        lr_scheduler=scheduler, max_steps=steps, epochs=epochs, batch_size=batch, resolution=resolution, seed=seed,
        validation_prompts=val_prompts, validation_every=val_every, checkpoint_every=ck_every, flip=flip,
        random_crop=crop, train_text_encoder=train_te, text_encoder_learning_rate=te_lr, loraplus_lr_ratio=loraplus,
        lora_dropout=lora_dropout, lora_layers=layers, train_embedding=train_emb, embedding_init=emb_init,
        embedding_learning_rate=emb_lr, embedding_only_steps=emb_only, color_jitter=jitter,
        caption_dropout=caption_dropout, subject_weight=subject_weight, min_snr_gamma=min_snr,
        mixed_precision=precision, skip_blocks=skip_blocks, regularization_folder=reg_folder,
        regularization_share=reg_share, prior_distillation=prior_distill, trigger_word=trigger,
    )
    preset_inputs = [form.components[f] for f in training.preset_fields()]

    def on_preset(name):
        """Set every field the preset names; a field an older saved preset lacks is left as it is."""
        p = training.presets().get(name, {})
        return [p[f] if f in p else gr.update() for f in training.preset_fields()]

    preset.change(on_preset, preset, preset_inputs, queue=False, **PLUMBING)

    @user_errors
    def on_save_preset(preset_label, *values):
        training.save_preset(preset_label, dict(zip(training.preset_fields(), values)))
        gr.Info(f"Preset {preset_label.strip()} saved")
        return gr.update(choices=list(training.presets()), value=preset_label.strip())

    save_preset.click(on_save_preset, [preset_name, *preset_inputs], preset, queue=False, **PLUMBING)

    @form.handler
    def on_train(values: dict):
        req = TrainingRequest(**values)
        replaces = training.lora_file((req.name or "").strip()).exists()
        run_id = training.train(req)
        gr.Info(f"Training started: run {run_id}")
        if replaces:
            gr.Warning(f"A LoRA named {req.name.strip()} exists: this run replaces it when it ends (the earlier "
                       "run keeps its own copy in its run folder); change LoRA name to keep both")
        return run_id, run_id

    train.click(on_train, form.inputs, [current, started], api_name="train")

    def on_stop(run_id):
        """Stop this page's run (after a reload the page has none: then the one running training)."""
        training.stop(run_id)
        return "Stopping after the current step…"

    stop.click(on_stop, current, stats, queue=False, **PLUMBING)

    def train_stop(run_id: str) -> str:
        """Stop run `run_id` after its current step."""
        if not run_id or not training.stop(run_id):
            return f"run {run_id!r} is not running"
        return "stopping after the current step"

    def run_rows() -> list[list]:
        """One row per run, newest first; a live run shows its current step and status, not the last saved."""
        rows = []
        for r in training.list_runs():
            cfg, loss, live = r.get("config", {}), r.get("final_loss"), training.live(r["id"])
            step, status = (live.step, live.status) if live else (r.get("step", 0), r["status"])
            rows.append([r["id"], r["name"], status, step, f"{loss:.4f}" if loss else "",
                         r.get("dataset_size", 0), cfg.get("rank"), cfg.get("learning_rate"), r.get("lora_path", "")])
        return rows

    def status_text(live) -> str:
        pct = 100 * live.step / max(1, live.total)
        text = (f"**{live.name}** · {live.status} · step **{live.step}/{live.total}** ({pct:.0f}%) · "
                f"loss {live.losses[-1][1]:.4f} · lr {live.lr:.2e} · {live.steps_per_second:.2f} steps/s · "
                f"ETA {_format_eta(live.eta_seconds)}" if live.losses else f"**{live.name}** · {live.status}")
        if live.error:
            text += f"\n\n**Error:** {live.error}"
        if live.lora_path:
            text += f"\n\nLoRA saved: `{live.lora_path}` (use `<lora:{live.name}:0.8>` in a prompt)"
        return text

    def poll(run_id, shown):
        """Every tick: the stats line, curve, validation images and log of the run this page started; the run
        list too whenever a run's status changed or another 25 steps were done (not every tick: it would
        reset the table's scroll); a toast when the run ends."""
        live = training.live(run_id)
        if live is None:
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update(), shown
        state = f"{run_id}:{live.status}:{live.step // 25}"
        if state != shown and live.status in FINISHED and not shown.startswith(f"{run_id}:{live.status}:"):
            FINISHED[live.status](f"Training {live.name}: {live.status} at step {live.step}")
        rows = run_rows() if state != shown else gr.update()
        return (status_text(live), curve_frame(live.losses, training.smoothed),
                [tuple(v) for v in live.validation[-16:]], "\n".join(live.log[-200:]), rows, state)

    timer.tick(poll, [current, runs_shown], [stats, plot, validation, log_box, runs, runs_shown], queue=False,
               show_progress="hidden", **PLUMBING)

    def train_status(run_id: str) -> dict:
        """A run's live state (status, step, total, losses, LoRA file), or its record when it is not live."""
        live = training.live(run_id or None)
        if live is None:
            found = [r for r in training.list_runs() if r["id"] == run_id]
            return {k: found[0].get(k) for k in ("id", "name", "status", "step", "final_loss", "lora_path")} \
                if found else {}
        return {"id": live.run_id, "name": live.name, "status": live.status, "step": live.step, "total": live.total,
                "losses": live.losses[-50:], "lora_path": live.lora_path, "error": live.error}


    def runs_view():
        rows = run_rows()
        ids = [r[0] for r in rows]
        return rows, gr.update(choices=ids, value=ids[0] if ids else None)

    refresh.click(runs_view, None, [runs, run_pick], queue=False, **PLUMBING)
    train.click(runs_view, None, [runs, run_pick], queue=False, **PLUMBING)

    @user_errors
    def on_resume(run_id):
        training.resume(run_id)
        gr.Info(f"Resumed {run_id}")
        return run_id

    resume.click(on_resume, run_pick, current, api_name="train_resume")

    @user_errors
    def on_compare(run_id, prompt, seed, weights):
        return training.compare_request(run_id, prompt, seed, weights)

    compare.click(on_compare, [run_pick, cmp_prompt, cmp_seed, cmp_weights], cmp_image, api_name="train_compare",
                  **ON_GPU)
    return Tab("Train", on_load=[LoadEvent(runs_view, [], [runs, run_pick])], api={"train_status": train_status, "train_stop": train_stop},
               components={"dataset_folder": folder})
