"""Prompts tab: the prompt library. Saved prompts (search, tags, favourites, versions compared and restored),
style presets and negative templates (A1111 styles.csv import/export), wildcards and templates (preview N
samples), the prompt history, the prompt builder, and the seed explorer (one prompt over N seeds, then
variations of the chosen one). "Send to Generate" fills the Generate tab."""

from __future__ import annotations

import time

import gradio as gr

from studio.generation_service import GenerationRequest
from studio.infotext import infotext_to_fields, parse_infotext
from studio.prompts.builder import CATEGORIES, compose
from studio.prompts.seed_explorer import seed_grid_request, variations_request
from studio.ui.common import (ON_QUEUE, PLUMBING, Form, LoadEvent, Tab, session_owner, stop_jobs, stream_generation,
                              user_errors)

PROMPT_COLUMNS = ["id", "★", "name", "prompt", "negative prompt", "tags", "versions", "edited"]
VERSION_COLUMNS = ["version", "saved", "name", "prompt", "negative prompt", "tags"]
STYLE_COLUMNS = ["name", "prompt", "negative prompt", "source"]
NEGATIVE_COLUMNS = ["name", "negative prompt", "source"]
HISTORY_COLUMNS = ["key", "last used", "uses", "prompt", "negative prompt"]


def when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(timestamp))


def prompt_rows(saved: list[dict]) -> list[list]:
    return [[d["id"], "★" if d.get("favourite") else "", d["name"], d["prompt"], d["negative_prompt"],
             ", ".join(d["tags"]), len(d["versions"]), when(d["updated"])] for d in saved]


def version_rows(versions: list[dict]) -> list[list]:
    return [[v["version"], when(v["saved"]), v["name"], v["prompt"], v["negative_prompt"], ", ".join(v["tags"])]
            for v in versions]


def history_rows(entries: list[dict]) -> list[list]:
    return [[e["key"], when(e["last"]), e["count"], e["prompt"], e["negative_prompt"]] for e in entries]


def picked_row(evt: gr.SelectData, rows) -> list | None:
    """The table row a select event points at (rows as a pandas frame or a list)."""
    data = rows.values.tolist() if hasattr(rows, "values") else (rows or [])
    row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
    return data[row] if row is not None and row < len(data) else None


