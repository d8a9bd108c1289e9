"""Gallery tab: browse and search every saved image, newest first, with its parameters."""

from __future__ import annotations

import gradio as gr

from studio.ui.common import PLUMBING, LoadEvent, Tab

PAGE = 48


def create_tab(services) -> Tab:
    gallery = services.gallery
    with gr.Tab("Gallery", id="gallery"):
        with gr.Row():
            query = gr.Textbox(label="Search prompts", scale=4, min_width=200)
            page = gr.Number(1, label="Page", precision=0, minimum=1, scale=1, min_width=80)
            refresh = gr.Button("Refresh", scale=1, min_width=80)
        count = gr.Markdown()
        grid = gr.Gallery(columns=8, height=560, format="png", interactive=False, elem_id="gallery-grid")
        info = gr.Textbox(label="Parameters", lines=4, interactive=False)
        ids = gr.State([])

    def load(query, page):
        found = gallery.page(query, page, PAGE)
        items = [(path, record["prompt"][:60]) for record, path in found.items]
        return items, f"{found.total} image(s) · page {found.page} of {found.pages}", [r["id"] for r, _ in found.items]

    def select(evt: gr.SelectData, record_ids):
        if not record_ids or evt.index >= len(record_ids):
            return ""
        return gallery.infotext(record_ids[evt.index])

    gr.on([refresh.click, query.submit, page.submit], load, [query, page], [grid, count, ids], queue=False,
          api_name="gallery_search")
    grid.select(select, ids, info, queue=False, **PLUMBING)
    return Tab("Gallery", on_load=[LoadEvent(load, [query, page], [grid, count, ids])])
