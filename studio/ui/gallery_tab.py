"""Gallery tab: every saved image as a paged grid of cached thumbnails, searched (words, "phrases", -excluded)
and filtered by anything the studio records, or searched by meaning (CLIP); a lightbox (← / → / Esc) with the
full image, its parameters and actions (to Generate, img2img, inpaint, ControlNet, Train; rate, favourite, album,
download, trash); a selection (click in Select mode, shift-click for a range, or all results) for batch actions;
albums, the trash, folder import and statistics."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr

from studio.datasets import write_caption_dataset
from studio.errors import ValidationError
from studio.gallery_service import GalleryPage, GalleryQuery
from studio.ui.common import ON_GPU, PLUMBING, Form, LoadEvent, Tab, session_owner, stream_job, user_errors

PAGE_SIZES = [50, 100, 200]
MEANING_LIMIT = 100       # images a search by meaning shows
ANY = ("Any", "")
BASE_SORTS = [("Newest", "newest"), ("Oldest", "oldest"), ("Rating", "rating")]
STARS = ["0", "1", "2", "3", "4", "5"]
# the shift key of the last click on the grid goes in with the select event (see shell.SCRIPT)
SHIFT_JS = "(...args) => { args[args.length - 1] = !!window.studioShiftClick; return args; }"


def _choices(values) -> list[tuple[str, str]]:
    return [ANY] + [(v, v) for v in values]


def query_from(values: dict) -> GalleryQuery:
    """The GalleryQuery of the search form's values (blank fields filter nothing)."""
    seed = str(values.get("seed") if values.get("seed") is not None else "").strip()
    if seed and not seed.lstrip("-").isdigit():
        raise ValidationError(f"seed must be a whole number (blank: any seed); got {seed!r}", "seed")
    return GalleryQuery(
        text=values.get("text") or "", sort=values.get("sort") or "newest", model=values.get("model") or "",
        lora=values.get("lora") or "", controlnet=values.get("controlnet") or "",
        sampler=values.get("sampler") or "", size=values.get("image_size") or "",
        date_from=(values.get("date_from") or "").strip(), date_to=(values.get("date_to") or "").strip(),
        seed=int(seed) if seed else None, verdict=values.get("verdict") or "",
        score_name=values.get("score_name") or "",
        min_score=values.get("min_score") if values.get("score_name") else None,  # a blank box sends 0
        favourite=True if values.get("favourite") else None, min_rating=int(values.get("min_rating") or 0),
        album=values.get("album") or "", run_id=(values.get("run_id") or "").strip(),
        trashed=bool(values.get("trashed")), page=int(values.get("page") or 1),
        page_size=int(values.get("page_size") or PAGE_SIZES[1]))


def _caption(record: dict) -> str:
    stars = int(record.get("rating") or 0)
    mark = ("♥ " if record.get("favourite") else "") + ("★" * stars + " " if stars else "")
    return f"{mark}{record.get('prompt', '')[:60]}"


def details(record: dict | None) -> str:
    """The lightbox's parameter text: the infotext (or the imported tool's fields), rating, albums, file."""
    if not record:
        return ""
    params = record.get("params") or {}
    text = params.get("infotext") or "\n".join(
        [record.get("prompt", "")] + ([f"Negative prompt: {record['negative_prompt']}"]
                                      if record.get("negative_prompt") else [])
        + [", ".join(f"{k}: {v}" for k, v in params.items() if k != "extra" and v not in (None, ""))])
    created = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.get("created", 0)))
    extra = [f"Made {created}", f"File: {record.get('path', '')}"]
    if record.get("albums"):
        extra.append("Albums: " + ", ".join(record["albums"]))
    if record.get("verdict"):
        extra.append(f"Curate: {record['verdict']}")
    if record.get("source"):
        extra.append(f"Source: {record['source']}")
    return text.strip() + "\n\n" + " · ".join(extra)


