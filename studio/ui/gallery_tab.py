"""Gallery tab: browse and search every saved image, newest first, with its parameters."""

from __future__ import annotations

import gradio as gr

PAGE = 48


def create_tab(services):
    data_dir = services.settings.data_dir
    with gr.Tab("Gallery", id="gallery"):
        with gr.Row():
            query = gr.Textbox(label="Search prompts", scale=4)
            page = gr.Number(1, label="Page", precision=0, minimum=1, scale=1)
            refresh = gr.Button("Refresh", scale=1)
        count = gr.Markdown()
        grid = gr.Gallery(columns=8, height=560, format="png", interactive=False, elem_id="gallery-grid")
        info = gr.Textbox(label="Parameters", lines=4, interactive=False)
        ids = gr.State([])

    def load(text, page_number):
        page_number = max(1, int(page_number or 1))
        records, total = services.gallery.list(offset=(page_number - 1) * PAGE, limit=PAGE, query=text or None)
        items = [(str(data_dir / r["path"]), r["prompt"][:60]) for r in records if (data_dir / r["path"]).exists()]
        pages = max(1, -(-total // PAGE))
        return items, f"{total} image(s) · page {page_number} of {pages}", [r["id"] for r in records]

    def select(evt: gr.SelectData, record_ids):
        if not record_ids or evt.index >= len(record_ids):
            return ""
        record = services.gallery.get(record_ids[evt.index])
        return (record or {}).get("params", {}).get("infotext", "")

    for trigger in (refresh.click, query.submit, page.submit):
        trigger(load, [query, page], [grid, count, ids], queue=False)
    grid.select(select, ids, info, queue=False)
    return load, [query, page], [grid, count, ids]