def create_tab(services) -> Tab:
    prompts, generation, models = services.prompts, services.generation, services.models
    default_model = models.default_model(services.settings.model)
    builtin_first = (default_model or "").startswith("builtin:")
    senders = []  # (button, inputs, Generate field names, values function): wired to Generate in connect()

    def sends(button, inputs, names, fn):
        """Register a "Send to Generate" button: fn(*inputs) gives the values of Generate's fields `names`."""
        senders.append((button, inputs, names, fn))

    with gr.Tab("Prompts", id="prompts"):
        with gr.Tabs():
            # ------------------------------------------------------------------ library
            with gr.Tab("Library", id="prompts-library"):
                with gr.Row():
                    query = gr.Textbox(label="Search", placeholder="words in the name, prompt, tags", scale=3)
                    tag_filter = gr.Dropdown([""] + prompts.saved.tags(), value="", label="Tag", scale=1,
                                             allow_custom_value=True)
                    favourites_only = gr.Checkbox(label="Favourites only", scale=1)
                table = gr.Dataframe(headers=PROMPT_COLUMNS, interactive=False, label="Saved prompts",
                                     elem_id="saved-prompts")
                with gr.Row():
                    with gr.Column(scale=3):
                        prompt_id = gr.Textbox(label="Id (empty: a new prompt)", elem_id="saved-prompt-id")
                        name = gr.Textbox(label="Name")
                        text = gr.Textbox(label="Prompt", lines=3)
                        negative = gr.Textbox(label="Negative prompt", lines=2)
                        with gr.Row():
                            tags = gr.Textbox(label="Tags (comma-separated)", scale=3)
                            favourite = gr.Checkbox(label="Favourite", scale=1)
                        with gr.Row():
                            save = gr.Button("Save (a new version when editing)", variant="primary")
                            new = gr.Button("New")
                            delete = gr.Button("Delete", variant="stop")
                            send_saved = gr.Button("Send to Generate", elem_id="saved-send")
                            schedule_saved = gr.Button("Send to a schedule", elem_id="saved-schedule")
                        library_status = gr.Markdown("")
                    with gr.Column(scale=3):
                        versions = gr.Dataframe(headers=VERSION_COLUMNS, interactive=False, label="Versions")
                        with gr.Row():
                            old_version = gr.Number(1, label="Compare version", precision=0)
                            new_version = gr.Number(2, label="with version", precision=0)
                            compare = gr.Button("Compare")
                            restore = gr.Button("Restore the first")
                        diff = gr.Code(label="Difference", language=None, interactive=False)

            # ------------------------------------------------------------------ styles
            with gr.Tab("Styles", id="prompts-styles"):
                gr.Markdown("A style wraps the prompt where its text holds `{prompt}`, else it is appended after "
                            "`, ` (as in A1111). Shipped styles can be overridden by saving one with the same name.")
                styles_table = gr.Dataframe(headers=STYLE_COLUMNS, interactive=False, label="Styles",
                                            value=[[s["name"], s["prompt"], s["negative_prompt"], s["source"]]
                                                   for s in prompts.styles.list()])
                with gr.Row():
                    style_name = gr.Textbox(label="Name", scale=1)
                    style_prompt = gr.Textbox(label="Prompt (with {prompt})", scale=3)
                    style_negative = gr.Textbox(label="Negative prompt", scale=3)
                with gr.Row():
                    style_save = gr.Button("Save style", variant="primary")
                    style_delete = gr.Button("Delete style", variant="stop")
                    style_import = gr.File(label="Import A1111 styles.csv", file_types=[".csv"], type="filepath")
                    style_export = gr.Button("Export styles.csv")
                    exported = gr.File(label="styles.csv", interactive=False)
                styles_status = gr.Markdown("")
                gr.Markdown("**Negative-prompt templates** (chosen in Generate; appended to its negative prompt)")
                negatives_table = gr.Dataframe(headers=NEGATIVE_COLUMNS, interactive=False,
                                               value=[[n["name"], n["negative_prompt"], n["source"]]
                                                      for n in prompts.negatives.list()])
                with gr.Row():
                    negative_name = gr.Textbox(label="Name", scale=1)
                    negative_text = gr.Textbox(label="Negative prompt", scale=4)
                    negative_save = gr.Button("Save template", scale=1)
                    negative_delete = gr.Button("Delete template", variant="stop", scale=1)

            # ------------------------------------------------------------------ wildcards & templates
            with gr.Tab("Wildcards & templates", id="prompts-templates"):
                gr.Markdown(f"`{{red|green|blue}}` picks one (choices nest), `__color__` a line of `color.txt` "
                            f"from `{prompts.wildcards.folders[0]}` or the shipped examples. The same template and "
                            "seed always give the same prompt; Generate and Schedule expand templates too.")
                template = gr.Textbox(label="Template", lines=2, elem_id="template-text",
                                      value="a {small|large} __color__ __shape__ on a __color__ background")
                with gr.Row():
                    sample_count = gr.Slider(1, 50, value=8, step=1, label="Samples")
                    sample_seed = gr.Number(0, label="Seed of the first sample", precision=0)
                    preview = gr.Button("Preview", variant="primary", elem_id="template-preview")
                    send_template = gr.Button("Send to Generate", elem_id="template-send")
                    schedule_template = gr.Button("Send to a schedule", elem_id="template-schedule")
                samples = gr.Textbox(label="Samples (one per seed)", lines=8, interactive=False,
                                     elem_id="template-samples")
                wildcard_names = gr.Markdown(", ".join(f"`__{n}__`" for n in prompts.wildcards.names()))
                with gr.Accordion("New or edited wildcard", open=False):
                    with gr.Row():
                        wildcard_name = gr.Textbox(label="Name (folders with /)", scale=1)
                        wildcard_options = gr.Textbox(label="Options (one per line)", lines=4, scale=3)
                        wildcard_save = gr.Button("Save wildcard", scale=1)

            # ------------------------------------------------------------------ history
            with gr.Tab("History", id="prompts-history"):
                with gr.Row():
                    history_query = gr.Textbox(label="Search the prompts used", scale=4)
                    history_refresh = gr.Button("↻", scale=0, min_width=40)
                history = gr.Dataframe(headers=HISTORY_COLUMNS, interactive=False, elem_id="prompt-history",
                                       label="Newest first (click a row, then send it)")
                with gr.Row():
                    history_pick = gr.Textbox(label="Picked prompt", interactive=False, scale=4)
                    history_negative = gr.Textbox(label="Negative prompt", interactive=False, scale=3)
                    send_history = gr.Button("Send to Generate", scale=1)

            # ------------------------------------------------------------------ builder
            with gr.Tab("Builder", id="prompts-builder"):
                vocabulary = prompts.builder.vocabulary(builtin_first)
                vocabulary_kind = gr.Radio(["Built-in model", "Editable lists"], label="Vocabulary",
                                           value="Built-in model" if builtin_first else "Editable lists")
                picks, weights = {}, {}
                for row in (CATEGORIES[:3], CATEGORIES[3:]):
                    with gr.Row():
                        for category in row:
                            with gr.Column(min_width=200):
                                picks[category] = gr.Dropdown(vocabulary.lists[category], value=[], multiselect=True,
                                                              allow_custom_value=True,
                                                              label=vocabulary.labels[category])
                                weights[category] = gr.Slider(0, 2, value=1, step=0.05,
                                                              label=f"{category} weight")
                composed = gr.Textbox(label="Composed prompt", lines=2, elem_id="builder-prompt")
                send_builder = gr.Button("Send to Generate")
                with gr.Accordion("Edit a list", open=False):
                    with gr.Row():
                        list_category = gr.Dropdown(list(CATEGORIES), value=CATEGORIES[0], label="List")
                        list_text = gr.Textbox(label="Terms (one per line)", lines=6,
                                               value="\n".join(prompts.builder.terms(CATEGORIES[0])))
                        list_save = gr.Button("Save list")

            # ------------------------------------------------------------------ seed explorer
            with gr.Tab("Seed explorer", id="prompts-seeds"):
                with gr.Row():
                    explore_model = gr.Dropdown(models.choices(), value=default_model, label="Model",
                                                allow_custom_value=True)
                    explore_sampler = gr.Dropdown(generation.samplers(), value=generation.default_sampler(),
                                                  label="Sampler")
                    explore_steps = gr.Slider(1, 150, value=20, step=1, label="Steps")
                    explore_size = gr.Slider(64, 2048, value=models.native_size(default_model) if default_model
                                             else 128, step=8, label="Size (square)")
                explore_prompt = gr.Textbox(label="Prompt", lines=2, elem_id="explore-prompt")
                explore_negative = gr.Textbox(label="Negative prompt")
                with gr.Row():
                    explore_count = gr.Slider(1, 16, value=8, step=1, label="Seeds to try")
                    first_seed = gr.Number(-1, label="First seed (-1 = random)", precision=0)
                    explore = gr.Button("Explore seeds", variant="primary", elem_id="explore-button")
                    explore_stop = gr.Button("Stop", variant="stop")
                with gr.Row():
                    picked_seed = gr.Number(-1, label="Picked seed (click an image)", precision=0)
                    variation_count = gr.Slider(1, 16, value=4, step=1, label="Variations")
                    variation_strength = gr.Slider(0.01, 1, value=0.2, step=0.01, label="Variation strength")
                    variation_seed = gr.Number(-1, label="First variation seed (-1 = random)", precision=0)
                    vary = gr.Button("Make variations", variant="primary")
                explore_status = gr.Markdown("")
                explore_preview = gr.Image(label="Live preview", interactive=False, height=192, format="png")
                explore_grid = gr.Gallery(label="Results", columns=4, height=420, format="png",
                                          interactive=False, preview=False, object_fit="contain")
                explore_info = gr.Textbox(label="Parameters (A1111 infotext)", lines=3, interactive=False)
                picked_variation = gr.State({"variation_seed": -1, "variation_strength": 0})
                send_seed = gr.Button("Send picked image to Generate")

    # ---------------------------------------------------------------------- library events
    library_filters = [query, tag_filter, favourites_only]

    @user_errors
    def prompts_list(search: str = "", tag: str = "", favourites: bool = False) -> list[list]:
        """Saved prompts matching a search, a tag and the favourite filter (favourites first, newest edits)."""
        return prompt_rows(prompts.saved.list(search, tag, favourites))

    save_form = Form(prompt_id=prompt_id, name=name, prompt=text, negative_prompt=negative, tags=tags,
                     favourite=favourite)

    @save_form.handler
    def prompts_save(values: dict):
        """Save a new prompt (empty id) or a new version of one; returns its id, the table and its versions."""
        doc = prompts.saved.save(values["name"], values["prompt"], values["negative_prompt"], values["tags"],
                                 values["prompt_id"] or "", bool(values["favourite"]))
        return (doc["id"], prompt_rows(prompts.saved.list()), version_rows(prompts.saved.versions(doc["id"])),
                f"Saved **{doc['name']}** (version {len(doc['versions'])}).")

    @user_errors
    def prompts_delete(prompt_id: str) -> tuple:
        prompts.saved.delete(prompt_id)
        return "", prompt_rows(prompts.saved.list()), [], "Deleted."

    @user_errors
    def prompt_versions(prompt_id: str) -> list[list]:
        """Every version of a saved prompt, oldest first."""
        return version_rows(prompts.saved.versions(prompt_id))

    @user_errors
    def prompt_compare(prompt_id: str, old: int, new: int) -> str:
        """A unified diff between two versions of a saved prompt."""
        return prompts.saved.compare(prompt_id, old, new)

    @user_errors
    def prompt_restore(prompt_id: str, version: int) -> tuple:
        """Make an earlier version current again (kept as a new version)."""
        doc = prompts.saved.restore(prompt_id, version)
        return (doc["name"], doc["prompt"], doc["negative_prompt"], ", ".join(doc["tags"]),
                prompt_rows(prompts.saved.list()), version_rows(prompts.saved.versions(prompt_id)),
                f"Restored version {int(version)} as version {len(doc['versions'])}.")

    def on_pick_prompt(evt: gr.SelectData, rows):
        row = picked_row(evt, rows)
        if row is None:
            return [gr.update()] * 7
        doc = prompts.saved.get(row[0])
        return (doc["id"], doc["name"], doc["prompt"], doc["negative_prompt"], ", ".join(doc["tags"]),
                bool(doc.get("favourite")), version_rows(prompts.saved.versions(doc["id"])))

    editor = [prompt_id, name, text, negative, tags, favourite]
    query.submit(prompts_list, library_filters, table, queue=False, api_name="prompts_list")  # first: keeps the name
    for event in (tag_filter.change, favourites_only.change):
        event(prompts_list, library_filters, table, queue=False, **PLUMBING)
    tag_filter.focus(lambda: gr.update(choices=[""] + prompts.saved.tags()), None, tag_filter, queue=False,
                     **PLUMBING)
    save.click(prompts_save, save_form.inputs, [prompt_id, table, versions, library_status], queue=False,
               api_name="prompts_save")
    delete.click(prompts_delete, prompt_id, [prompt_id, table, versions, library_status], queue=False,
                 api_name="prompts_delete")
    new.click(lambda: ("", "", "", "", "", False, []), None, editor + [versions], queue=False, **PLUMBING)
    table.select(on_pick_prompt, table, editor + [versions], queue=False, **PLUMBING)
    prompt_id.submit(prompt_versions, prompt_id, versions, queue=False, api_name="prompt_versions")
    compare.click(prompt_compare, [prompt_id, old_version, new_version], diff, queue=False, api_name="prompt_compare")
    restore.click(prompt_restore, [prompt_id, old_version], [name, text, negative, tags, table, versions,
                                                             library_status], queue=False, api_name="prompt_restore")
    sends(send_saved, [text, negative], ["prompt", "negative_prompt"], lambda p, n: (p, n))

    # ---------------------------------------------------------------------- styles events
    def style_rows():
        return [[s["name"], s["prompt"], s["negative_prompt"], s["source"]] for s in prompts.styles.list()]

    def negative_rows():
        return [[n["name"], n["negative_prompt"], n["source"]] for n in prompts.negatives.list()]

    @user_errors
    def styles_list() -> list[list]:
        """Every style preset: name, prompt, negative prompt, source (shipped or user)."""
        return style_rows()

    @user_errors
    def styles_save(style: str, prompt: str, negative_prompt: str) -> tuple:
        """Create or replace a user style ({prompt} marks where the prompt goes)."""
        prompts.styles.save({"name": style, "prompt": prompt, "negative_prompt": negative_prompt})
        return style_rows(), f"Saved style **{style.strip()}**."

    @user_errors
    def styles_delete(style: str) -> tuple:
        prompts.styles.delete(style)
        return style_rows(), f"Deleted style **{style}**."

    @user_errors
    def styles_import(path) -> tuple:
        """Import an A1111 styles.csv (styles with the same name are replaced)."""
        if not path:
            return gr.update(), ""
        count = prompts.import_styles_csv(path)
        return style_rows(), f"Imported {count} style(s)."

    @user_errors
    def styles_export() -> str:
        """Every style as an A1111 styles.csv file."""
        return str(prompts.export_styles_csv())

    @user_errors
    def negative_templates_save(template_name: str, negative_prompt: str) -> list[list]:
        prompts.negatives.save({"name": template_name, "negative_prompt": negative_prompt})
        return negative_rows()

    @user_errors
    def negative_templates_delete(template_name: str) -> list[list]:
        prompts.negatives.delete(template_name)
        return negative_rows()

    def on_pick_style(evt: gr.SelectData, rows):
        row = picked_row(evt, rows)
        return (row[0], row[1], row[2]) if row else (gr.update(),) * 3

    def on_pick_negative(evt: gr.SelectData, rows):
        row = picked_row(evt, rows)
        return (row[0], row[1]) if row else (gr.update(),) * 2

    style_save.click(styles_save, [style_name, style_prompt, style_negative], [styles_table, styles_status],
                     queue=False, api_name="styles_save")
    style_delete.click(styles_delete, style_name, [styles_table, styles_status], queue=False, api_name="styles_delete")
    style_import.upload(styles_import, style_import, [styles_table, styles_status], queue=False,
                        api_name="styles_import")
    style_export.click(styles_export, None, exported, queue=False, api_name="styles_export")
    styles_table.select(on_pick_style, styles_table, [style_name, style_prompt, style_negative], queue=False,
                        **PLUMBING)
    negative_save.click(negative_templates_save, [negative_name, negative_text], negatives_table, queue=False,
                        api_name="negative_templates_save")
    negative_delete.click(negative_templates_delete, negative_name, negatives_table, queue=False, **PLUMBING)
    negatives_table.select(on_pick_negative, negatives_table, [negative_name, negative_text], queue=False,
                           **PLUMBING)

    # ---------------------------------------------------------------------- templates events
    @user_errors
    def wildcards_preview(template_text: str, count: int = 8, seed: int = 0) -> str:
        """N prompts of a template, sample i made with seed + i (a missing wildcard is a named error)."""
        prompts.templates.check(template_text)
        return "\n".join(prompts.templates.samples(template_text, count, seed))

    @user_errors
    def wildcards_list() -> list[str]:
        """Every wildcard name (`folder/name` for nested ones)."""
        return prompts.wildcards.names()

    @user_errors
    def wildcards_save(wildcard: str, options: str) -> str:
        prompts.wildcards.save(wildcard, options)
        return ", ".join(f"`__{n}__`" for n in prompts.wildcards.names())

    preview.click(wildcards_preview, [template, sample_count, sample_seed], samples, queue=False,
                  api_name="wildcards_preview")
    template.submit(wildcards_preview, [template, sample_count, sample_seed], samples, queue=False, **PLUMBING)
    wildcard_save.click(wildcards_save, [wildcard_name, wildcard_options], wildcard_names, queue=False,
                        api_name="wildcards_save")
    sends(send_template, [template], ["prompt"], lambda t: (t,))

    # ---------------------------------------------------------------------- history events
    @user_errors
    def history_search(search: str = "", limit: int = 200) -> list[list]:
        """The prompts used, newest first, holding every word of the search."""
        return history_rows(prompts.history.search(search, limit))

    def on_pick_history(evt: gr.SelectData, rows):
        row = picked_row(evt, rows)
        return (row[3], row[4]) if row else (gr.update(),) * 2

    history_query.submit(history_search, history_query, history, queue=False, api_name="history_search")
    history_refresh.click(history_search, history_query, history, queue=False, **PLUMBING)
    history.select(on_pick_history, history, [history_pick, history_negative], queue=False, **PLUMBING)
    sends(send_history, [history_pick, history_negative], ["prompt", "negative_prompt"], lambda p, n: (p, n))

    # ---------------------------------------------------------------------- builder events
    builder_form = Form(builtin=vocabulary_kind, **picks, **{f"{c}_weight": weights[c] for c in CATEGORIES})

    @builder_form.handler
    def builder_compose(values: dict) -> str:
        """The prompt for the picked terms, each category's weight as (term:weight)."""
        vocab = prompts.builder.vocabulary(values["builtin"] in (True, "Built-in model"))
        return compose(vocab, {c: values[c] for c in CATEGORIES}, {c: values[f"{c}_weight"] for c in CATEGORIES})

    def on_vocabulary(kind):
        vocab = prompts.builder.vocabulary(kind == "Built-in model")
        return [gr.update(choices=vocab.lists[c], value=[], label=vocab.labels[c]) for c in CATEGORIES]

    @user_errors
    def on_list_save(category, terms, kind):
        prompts.builder.save(category, terms)
        return on_vocabulary(kind)

    gr.on([c.change for c in builder_form.inputs], builder_compose, builder_form.inputs, composed, queue=False,
          show_progress="hidden", api_name="builder_compose")
    vocabulary_kind.change(on_vocabulary, vocabulary_kind, [picks[c] for c in CATEGORIES], queue=False, **PLUMBING)
    list_category.change(lambda c: "\n".join(prompts.builder.terms(c)), list_category, list_text, queue=False,
                         **PLUMBING)
    list_save.click(on_list_save, [list_category, list_text, vocabulary_kind], [picks[c] for c in CATEGORIES],
                    queue=False, **PLUMBING)
    sends(send_builder, [composed], ["prompt"], lambda p: (p,))

    # ---------------------------------------------------------------------- seed explorer events
    explore_form = Form(model=explore_model, prompt=explore_prompt, negative_prompt=explore_negative,
                        sampler=explore_sampler, steps=explore_steps, size=explore_size, count=explore_count,
                        first_seed=first_seed)
    vary_form = Form(model=explore_model, prompt=explore_prompt, negative_prompt=explore_negative,
                     sampler=explore_sampler, steps=explore_steps, size=explore_size, seed=picked_seed,
                     count=variation_count, strength=variation_strength, variation_seed=variation_seed)
    stream_outputs = [explore_preview, explore_grid, explore_info, explore_status]

    def base_request(values: dict) -> GenerationRequest:
        return GenerationRequest(prompt=values["prompt"], negative_prompt=values["negative_prompt"] or "",
                                 model=values["model"] or "", sampler=values["sampler"], steps=values["steps"],
                                 width=values["size"], height=values["size"])

    def run(req, request, progress):
        """Validate, then wait in the studio queue like a Generate job, streaming its previews."""
        req = generation.validate(req)
        yield from stream_generation(services.jobs, session_owner(request), req,
                                     services.queue.interactive("generate", req, session_owner(request)), progress)

    @explore_form.handler
    def seed_explore(values: dict, request: gr.Request, progress=gr.Progress()):
        """The same prompt over N consecutive seeds, one image each."""
        yield from run(seed_grid_request(base_request(values), values["count"], values["first_seed"]), request,
                       progress)

    @vary_form.handler
    def seed_variations(values: dict, request: gr.Request, progress=gr.Progress()):
        """M variations of one seed (A1111's variation seed + strength)."""
        req = variations_request(base_request(values), values["seed"], values["count"], values["strength"],
                                 values["variation_seed"])
        yield from run(req, request, progress)

    def on_pick_image(evt: gr.SelectData, items):
        if not items or evt.index >= len(items):
            return gr.update(), gr.update(), gr.update()
        infotext = generation.infotext_of(items[evt.index][0])
        fields = infotext_to_fields(parse_infotext(infotext)) if infotext else {}
        variation = {"variation_seed": fields.get("variation_seed", -1),
                     "variation_strength": fields.get("variation_strength", 0)}
        return fields.get("seed", gr.update()), variation, infotext

    def on_stop(request: gr.Request):
        return stop_jobs(services.jobs, request)

    explore.click(seed_explore, explore_form.inputs, stream_outputs, api_name="seed_explore", **ON_QUEUE)
    vary.click(seed_variations, vary_form.inputs, stream_outputs, api_name="seed_variations", **ON_QUEUE)
    explore_stop.click(on_stop, None, explore_status, queue=False, **PLUMBING)
    explore_grid.select(on_pick_image, explore_grid, [picked_seed, picked_variation, explore_info], queue=False,
                        **PLUMBING)
    sends(send_seed, [explore_prompt, explore_negative, picked_seed, picked_variation],
          ["prompt", "negative_prompt", "seed", "variation_seed", "variation_strength"],
          lambda p, n, s, v: (p, n, s, v["variation_seed"], v["variation_strength"]))

    def connect(tabs: dict, tab_row) -> None:
        """Every "Send to Generate" button fills Generate's fields and opens the Generate tab; "Send to a
        schedule" fills a new schedule's templates (and negative prompt) on the Schedule tab."""
        schedule = tabs.get("Schedule")
        if schedule is not None and "prompts" in schedule.components:  # a new schedule's templates
            def to_schedule(prompt, negative=None):
                if not (prompt or "").strip():
                    raise gr.Error("prompt: write or pick a prompt first.")
                return prompt, gr.update() if negative is None else negative, "", gr.Tabs(selected="schedule")

            outputs = [schedule.components[n] for n in ("prompts", "negative_prompt", "id")] + [tab_row]
            schedule_saved.click(to_schedule, [text, negative], outputs, queue=False, **PLUMBING)
            schedule_template.click(to_schedule, [template], outputs, queue=False, **PLUMBING)
        target = tabs.get("Generate")
        if target is None:
            return
        for button, inputs, names, fn in senders:
            def send(*args, fn=fn):
                return (*fn(*args), gr.Tabs(selected="generate"))

            button.click(send, inputs, [target.components[n] for n in names] + [tab_row], queue=False,
                         **PLUMBING)

    return Tab("Prompts", on_load=[LoadEvent(prompts_list, library_filters, table),
                                   LoadEvent(history_search, [history_query], history)],
               api={"styles_list": styles_list, "wildcards_list": wildcards_list}, connect=connect)