def per_day_plot(per_day: list[tuple[str, int]]):
    """A bar chart of images per day (the last 90 days that have images)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    days = per_day[-90:]
    fig = Figure(figsize=(9, 2.6), dpi=100)
    ax = fig.add_subplot()
    ax.bar(range(len(days)), [n for _, n in days], color="#7c5cff")
    step = max(1, len(days) // 10)
    ax.set_xticks(range(0, len(days), step), [d for d, _ in days][::step], fontsize=8)
    ax.set_ylabel("images")
    ax.set_title("Images per day", fontsize=10)
    fig.tight_layout()
    return fig


def create_tab(services) -> Tab:
    gallery = services.gallery
    data_dir = Path(services.settings.data_dir)
    with gr.Tab("Gallery", id="gallery") as tab:
        with gr.Row(equal_height=True):
            text = gr.Textbox(label="Search prompts", placeholder='words, "a phrase", -excluded', scale=4,
                              min_width=240, elem_id="gallery-query")
            sort = gr.Dropdown(BASE_SORTS, value="newest", label="Sort", scale=1, min_width=140,
                               allow_custom_value=True)
            page_size = gr.Dropdown(PAGE_SIZES, value=PAGE_SIZES[1], label="Per page", scale=0, min_width=90)
            search = gr.Button("Search", variant="primary", scale=0, min_width=90, elem_id="gallery-search")
        with gr.Accordion("Filters", open=False, elem_id="gallery-filters"):
            with gr.Row():
                model = gr.Dropdown([ANY], value="", label="Model", elem_id="gallery-filter-model",
                                    allow_custom_value=True)
                lora = gr.Dropdown([ANY], value="", label="LoRA", allow_custom_value=True)
                controlnet = gr.Dropdown([ANY], value="", label="ControlNet", allow_custom_value=True)
                sampler = gr.Dropdown([ANY], value="", label="Sampler", allow_custom_value=True)
                image_size = gr.Dropdown([ANY], value="", label="Size", allow_custom_value=True)
            with gr.Row():
                date_from = gr.Textbox(label="From (YYYY-MM-DD)", max_lines=1)
                date_to = gr.Textbox(label="To (YYYY-MM-DD)", max_lines=1)
                seed = gr.Textbox(label="Seed", max_lines=1, elem_id="gallery-filter-seed")  # a Number shows 0
                verdict = gr.Dropdown([ANY], value="", label="Curate verdict", allow_custom_value=True)
                score_name = gr.Dropdown([ANY], value="", label="Score", allow_custom_value=True)
                min_score = gr.Number(None, label="Score at least")
            with gr.Row():
                favourite = gr.Checkbox(label="Favourites only")
                min_rating = gr.Slider(0, 5, value=0, step=1, label="Rating at least")
                album = gr.Dropdown([ANY], value="", label="Album", elem_id="gallery-filter-album",
                                    allow_custom_value=True)
                run_id = gr.Textbox(label="Schedule run id", max_lines=1, elem_id="gallery-filter-run")
                trashed = gr.Checkbox(label="Show the trash", elem_id="gallery-show-trash")
            with gr.Row(equal_height=True):
                meaning = gr.Textbox(label="Search by meaning (CLIP)", placeholder="a red car at night", max_lines=1,
                                     scale=4, elem_id="gallery-meaning")
                meaning_go = gr.Button("Search by meaning", size="sm", scale=0, min_width=160,
                                       elem_id="gallery-meaning-search")
            clear = gr.Button("Clear filters", size="sm")
        with gr.Row(equal_height=True):
            prev_page = gr.Button("◀ Page", size="sm", scale=0, min_width=90, elem_id="gallery-prev-page")
            page = gr.Number(1, label="Page", precision=0, minimum=1, scale=0, min_width=90)
            next_page = gr.Button("Page ▶", size="sm", scale=0, min_width=90, elem_id="gallery-next-page")
            status = gr.Markdown(elem_id="gallery-status")
            select_mode = gr.Checkbox(label="Select (shift-click: range)", scale=0, min_width=200,
                                      elem_id="gallery-select-mode")
            select_all = gr.Button("Select all results", size="sm", scale=0, min_width=140)
            select_none = gr.Button("Clear selection", size="sm", scale=0, min_width=120)
        with gr.Row():
            grid = gr.Gallery(columns=5, height=640, allow_preview=False, show_label=False, elem_id="gallery-grid",
                              interactive=False, scale=3)
            with gr.Column(scale=2, min_width=320, elem_id="gallery-lightbox", elem_classes=["studio-lightbox"]):
                full = gr.Image(type="filepath", label="Click an image: ← / → move, Esc closes", interactive=False,
                                height=340, elem_id="gallery-full")
                info = gr.Textbox(label="Parameters", lines=6, max_lines=12, interactive=False,
                                  elem_id="gallery-info")
                with gr.Row():
                    rating = gr.Radio(STARS, label="Rating (stars)", elem_id="gallery-rating", scale=3)
                    fav = gr.Checkbox(label="♥ Favourite", elem_id="gallery-favourite", scale=1)
                with gr.Row():
                    to_generate = gr.Button("Parameters to Generate", size="sm", elem_id="gallery-to-generate")
                    to_img2img = gr.Button("To img2img", size="sm", elem_id="gallery-to-img2img")
                    to_inpaint = gr.Button("To inpaint", size="sm", elem_id="gallery-to-inpaint")
                    to_controlnet = gr.Button("To ControlNet", size="sm", elem_id="gallery-to-controlnet")
                with gr.Row():
                    to_train = gr.Button("To a Train dataset", size="sm")
                    to_upscale = gr.Button("To Upscale", size="sm", elem_id="gallery-to-upscale")
                    download = gr.DownloadButton("Download PNG", size="sm", elem_id="gallery-download")
                    trash_one = gr.Button("Move to trash", size="sm", variant="stop", elem_id="gallery-trash")
                    restore_one = gr.Button("Restore", size="sm", visible=False, elem_id="gallery-restore")
                with gr.Row():
                    album_pick = gr.Dropdown([], label="Album", allow_custom_value=True, scale=2)
                    album_add = gr.Button("Add to album", size="sm", scale=1)
                with gr.Row():
                    prev_img = gr.Button("◀ Previous", size="sm", elem_classes=["lightbox-prev"],
                                         elem_id="gallery-prev")
                    next_img = gr.Button("Next ▶", size="sm", elem_classes=["lightbox-next"], elem_id="gallery-next")
                    close = gr.Button("Close (Esc)", size="sm", elem_classes=["lightbox-close"],
                                      elem_id="gallery-close")
        with gr.Accordion("Selection: batch actions", open=False, elem_id="gallery-batch"):
            chosen_md = gr.Markdown("Nothing selected. Tick *Select* and click images, or *Select all results*.")
            with gr.Row():
                batch_stars = gr.Radio(STARS, label="Rate the selection", scale=2)
                batch_rate = gr.Button("Rate", size="sm", scale=0, min_width=80)
                batch_album = gr.Dropdown([], label="Album", allow_custom_value=True, scale=2)
                batch_album_add = gr.Button("Add to album", size="sm", scale=0, min_width=120)
                batch_album_remove = gr.Button("Remove from album", size="sm", scale=0, min_width=150)
            with gr.Row():
                batch_trash = gr.Button("Move to trash", variant="stop", size="sm")
                batch_restore = gr.Button("Restore from trash", size="sm")
                batch_zip = gr.Button("Export as zip", size="sm")
                batch_train = gr.Button("Add to a Train dataset", size="sm")
                batch_curate = gr.Button("Score in Curate", size="sm")
                batch_upscale = gr.Button("Upscale", size="sm", elem_id="gallery-batch-upscale")
            with gr.Row():
                copy_folder = gr.Textbox(label="Copy to folder (inside the allowed folders)", max_lines=1, scale=3)
                batch_copy = gr.Button("Copy", size="sm", scale=0, min_width=80)
            zip_file = gr.File(label="Zip", visible=False, interactive=False)
            batch_note = gr.Markdown()
        with gr.Accordion("Albums and trash", open=False):
            with gr.Row():
                album_name = gr.Textbox(label="Album name", max_lines=1)
                album_new_name = gr.Textbox(label="New name (to rename)", max_lines=1)
                album_create = gr.Button("Create", size="sm")
                album_rename = gr.Button("Rename", size="sm")
                album_delete = gr.Button("Delete album (images stay)", size="sm")
            with gr.Row():
                empty_days = gr.Number(30, label="Empty trash items older than (days; 0 = all)", precision=0,
                                       minimum=0)
                empty = gr.Button("Empty trash", variant="stop", size="sm")
            albums_note = gr.Markdown()
        with gr.Accordion("Import a folder of images from other tools", open=False):
            gr.Markdown("Reads the generation parameters that AUTOMATIC1111 (also its hidden alpha-channel info), "
                        "ComfyUI, Fooocus, InvokeAI and NovelAI store in their images; broken files are skipped "
                        "and listed. Thumbnails are made in the background.")
            with gr.Row():
                import_dir = gr.Textbox(label="Folder", max_lines=1, scale=4, elem_id="gallery-import-folder")
                import_go = gr.Button("Import", scale=0, min_width=90, elem_id="gallery-import")
            import_note = gr.Markdown(elem_id="gallery-import-report")
        with gr.Accordion("Statistics", open=False, elem_id="gallery-stats"):
            stats_go = gr.Button("Refresh statistics", size="sm")
            stats_md = gr.Markdown()
            per_day = gr.Plot(label="Images per day")
            with gr.Row():
                top_models = gr.Dataframe(headers=["model", "images"], label="Most used models")
                top_loras = gr.Dataframe(headers=["LoRA", "images"], label="Most used LoRAs")
                top_words = gr.Dataframe(headers=["word", "uses"], label="Most used prompt words")
                storage = gr.Dataframe(headers=["folder", "MB"], label="Storage per folder")
        page_ids = gr.State([])       # ids shown on the grid, in order
        current = gr.State(-1)        # index of the lightbox image in page_ids
        selection = gr.State([])      # selected ids (batch actions)
        last_click = gr.State(-1)     # for shift-click ranges
        shift = gr.Checkbox(False, visible=False)

    form = Form(text=text, sort=sort, model=model, lora=lora, controlnet=controlnet, sampler=sampler,
                image_size=image_size, date_from=date_from, date_to=date_to, seed=seed, verdict=verdict,
                score_name=score_name, min_score=min_score, favourite=favourite, min_rating=min_rating,
                album=album, run_id=run_id, trashed=trashed, page=page, page_size=page_size)

    # ------------------------------------------------------------------ the grid
    def render(found, chosen: list[str], in_trash: bool = False):
        picked = set(chosen)
        items = [(str(gallery.thumbnail(r)), ("✔ " if r["id"] in picked else "") + _caption(r))
                 for r, _ in found.items]
        shown = (f"**{found.total:,}** image(s) · page {found.page} of {found.pages}"
                 + (" · the trash (restore within 30 days)" if in_trash else ""))
        return items, shown, [r["id"] for r, _ in found.items], found.page

    @form.handler
    def gallery_search(values: dict, chosen: list[str] | None = None):
        """A page of the gallery: search text (words, "phrases", -excluded) and filters, sorted."""
        found = gallery.search(query_from(values))
        items, shown, ids, at = render(found, chosen or [], bool(values.get("trashed")))
        return items, shown, ids, at, -1, None, ""

    # a new search empties the image panel (a panel, not a pop-up: Gradio 6 never shows again a layout block
    # that an on-load event has among its outputs)
    search_outputs = [grid, status, page_ids, page, current, full, info]
    run_search = dict(fn=gallery_search, inputs=form.inputs + [selection], outputs=search_outputs, queue=False)
    gr.on([search.click, text.submit, page.submit], api_name="gallery_search", **run_search)
    filters = [c.input for c in (sort, page_size, model, lora, controlnet, sampler, image_size, verdict, score_name,
                                 favourite, album, trashed)]
    filters += [c.submit for c in (date_from, date_to, run_id, seed, min_score)] + [min_rating.release]
    gr.on(filters, **run_search, **PLUMBING)

    @user_errors
    def gallery_search_meaning(words: str, chosen: list[str] | None = None):
        """The gallery images whose CLIP embeddings best match the words (needs an open_clip model), best first."""
        hits = services.curation.semantic_search(words, MEANING_LIMIT)
        items, _, ids, _ = render(GalleryPage([(r, p) for r, p, _ in hits], len(hits), 1, 1), chosen or [])
        return items, f"**{len(hits)}** image(s) closest in meaning to “{words.strip()}”", ids, 1, -1, None, ""

    gr.on([meaning_go.click, meaning.submit], gallery_search_meaning, [meaning, selection], search_outputs,
          api_name="gallery_search_meaning", **ON_GPU)  # runs the CLIP text tower: the models' queue

    def turn(step: int):
        def go(*args):
            values = form.values(args)
            values["page"] = max(1, int(values.get("page") or 1) + step)
            return gallery_search(*[values[n] for n in form.names], args[-1])
        return go

    prev_page.click(turn(-1), form.inputs + [selection], search_outputs, queue=False, **PLUMBING)
    next_page.click(turn(1), form.inputs + [selection], search_outputs, queue=False, **PLUMBING)

    def facets():
        f = gallery.facets()
        sorts = BASE_SORTS + [(f"Score: {name}", f"score:{name}") for name in f.get("score_names", [])]
        albums = f.get("albums", [])
        return (gr.update(choices=_choices(f.get("models", []))), gr.update(choices=_choices(f.get("loras", []))),
                gr.update(choices=_choices(f.get("controlnets", []))),
                gr.update(choices=_choices(f.get("samplers", []))), gr.update(choices=_choices(f.get("sizes", []))),
                gr.update(choices=_choices(f.get("verdicts", []))),
                gr.update(choices=_choices(f.get("score_names", []))), gr.update(choices=sorts),
                gr.update(choices=_choices(albums)), gr.update(choices=albums), gr.update(choices=albums))

    facet_outputs = [model, lora, controlnet, sampler, image_size, verdict, score_name, sort, album, album_pick,
                     batch_album]

    def clear_filters():
        return ["", "", "", "", "", "", "", "", "", None, False, 0, "", "", False, 1]

    clear.click(clear_filters, None, [model, lora, controlnet, sampler, image_size, date_from, seed, verdict,
                                      score_name, min_score, favourite, min_rating, album, run_id, trashed, page],
                queue=False, **PLUMBING).then(**run_search, **PLUMBING)

    # ------------------------------------------------------------------ lightbox
    def show(ids: list[str], index: int):
        """The image panel for image `index` of the page (empty for none)."""
        record = gallery.get(ids[index]) if 0 <= index < len(ids) else None
        if record is None:
            return None, "", None, False, gr.update(value=None), -1, gr.update(visible=True), gr.update(visible=False)
        path = str(gallery.path_of(record))
        in_trash = bool(record.get("trashed"))
        return (path, details(record), str(int(record.get("rating") or 0)), bool(record.get("favourite")),
                gr.update(value=path), index, gr.update(visible=not in_trash), gr.update(visible=in_trash))

    lightbox_outputs = [full, info, rating, fav, download, current, trash_one, restore_one]

    def toggle(chosen: list[str], ids: list[str], index: int, last: int, shifted: bool) -> list[str]:
        span = range(min(last, index), max(last, index) + 1) if shifted and 0 <= last < len(ids) else [index]
        picked = [ids[i] for i in span]
        if not shifted and ids[index] in chosen:
            return [c for c in chosen if c != ids[index]]
        return chosen + [i for i in picked if i not in chosen]

    @user_errors
    def on_select(evt: gr.SelectData, ids, chosen, selecting, last, *rest):
        values, shifted = rest[:-1], rest[-1]
        index = evt.index if isinstance(evt.index, int) else evt.index[0]
        if not selecting:
            return (*show(ids, index), gr.update(), chosen, index, gr.update())
        chosen = toggle(chosen, ids, index, last, shifted)
        found = gallery.search(query_from(form.values(values)))
        items = render(found, chosen)[0]
        return (*[gr.update()] * len(lightbox_outputs), items, chosen, index, _chosen_text(chosen))

    grid.select(on_select, [page_ids, selection, select_mode, last_click] + form.inputs + [shift],
                lightbox_outputs + [grid, selection, last_click, chosen_md], queue=False,
                **PLUMBING)

    def step_image(step: int):
        """Previous / next image of the results, turning the page at either end of it."""
        @user_errors
        def go(ids, index, *args):
            target = index + step
            if 0 <= target < len(ids):
                return (*show(ids, target), gr.update(), gr.update(), ids)
            values = form.values(args)
            values["page"] = int(values.get("page") or 1) + step
            found = gallery.search(query_from(values)) if values["page"] >= 1 else None
            if found is None or found.page != values["page"] or not found.items:
                return (*show(ids, index), gr.update(), gr.update(), ids)  # the first or last image
            items, _, new_ids, at = render(found, [], bool(values.get("trashed")))
            return (*show(new_ids, 0 if step > 0 else len(new_ids) - 1), items, at, new_ids)
        return go

    step_outputs = lightbox_outputs + [grid, page, page_ids]
    prev_img.click(step_image(-1), [page_ids, current] + form.inputs, step_outputs, queue=False, **PLUMBING)
    next_img.click(step_image(1), [page_ids, current] + form.inputs, step_outputs, queue=False, **PLUMBING)
    close.click(lambda: show([], -1), None, lightbox_outputs, queue=False, **PLUMBING)

    def _current_id(ids, index) -> str:
        if not 0 <= index < len(ids):
            raise gr.Error("Open an image first (click it in the grid).")
        return ids[index]

    @user_errors
    def on_rate(ids, index, stars):
        gallery.rate([_current_id(ids, index)], int(stars or 0))

    @user_errors
    def on_favourite(ids, index, value):
        gallery.set_favourite([_current_id(ids, index)], bool(value))

    rating.input(on_rate, [page_ids, current, rating], None, queue=False, **PLUMBING)
    fav.input(on_favourite, [page_ids, current, fav], None, queue=False, **PLUMBING)

    @user_errors
    def on_trash_one(ids, index, *values):
        gallery.trash([_current_id(ids, index)])
        gr.Info("Moved to the trash (restore it from *Show the trash* within 30 days).")
        return gallery_search(*values, [])

    @user_errors
    def on_restore_one(ids, index, *values):
        gallery.restore([_current_id(ids, index)])
        gr.Info("Restored.")
        return gallery_search(*values, [])

    for button, handler in ((trash_one, on_trash_one), (restore_one, on_restore_one)):
        button.click(handler, [page_ids, current] + form.inputs, search_outputs, queue=False, **PLUMBING)

    @user_errors
    def on_album_add(ids, index, name):
        record_id = _current_id(ids, index)
        gallery.add_to_album([record_id], (name or "").strip())
        gr.Info(f"Added to album {name}.")
        return details(gallery.get(record_id))

    album_add.click(on_album_add, [page_ids, current, album_pick], info, queue=False, **PLUMBING).then(
        facets, None, facet_outputs, queue=False, **PLUMBING)

    # ------------------------------------------------------------------ selection and batch actions
    def _chosen_text(chosen: list[str]) -> str:
        return f"**{len(chosen):,}** image(s) selected." if chosen else "Nothing selected."

    @user_errors
    def on_select_all(*values):
        chosen = gallery.ids_matching(query_from(form.values(values)))
        found = gallery.search(query_from(form.values(values)))
        return render(found, chosen)[0], chosen, _chosen_text(chosen)

    def on_select_none(*values):
        found = gallery.search(query_from(form.values(values)))
        return render(found, [])[0], [], _chosen_text([])

    select_all.click(on_select_all, form.inputs, [grid, selection, chosen_md], queue=False, **PLUMBING)
    select_none.click(on_select_none, form.inputs, [grid, selection, chosen_md], queue=False, **PLUMBING)

    def _need(chosen: list[str]) -> list[str]:
        if not chosen:
            raise gr.Error("selection: select images first (tick Select and click them, or Select all results).")
        return chosen

    def batch(action, message: str, refresh: bool = True):
        """A batch action's handler: `action(selection, *extra inputs)` then the note and (when `refresh`) the
        grid again with the selection cleared."""
        @user_errors
        def run(chosen, *args):
            n = len(_need(chosen))
            note = action(chosen, *args[:-len(form.names)]) or message.format(n=n)
            if not refresh:
                return (note, chosen, gr.update(), *[gr.update()] * len(search_outputs))
            return (note, [], _chosen_text([]), *gallery_search(*args[-len(form.names):], []))
        return run

    batch_outputs = [batch_note, selection, chosen_md] + search_outputs
    batch_rate.click(batch(lambda c, stars, *_: gallery.rate(c, int(stars or 0)), "Rated {n} image(s)."),
                     [selection, batch_stars] + form.inputs, batch_outputs, queue=False, **PLUMBING)
    batch_album_add.click(batch(lambda c, name, *_: gallery.add_to_album(c, (name or "").strip()),
                                "Added {n} image(s) to the album.", refresh=False),
                          [selection, batch_album] + form.inputs, batch_outputs, queue=False, **PLUMBING)
    batch_album_remove.click(batch(lambda c, name, *_: gallery.remove_from_album(c, (name or "").strip()),
                                   "Removed {n} image(s) from the album."),
                             [selection, batch_album] + form.inputs, batch_outputs, queue=False, **PLUMBING)
    batch_trash.click(batch(lambda c, *_: gallery.trash(c), "Moved {n} image(s) to the trash."),
                      [selection] + form.inputs, batch_outputs, queue=False, **PLUMBING)
    batch_restore.click(batch(lambda c, *_: gallery.restore(c), "Restored {n} image(s)."),
                        [selection] + form.inputs, batch_outputs, queue=False, **PLUMBING)
    batch_copy.click(batch(lambda c, folder, *_: f"Copied {gallery.copy_to_folder(c, folder)} image(s) to "
                                                 f"`{folder}`.", "", refresh=False),
                     [selection, copy_folder] + form.inputs, batch_outputs, queue=False, **PLUMBING)

    @user_errors
    def on_zip(chosen):
        path = gallery.export_zip(_need(chosen))
        return gr.update(value=str(path), visible=True), f"Zipped {len(chosen)} image(s): `{path.name}`."

    batch_zip.click(on_zip, selection, [zip_file, batch_note], queue=False, **PLUMBING)

    # ------------------------------------------------------------------ albums and trash
    @user_errors
    def on_album(action: str, name: str, new_name: str):
        name = (name or "").strip()
        if action == "create":
            gallery.create_album(name)
        elif action == "rename":
            gallery.rename_album(name, (new_name or "").strip())
        else:
            gallery.delete_album(name)
        return f"Album **{name}**: {action}d."

    for button, action in ((album_create, "create"), (album_rename, "rename"), (album_delete, "delete")):
        button.click(lambda n, m, a=action: on_album(a, n, m), [album_name, album_new_name], albums_note,
                     queue=False, **PLUMBING).then(facets, None, facet_outputs, queue=False, **PLUMBING)

    @user_errors
    def on_empty(days, *values):
        days = int(days or 0)
        n = gallery.empty_trash(older_than_days=days or None)
        return (f"Removed **{n}** image(s) from the trash for good.", *gallery_search(*values, []))

    empty.click(on_empty, [empty_days] + form.inputs, [albums_note] + search_outputs, queue=False, **PLUMBING)

    # ------------------------------------------------------------------ import and statistics
    @user_errors
    def on_import(folder, request: gr.Request):
        from studio.gallery_import import import_folder

        def work(cancel, report):
            return import_folder(folder, gallery, data_dir, services.training.paths, report, cancel)

        def show_progress(update):
            done, total = update
            return f"Importing… {done:,} of {total:,}"

        report = yield from stream_job(services.jobs, session_owner(request), work, show_progress)
        yield report.summary()

    import_go.click(on_import, import_dir, import_note, api_name="gallery_import",
                    concurrency_id="gallery-import", concurrency_limit=1).then(
        facets, None, facet_outputs, queue=False, **PLUMBING).then(**run_search, **PLUMBING)

    def statistics():
        s = gallery.stats()
        trash_images, trash_bytes = s.get("trash", (0, 0))
        md = (f"**{s.get('images', 0):,}** images · favourites **{s.get('favourites', 0):,}** "
              f"({s.get('favourite_rate', 0):.1%}) · in the trash **{trash_images:,}** ({trash_bytes / 2**20:.1f} MB)")
        return (md, per_day_plot(s.get("per_day", [])), [list(r) for r in s.get("top_models", [])],
                [list(r) for r in s.get("top_loras", [])], [list(r) for r in s.get("top_words", [])],
                [[folder, round(size / 2**20, 1)] for folder, size in s.get("storage", [])])

    stats_go.click(statistics, None, [stats_md, per_day, top_models, top_loras, top_words, storage], queue=False,
                   api_name="gallery_stats")

    # ------------------------------------------------------------------ to the other tabs
    def connect(tabs: dict, tab_row) -> None:
        generate, control, train = tabs.get("Generate"), tabs.get("ControlNet"), tabs.get("Train")
        if generate is not None:
            names = [n for n in ("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "width", "height",
                                 "seed") if n in generate.components]

            @user_errors
            def to_gen(ids, index):
                record = gallery.get(_current_id(ids, index))
                fields = services.generation.parameters_of(str(gallery.path_of(record)))
                return [gr.update(value=fields[n]) if n in fields else gr.update() for n in names] + [
                    gr.Tabs(selected="generate")]

            to_generate.click(to_gen, [page_ids, current], [generate.components[n] for n in names] + [tab_row],
                              queue=False, **PLUMBING)
            for button, mode in ((to_img2img, "img2img"), (to_inpaint, "inpaint")):
                target = "init_image" if mode == "img2img" else "inpaint_image"
                if target not in generate.components:
                    target = "init_image"

                @user_errors
                def to_mode(ids, index, mode=mode):
                    record = gallery.get(_current_id(ids, index))
                    path = str(gallery.path_of(record))
                    return path, record.get("prompt", ""), mode, gr.Tabs(selected="generate")

                button.click(to_mode, [page_ids, current],
                             [generate.components[target], generate.components["prompt"],
                              generate.components["mode"], tab_row], queue=False, **PLUMBING)
        if control is not None:
            @user_errors
            def to_cn(ids, index):
                record = gallery.get(_current_id(ids, index))
                return str(gallery.path_of(record)), record.get("prompt", ""), gr.Tabs(selected="controlnet")

            to_controlnet.click(to_cn, [page_ids, current],
                                [control.components["control_image"], control.components["prompt"], tab_row],
                                queue=False, **PLUMBING)
        if train is not None and "dataset_folder" in train.components:
            @user_errors
            def to_dataset(ids):
                images = [(r["id"], gallery.path_of(r), r.get("prompt", ""))
                          for r in map(gallery.get, _need(ids)) if r is not None]
                folder, n = write_caption_dataset(data_dir, "gallery", images)
                rel = folder.relative_to(data_dir) if folder.is_relative_to(data_dir) else folder
                gr.Info(f"Copied {n} image(s) with their prompts as captions: press Add folder on the Train tab.")
                return str(rel), gr.Tabs(selected="train")

            to_train.click(lambda ids, index: to_dataset([_current_id(ids, index)]), [page_ids, current],
                           [train.components["dataset_folder"], tab_row], queue=False, **PLUMBING)
            batch_train.click(to_dataset, selection, [train.components["dataset_folder"], tab_row], queue=False,
                              **PLUMBING)
        schedule = tabs.get("Schedule")
        if schedule is not None and "open_run" in schedule.components:  # a run's images: filter by its id
            def open_run(picked):
                if not picked:
                    raise gr.Error("Run: pick a run first.")
                return picked, "", False, gr.Tabs(selected="gallery")

            schedule.components["open_run"].click(open_run, schedule.components["run_pick"],
                                                  [run_id, text, trashed, tab_row], queue=False, **PLUMBING).then(
                **run_search, **PLUMBING)
        curate = tabs.get("Curate")
        if curate is not None and "ids" in curate.components:
            batch_curate.click(lambda ids: (",".join(_need(ids)), gr.Tabs(selected="curate")), selection,
                               [curate.components["ids"], tab_row], queue=False, **PLUMBING)
        upscale = tabs.get("Upscale")
        if upscale is not None and "ids" in upscale.components:
            targets = [upscale.components["ids"], tab_row]
            to_upscale.click(lambda ids, index: (_current_id(ids, index), gr.Tabs(selected="upscale")),
                             [page_ids, current], targets, queue=False, **PLUMBING)
            batch_upscale.click(lambda ids: (",".join(_need(ids)), gr.Tabs(selected="upscale")), selection,
                                targets, queue=False, **PLUMBING)

    # the grid fills when the tab opens, with the search and filters as they were (the open image stays): an
    # on-load event into a gallery now and then never reports back in Gradio 6, leaving its overlay on the grid
    tab.select(lambda *args: gallery_search(*args)[:4], form.inputs + [selection], [grid, status, page_ids, page],
               queue=False, **PLUMBING)
    return Tab("Gallery", on_load=[LoadEvent(facets, [], facet_outputs)], api={}, connect=connect)
